# The SageMaker serving image: NVIDIA Triton Inference Server behind `serve`
# (nginx on port 8080, Triton supervised on loopback). Build it with
# `make image` or `smtriton image` (build/README.md); the ARGs below are the
# only place their defaults live. AWS's images work too:
#   --base-image 763104351884.dkr.ecr.REGION.amazonaws.com/sagemaker-tritonserver
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver
ARG TRITON_VERSION=24.10
FROM ${BASE_IMAGE}:${TRITON_VERSION}-py3
ARG BASE_IMAGE
ARG TRITON_VERSION

# false leaves out the model libraries (torch, transformers, ...): a small
# image for models that need only numpy, and for the project's own tests.
ARG MODEL_LIBRARIES=true

# bidirectional-streaming: the WebSocket route /invocations-bidirectional-stream
# (InvokeEndpointWithBidirectionalStream, serve/sessions/bidirectional.py).
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.multi-models=true \
      com.amazonaws.sagemaker.capabilities.bidirectional-streaming=true \
      org.opencontainers.image.base.name="${BASE_IMAGE}:${TRITON_VERSION}-py3"

# nginx is the public front; tini runs as PID 1 (after NVIDIA's entrypoint
# hands over), forwards SIGTERM to serve and reaps orphaned processes.
# Ubuntu's packages follow security updates, so they are not pinned to
# versions that the archive later drops.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx-light \
        tini \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TRITONSERVER_BIN=/opt/tritonserver/bin/tritonserver

# Locked dependency trees, one per Python release (container/requirements/,
# written by `make lock`); the base image's Python picks its own.
COPY container/requirements/ /tmp/requirements/

# The model libraries go where Triton's Python backend looks: the base
# image's own Python. --ignore-installed leaves Ubuntu's distutils-installed
# packages (blinker, PyYAML, ...) alone instead of failing to uninstall them,
# and PIP_BREAK_SYSTEM_PACKAGES is what NVIDIA's Ubuntu 24.04 images set for
# the same installs (PEP 668).
RUN if [ "${MODEL_LIBRARIES}" = "true" ]; then \
        lock="$(/tmp/requirements/lock-for.sh models)" \
        && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --ignore-installed \
            --require-hashes --requirement "${lock}"; \
    fi

# serve runs from a virtual environment of its own, so its dependencies
# neither touch nor are touched by the packages models import. The venv is
# never put on PATH: Triton's Python stub must find the base image's Python.
RUN lock="$(/tmp/requirements/lock-for.sh serve)" \
    && python3 -m venv --without-pip /opt/serve \
    && python3 -m pip --python /opt/serve/bin/python install --no-cache-dir \
        --require-hashes --requirement "${lock}" \
    && rm -rf /tmp/requirements
# ... and models run on the base image's Python, with the model libraries.
ENV SERVE_MODEL_PYTHON=/usr/bin/python3

# Extra Triton backends (Python-based ones need only their model.py here).
COPY container/backends/ /opt/tritonserver/backends/

# The project last, so code changes rebuild only this small layer. Its
# dependencies are all in the lock, hence --no-deps.
COPY pyproject.toml README.md /tmp/src/
COPY serve/ /tmp/src/serve/
RUN python3 -m pip --python /opt/serve/bin/python install --no-cache-dir --no-deps /tmp/src \
    && rm -rf /tmp/src \
    && ln -s /opt/serve/bin/serve /usr/local/bin/serve

EXPOSE 8080

# NVIDIA's entrypoint first (CUDA forward compatibility on older drivers, its
# driver checks), then tini. SageMaker's `docker run IMAGE serve` and a plain
# `docker run IMAGE` both serve; any other command (bash, ...) runs instead.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "/usr/bin/tini", "-g", "--"]
CMD ["serve"]
