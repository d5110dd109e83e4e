# syntax=docker/dockerfile:1
#
# ratelimit-ext container image.
#
#   docker build -t ratelimit-ext .
#   docker run --rm --read-only --tmpfs /tmp -p 8081:8081 -p 9090:9090 \
#       -v "$PWD/config:/etc/ratelimit-ext/config:ro" ratelimit-ext
#
# Two stages: the builder turns the source into a wheel and collects binary
# wheels of every dependency (no compiler is installed or needed: every
# dependency ships manylinux wheels), then installs them into a virtualenv
# without pip. The final image is python:3.11-slim plus that virtualenv:
# no build tools, no pip, no source tree, no tests.
#
# Runtime contract (what the Helm chart and deploy/k8s rely on):
#   - runs as UID:GID 10001:10001 (numeric, so runAsNonRoot can check it);
#   - writes nothing outside /tmp, so a read-only root filesystem works
#     (mount an emptyDir / tmpfs on /tmp);
#   - configured through RATELIMIT_EXT_* variables (see `ratelimit-ext serve
#     --help`); the defaults below listen on all interfaces, as a container must;
#   - the policy directory is /etc/ratelimit-ext/config (empty in the image:
#     mount a ConfigMap/Secret or a host directory there);
#   - ports: 8081 gRPC (RLS v3, ext_authz v3, grpc.health.v1), 8082 admin
#     gRPC, 9090 Prometheus /metrics. The admin API stays on loopback unless
#     RATELIMIT_EXT_ADMIN_LISTEN and RATELIMIT_EXT_ADMIN_TOKEN_FILE are set;
#     it writes policy files into the config directory and an audit log
#     (RATELIMIT_EXT_AUDIT_LOG, default beside the config directory), so
#     with it on, mount a writable volume there (the Helm chart does).
#
# Pin the base image by digest for reproducible production builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:... .

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: wheel of this project + binary wheels of its dependencies ------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /build
# Only what the wheel is built from (.dockerignore keeps everything else out).
COPY pyproject.toml README.md ./
COPY src ./src

# --only-binary: a dependency without a wheel for this platform fails the
# build here instead of pulling a compiler into the image.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --only-binary=:all: --wheel-dir /wheels /wheels/ratelimit_ext-*.whl

# The runtime environment: a virtualenv without pip, holding the wheel and
# its dependencies only (byte-compiled at install time, so nothing needs to
# be written at run time). xds-protos ships an older copy of the
# opentelemetry/proto files; opentelemetry-proto is installed again last so
# its (newer, compatible) files win whatever order pip used.
RUN python -m venv --without-pip /opt/ratelimit-ext \
 && pip --python /opt/ratelimit-ext/bin/python install \
        --no-index --find-links /wheels --only-binary=:all: /wheels/ratelimit_ext-*.whl \
 && pip --python /opt/ratelimit-ext/bin/python install --no-index --find-links /wheels \
        --only-binary=:all: --force-reinstall --no-deps /wheels/opentelemetry_proto-*.whl \
 && /opt/ratelimit-ext/bin/ratelimit-ext --version

# --- final image --------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="ratelimit-ext" \
      org.opencontainers.image.description="Rate limiting (Envoy RLS v3) and authorization (ext_authz v3) gRPC sidecar for Envoy and Istio" \
      org.opencontainers.image.licenses="Apache-2.0"

# pip and setuptools of the base image are not needed at run time; the user
# gets a numeric UID/GID and no home or shell.
RUN python -m pip uninstall --yes --quiet --root-user-action=ignore pip setuptools wheel \
 && groupadd --system --gid 10001 ratelimit-ext \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin ratelimit-ext \
 && mkdir -p /etc/ratelimit-ext/config

COPY --from=builder /opt/ratelimit-ext /opt/ratelimit-ext

ENV PATH=/opt/ratelimit-ext/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    RATELIMIT_EXT_LISTEN=0.0.0.0:8081 \
    RATELIMIT_EXT_METRICS_LISTEN=0.0.0.0:9090 \
    RATELIMIT_EXT_CONFIG=/etc/ratelimit-ext/config

USER 10001:10001
WORKDIR /tmp

EXPOSE 8081 8082 9090

# grpc.health.v1 Check (service "") on the gRPC port named by
# RATELIMIT_EXT_LISTEN; healthy only when the answer is SERVING (the server
# turns NOT_SERVING as soon as it starts shutting down).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port = os.environ.get('RATELIMIT_EXT_LISTEN', ':8081').rpartition(':')[2]; reply = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + port)).Check(h.HealthCheckRequest(), timeout=3); sys.exit(reply.status != h.HealthCheckResponse.SERVING)"]

# `docker run IMAGE` serves; `docker run IMAGE check-config PATH` and
# `docker run IMAGE hash-key` run the other subcommands.
ENTRYPOINT ["ratelimit-ext"]
CMD ["serve"]
