# syntax=docker/dockerfile:1
#
# Proof-Messenger relay image.
#
#   docker build -t proof-messenger:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v pm-data:/var/lib/proof-messenger -p 8080:8080 proof-messenger:0.1.0
#
# Two stages: the builder turns this checkout into a wheel and installs it into a virtualenv;
# the final image holds only that virtualenv on top of python:3.11-slim. No compiler, no pip
# cache and no source tree reach the final image. Pin the base images by digest in your own
# registry mirror if your policy requires reproducible builds (see docs/deployment.md).

FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
# The venv lives at the same path as in the final image: its scripts' shebangs point into it.
RUN python -m venv /opt/proof-messenger/venv

COPY pyproject.toml README.md ./
COPY src ./src

# Build the wheel first (so the image installs exactly what a release would ship), then install
# it with its dependencies; pip compiles the bytecode here, so nothing is written at run time.
RUN /opt/proof-messenger/venv/bin/pip wheel --no-deps --wheel-dir /build/wheels . \
    && /opt/proof-messenger/venv/bin/pip install --compile /build/wheels/proof_messenger-*.whl \
    && /opt/proof-messenger/venv/bin/proof-messenger --help > /dev/null


FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="proof-messenger" \
      org.opencontainers.image.description="Proof-Messenger relay: verifies signed transaction intents and keeps a tamper-evident, encrypted audit log" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

# A fixed, unprivileged uid/gid (10001) so volume ownership and Kubernetes runAsUser agree.
# The data directory is the only place the relay writes (besides /tmp).
RUN groupadd --system --gid 10001 proof-messenger \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/proof-messenger --shell /usr/sbin/nologin proof-messenger \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/proof-messenger

COPY --from=builder /opt/proof-messenger/venv /opt/proof-messenger/venv

ENV PATH="/opt/proof-messenger/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIND_ADDRESS=0.0.0.0:8080 \
    AUDIT_DB_URL=sqlite:////var/lib/proof-messenger/proof-messenger.db \
    PROOF_MESSENGER_MASTER_KEY_FILE=/var/lib/proof-messenger/master.key \
    PROOF_MESSENGER_LOG_KEY_FILE=/var/lib/proof-messenger/log-signing.key

WORKDIR /var/lib/proof-messenger
VOLUME ["/var/lib/proof-messenger"]
USER 10001:10001
EXPOSE 8080
# The relay drains in-flight requests on SIGTERM before exiting.
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["proof-messenger", "serve", "--health-check"]

ENTRYPOINT ["proof-messenger"]
CMD ["serve"]
