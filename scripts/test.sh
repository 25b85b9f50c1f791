#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (no GPU, no network beyond the registries).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
exec "${PYTHON:-python3}" -m pytest -q "$@"
