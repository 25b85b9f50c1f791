#!/usr/bin/env bash
# Install PlotArmour and everything it needs on a machine with Python 3.11, pip and apt.
#   bash scripts/install.sh          # the package, the model servers and the gateway
#   bash scripts/install.sh --dev    # plus what the tests need (pytest, a browser, linters)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# The CPU build of torch: an unpinned torch would pull gigabytes of CUDA packages.
TORCH=${PLOTARMOUR_TORCH:-torch==2.13.0}

pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

pip_install "$TORCH"
if [ "${1:-}" = "--dev" ]; then
    pip_install -e ".[models,gateway,training,dev]"
    # TGI's own Python client pins huggingface_hub<1, which transformers 5 cannot use; it
    # needs nothing from the hub beyond what newer versions still have.
    pip_install --no-deps "text-generation>=0.7,<0.8"
    if [ -n "${PLOTARMOUR_APT:-1}" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        missing=()
        command -v chromium >/dev/null || missing+=(chromium)
        command -v docker-compose >/dev/null || missing+=(docker-compose)
        command -v npm >/dev/null || missing+=(npm)  # (brings nodejs) for axe-core, below
        # nginx: the load balancer in front of two gateway replicas in tests/processes/test_gateway_peers.py
        command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
        if [ ${#missing[@]} -gt 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        fi
    fi
    # axe-core for the page's accessibility test, from npm into tests/browser/node_modules
    # (git-ignored; the test injects node_modules/axe-core/axe.min.js into the page).
    if command -v npm >/dev/null; then
        npm install --prefix tests/browser --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
            "axe-core@^4.10" >/dev/null \
            || echo "install.sh: npm could not install axe-core; the accessibility test will skip" >&2
    fi
else
    pip_install -e ".[models,gateway]"
fi
