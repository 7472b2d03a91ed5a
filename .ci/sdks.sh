#!/usr/bin/env bash
# The clients of the SDK compatibility matrix (tests/sdk_matrix, README "SDK compatibility").
# Idempotent: skips what is already installed. apt-get needs root; venvs are cached under
# ${XDG_CACHE_HOME:-~/.cache}/credential-sidecar-ci/sdk and reused by later runs.
# The versions pinned here are the ones tests/sdk_matrix/matrix.py declares.
set -euo pipefail
cd "$(dirname "$0")/.."

SDK_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/credential-sidecar-ci/sdk"
# Debian 12: AWS CLI v2 (2.9.x), Go 1.19 with the AWS SDKs for Go v1 and v2, Ruby aws-sdk-core.
APT_PACKAGES=(awscli golang-go golang-github-aws-aws-sdk-go-dev golang-github-aws-aws-sdk-go-v2-dev
  ruby-aws-sdk-core)
# Old botocore releases still found in pinned CI images (one venv each).
BOTOCORE_VERSIONS=(1.34.41 1.29.165)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  echo "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for version in "${BOTOCORE_VERSIONS[@]}"; do
  venv="$SDK_CACHE/botocore-$version"
  if ! "$venv/bin/python" -c "import botocore, sys; sys.exit(botocore.__version__ != '$version')" 2>/dev/null; then
    echo "botocore $version -> $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "botocore==$version"
  fi
done

# The AWS SDK for JavaScript v2 and v3 (package-lock.json pins them; .ci/run's npm ci may
# already have installed them).
if [ ! -d tests/js/node_modules/aws-sdk ] || [ ! -d tests/js/node_modules/@aws-sdk/credential-providers ]; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi
