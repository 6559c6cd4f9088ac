# The SageMaker serving image: NVIDIA Triton Inference Server behind `serve`
# (nginx on port 8080, Triton supervised on loopback). Build it with
# `smtriton image` (build/README.md); the two ARGs below are the only place
# their defaults live. AWS's images work too:
#   --base-image 763104351884.dkr.ecr.REGION.amazonaws.com/sagemaker-tritonserver
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver
ARG TRITON_VERSION=24.10
FROM ${BASE_IMAGE}:${TRITON_VERSION}-py3

LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true \
      com.amazonaws.sagemaker.capabilities.multi-models=true

# nginx is the public front; tini runs as PID 1, forwards SIGTERM to serve
# and reaps orphaned processes. Ubuntu's packages follow security updates,
# so they are not pinned to versions that the archive later drops.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx-light \
        tini \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRITONSERVER_BIN=/opt/tritonserver/bin/tritonserver

# Dependencies first: this layer is rebuilt only when the pins change.
COPY container/requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --no-cache-dir --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Extra Triton backends (Python-based ones need only their model.py here).
COPY container/backends/ /opt/tritonserver/backends/

# The project last, so code changes rebuild only this small layer. Its
# dependencies are all in requirements.txt, hence --no-deps.
COPY pyproject.toml README.md /tmp/src/
COPY serve/ /tmp/src/serve/
COPY build/smtriton/ /tmp/src/build/smtriton/
RUN python3 -m pip install --no-cache-dir --no-deps /tmp/src \
    && rm -rf /tmp/src

EXPOSE 8080

# SageMaker runs `docker run IMAGE serve`; plain `docker run IMAGE` serves too.
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "serve"]
CMD ["serve"]
