# One image for both roles of Orchestrator: `orchestrator operator ...` and
# `orchestrator proxy ...` (the Helm chart passes the role as arguments).
#
#   make image        # tools/image/build.sh: podman or docker, see README "Building the image"
#   docker build -t orchestrator:dev .
#   docker run --rm orchestrator:dev --help
#
# Stage 1 builds the project's wheel and installs it into a virtualenv; stage 2
# copies only that virtualenv onto a clean slim base: no compiler, no sources,
# no wheel cache. tests/image builds this file and runs the result (roles,
# user, read-only root, the chart's Pods); tests/cluster/test_chart.py runs the
# RUN lines marked "install step" in a fresh virtualenv and lints the file.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml main.py ./
COPY orchestrator/ orchestrator/
COPY core/ core/
COPY proxy/ proxy/
COPY operator/ operator/
# install step: build the wheel
RUN python -m pip wheel --no-deps --wheel-dir /wheels /src
# install step: a virtualenv holding the wheel and its dependencies (binary wheels only)
RUN python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --only-binary=:all: /wheels/*.whl
# Lean runtime: no packaging tools (pip, setuptools), no tests shipped inside
# dependencies, and not the official client's asyncio twin `kubernetes.aio`
# (68 MB, imported by nothing here; the operator's async client is kopf's own).
RUN /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools \
    && rm -rf /opt/venv/lib/python3.11/site-packages/kubernetes/aio \
    && find /opt/venv -depth -type d -name tests -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="orchestrator" \
      org.opencontainers.image.description="Kubernetes-native API gateway: kopf operator + FastAPI proxy" \
      org.opencontainers.image.source="https://github.com/orchestrator-dev/orchestrator"
# A numeric, non-root user (Kubernetes runAsNonRoot can only verify a numeric UID).
RUN groupadd --system --gid 10001 orchestrator \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin orchestrator
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 10001:10001
# 8000: proxy HTTP (/orchestrator/..., /readyz, /livez, /metrics); 8080: operator /healthz.
EXPOSE 8000 8080
ENTRYPOINT ["orchestrator"]
CMD ["--help"]
