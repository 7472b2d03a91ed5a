#!/bin/sh
# Installs credential-sidecar as a systemd service on a self-hosted runner host (as root).
# RUNNER_GROUP: the group of the user the CI jobs run as; they may read the auth token.
set -eu
RUNNER_GROUP="${RUNNER_GROUP:-ci-runner}"
here="$(cd "$(dirname "$0")" && pwd)"

python3 -m venv /opt/credential-sidecar
# From this checkout: the version you read and verified, not whatever an index serves.
/opt/credential-sidecar/bin/pip install --quiet "$here/../.."
install -m 0644 "$here/credential-sidecar.sysusers" /etc/sysusers.d/credential-sidecar.conf
systemd-sysusers /etc/sysusers.d/credential-sidecar.conf

# The auth token the jobs send: group-readable by the runner, never by others. systemd
# hands the daemon its own copy (LoadCredential=). No trailing newline: SDKs send it as is.
install -d -m 0750 -g "$RUNNER_GROUP" /etc/credential-sidecar
if [ ! -s /etc/credential-sidecar/auth-token ]; then
  (umask 0027 && head -c 32 /dev/urandom | base64 -w0 | tr -d '=+/' \
    > /etc/credential-sidecar/auth-token)
  chgrp "$RUNNER_GROUP" /etc/credential-sidecar/auth-token
fi

install -m 0644 "$here/credential-sidecar.service" /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now credential-sidecar.service
echo "jobs use: AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:9911/v1/credentials"
echo "          AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/etc/credential-sidecar/auth-token"
