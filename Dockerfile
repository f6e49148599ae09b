# facet's one image: it serves by default (gunicorn on $PORT), and it runs flow steps as
# METAFLOW_KUBERNETES_CONTAINER_IMAGE. `make image` builds it; docs/deploy.md says more.
#
#   CPU (default):  docker build -t facet:latest .
#   GPU nodes:      docker build -t facet:gpu \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# BASE_IMAGE needs Python 3.11 with venv, or apt to install it. Without a registry,
# `make base-image` builds one from Debian's packages (deploy/image/base.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- python: the base, with python3.11 and venv whatever the base brought ----
FROM ${BASE_IMAGE} AS python
RUN if ! python3.11 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3.11 python3.11-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---- source: the project's code, compiled (the image's filesystem may be read-only) ----
FROM python AS source
COPY lib /app/lib
COPY serving /app/serving
COPY flows /app/flows
RUN python3.11 -m compileall -q /app

# ---- final: the pinned dependencies in a venv, the source, a non-root user ----
# The venv is installed here rather than copied from another stage: podman 4.3 (buildah 1.28)
# redoes a COPY --from at every build, and this one is 2 GB.
FROM python AS final
RUN groupadd --gid 10001 facet \
    && useradd --uid 10001 --gid facet --home-dir /home/facet --create-home facet \
    && mkdir -p /var/lib/facet && chown facet:facet /var/lib/facet
# Where torch comes from: the CPU build by default; a CUDA index for GPU images.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional, for builds without the index above: a wheel folder mounted into the build
# (podman build -v /opt/wheels:/wheels:ro --build-arg FIND_LINKS=/wheels), and a CA bundle
# for a TLS proxy (-v /etc/ssl/certs/ca-certificates.crt:/run/ca.crt:ro --build-arg CA_BUNDLE=...).
ARG FIND_LINKS=
ARG CA_BUNDLE=
# Dependencies before source: this layer is reused until pyproject.toml or constraints.txt
# change. The project's direct dependencies, constrained by constraints.txt, and what
# Metaflow's Kubernetes and Argo steps need to fetch their code package from GCS. No pip cache.
COPY pyproject.toml constraints.txt /tmp/build/
RUN python3.11 -m venv /opt/facet \
    && python3.11 -c "import tomllib; \
print(*tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/build/requirements.txt \
    && echo simple-gcp-object-downloader >> /tmp/build/requirements.txt \
    && /opt/facet/bin/pip install --no-cache-dir --disable-pip-version-check \
        ${CA_BUNDLE:+--cert "$CA_BUNDLE"} \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        ${FIND_LINKS:+--find-links "$FIND_LINKS"} \
        -c /tmp/build/constraints.txt -r /tmp/build/requirements.txt \
    && rm -rf /tmp/build /root/.cache
# The source last: a change to lib/ rebuilds only this layer.
COPY --from=source /app /app
# PREDICTION_LOG: mount a volume at /var/lib/facet (Kubernetes), or accept a disk that vanishes
# with the instance (Cloud Run). METAFLOW_SKIP_INSTALL_DEPENDENCIES: Metaflow's steps would
# pip install their GCS downloader at every start; it is installed here.
ENV PATH=/opt/facet/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    USER=facet \
    HOME=/home/facet \
    HF_HOME=/tmp/huggingface \
    PREDICTION_LOG=/var/lib/facet/predictions.db \
    METAFLOW_SKIP_INSTALL_DEPENDENCIES=1
USER 10001:10001
# Writable for Metaflow, which unpacks its code package into the working directory. Serving
# writes nothing here, so the root filesystem may be read-only.
WORKDIR /home/facet
EXPOSE 8000
# gunicorn is PID 1: SIGTERM stops accepting, lets in-flight requests finish within
# graceful_timeout (30 s) and exits 0.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "--config", "/app/serving/gunicorn.conf.py"]
