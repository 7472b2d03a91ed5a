# syntax=docker/dockerfile:1
# credential-sidecar: docker build -t credential-sidecar .
#
# Run it read-only as the unprivileged user; the auth token directory is the only thing it
# writes, so give it a tmpfs (podman: --tmpfs /run/sidecar:U) or the volume clients mount:
#   docker run --read-only --tmpfs /run/sidecar:uid=10001,gid=10001,mode=0700 \
#     -e AWS_ROLE_ARN=... -e AWS_WEB_IDENTITY_TOKEN_FILE=... credential-sidecar serve
#
# BASE: any Debian-like image with python3 (>= 3.11) and its venv module. CI passes a base
# made locally with mmdebstrap; both stages must use the same one (the venv points at its
# interpreter).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
WORKDIR /src
# ca-bundle: an optional build secret for build hosts whose egress re-signs TLS; mounted for
# a step only, so it is in no layer. Dependencies first, in their own layer: it stays cached
# while only the code or the README changes.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python3 -m venv /opt/credential-sidecar \
 && python3 -c 'import tomllib; project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
      print(*project["dependencies"], sep="\n")' > requirements.txt \
 && /opt/credential-sidecar/bin/pip install --no-cache-dir --disable-pip-version-check \
      --requirement requirements.txt
COPY README.md ./
COPY sidecar ./sidecar
# pip and setuptools leave the venv once the project is in.
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && /opt/credential-sidecar/bin/pip install --no-cache-dir --disable-pip-version-check \
      --no-deps . \
 && /opt/credential-sidecar/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

FROM ${BASE}
# A numeric UID, so Kubernetes' runAsNonRoot can check it without the passwd file.
RUN groupadd --system --gid 10001 sidecar \
 && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sidecar \
 && install --directory --owner=10001 --group=10001 --mode=0700 /run/sidecar
COPY --from=build /opt/credential-sidecar /opt/credential-sidecar
# SIDECAR_AUTH_TOKEN_FILE is a path, not a secret: DL3064 (sensitive ENV) is a false positive.
# hadolint ignore=DL3064
ENV PATH=/opt/credential-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIDECAR_AUTH_TOKEN_FILE=/run/sidecar/auth-token
USER 10001:10001
EXPOSE 9911
# Asks the daemon's /readyz on SIDECAR_LISTEN (default 127.0.0.1:9911) with the standard
# library: no curl or wget in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["credential-sidecar", "health"]
ENTRYPOINT ["credential-sidecar"]
CMD ["serve"]
