# syntax=docker/dockerfile:1
# preview-bot: `docker build -t preview-bot .`, then `docker run preview-bot serve --port 8080` (the default).
# Two stages: the builder makes wheels of the bot and all its dependencies; the final image installs
# only those wheels (no compiler, no pip cache, no source tree) and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (pyproject names README.md as its readme).
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="preview-bot" \
      org.opencontainers.image.description="Per-PR previews in a shared Kubernetes + Istio cluster" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels (the bot and exactly its resolved dependencies) are bind-mounted from the builder, so
# they never become a layer of this image; --no-index: nothing is fetched from anywhere else.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && groupadd --system --gid 10001 preview-bot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin preview-bot
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
# Kubernetes probes /healthz and /readyz (deploy/base/deployment.yaml); no HEALTHCHECK needed here.
ENTRYPOINT ["preview-bot"]
CMD ["serve", "--port", "8080"]
