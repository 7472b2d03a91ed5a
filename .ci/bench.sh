#!/usr/bin/env bash
# What bench/suite.py needs besides the test environment: wrk (the load generator), nginx
# (a reference server) and matplotlib (the chart, the 'bench' extra). Idempotent: installs
# only what is missing. apt-get needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
if ((${#missing[@]})); then
  echo "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/python -m pip install --quiet -e '.[bench]'
