# credential-sidecar image: docker build -t credential-sidecar .
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
COPY --from=build /install /usr/local
# An unprivileged user; the auth token directory must be writable by it.
RUN useradd --system --uid 10001 --no-create-home sidecar \
 && mkdir -p /run/sidecar && chown sidecar /run/sidecar
USER 10001
ENV SIDECAR_AUTH_TOKEN_FILE=/run/sidecar/auth-token
EXPOSE 9911
ENTRYPOINT ["credential-sidecar"]
CMD ["serve"]
