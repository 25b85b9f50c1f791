#!/usr/bin/env bash
# Dependency audit: pip-audit over every package installed in this Python environment
# (the project's dependencies and theirs; the editable plotarmour itself is skipped: it
# is not on PyPI).
#   bash scripts/audit.sh            # exit 1 when a known vulnerability is found
# pip-audit fetches advisory data from the package index, so it needs the network. When that data cannot
# be had (no network, or a mirror that does not serve it) the script says so loudly and
# exits 0: an offline machine is not a finding. A vulnerability, or pip-audit failing for
# any other reason, fails the script.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -m pip_audit --version >/dev/null 2>&1; then
    echo "audit: pip-audit is not installed (pip install 'pip-audit>=2.7'; it is in the dev extra)" >&2
    exit 2
fi

report=$(mktemp)
errors=$(mktemp)
trap 'rm -f "$report" "$errors"' EXIT
echo "audit: $("$PYTHON" -m pip_audit --version 2>&1) over the installed packages"
timeout 900 "$PYTHON" -m pip_audit --local --skip-editable --progress-spinner off --format json --desc on \
    --output "$report" 2>"$errors"
status=$?

# pip-audit exits 1 both for findings and for its own failures: the JSON report tells which.
"$PYTHON" - "$report" "$errors" "$status" <<'EOF'
import json, re, sys

report, errors, status = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3])
try:
    deps = json.load(open(report))["dependencies"]
except (OSError, ValueError, KeyError):
    if re.search(r"connection|timed out|temporary failure|max retries|name resolution", errors, re.I):
        print(errors[-2000:], file=sys.stderr)
        print("audit: WARNING: the network failed during the audit: dependency audit INCOMPLETE", file=sys.stderr)
        sys.exit(0)
    print(errors[-4000:], file=sys.stderr)
    print(f"audit: FAILED: pip-audit exited {status} without a report", file=sys.stderr)
    sys.exit(status or 1)

audited = [d for d in deps if "skip_reason" not in d]
skipped = [d for d in deps if "skip_reason" in d]
vulnerable = [d for d in audited if d.get("vulns")]
for d in vulnerable:
    for v in d["vulns"]:
        fix = ", ".join(v.get("fix_versions") or []) or "no fixed version yet"
        print(f"VULNERABLE {d['name']} {d['version']}: {v['id']} (fixed in: {fix}) {v.get('description', '')[:200]}")
print(f"audit: {len(deps)} packages, {len(audited)} checked, {len(skipped)} not checkable, "
      f"{sum(len(d['vulns']) for d in vulnerable)} known vulnerabilities")
if vulnerable:
    print("audit: FAILED: upgrade the packages above (or pin a fixed version)", file=sys.stderr)
    sys.exit(1)
if skipped:
    names = ", ".join(f"{d['name']} {d.get('version', '')}".strip() for d in skipped[:10])
    print(f"audit: WARNING: no advisory data for {len(skipped)} packages (e.g. {names}); "
          f"reason: {skipped[0]['skip_reason']}", file=sys.stderr)
if not audited:
    print("audit: WARNING: the advisory source answered for no package (offline mirror?): "
          "dependency audit SKIPPED", file=sys.stderr)
EOF
