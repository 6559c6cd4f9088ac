# The two commands of the README: `make serve` and `make test`.
# Both run set-up first; set-up is skipped once it is done.
SHELL := /bin/bash
PORT ?= 8080
SETUP_STAMP := .venv/.setup-done

# The image: `make image` builds on NVIDIA's base (nvcr.io); `make image
# STANDIN=1` first builds the project's stand-in of that base
# (build/standin/) and builds on it, for hosts that cannot pull from nvcr.io.
IMAGE ?= sagemaker-triton
TAG ?= latest
TRITON_VERSION ?= 24.10
MODEL_LIBRARIES ?= true
STANDIN ?=
BASE_IMAGE ?= $(if $(STANDIN),localhost/tritonserver,nvcr.io/nvidia/tritonserver)
# podman where no docker engine answers; build/podman/containers.conf holds the
# settings podman needs on hosts like CI's (docker never reads it).
CONTAINER_ENGINE ?= $(if $(shell docker info >/dev/null 2>&1 && echo running),docker,podman)
export CONTAINER_ENGINE
export CONTAINERS_CONF ?= $(CURDIR)/build/podman/containers.conf
# The releases the container suite runs on, each on its stand-in base, and
# the Pythons their locks are written for (container/requirements/). The
# default release's image is built as users get it, with the model
# libraries, and serves the bundled examples in the tests; the others
# without (the tests' own models need numpy alone).
TEST_RELEASES := 24.10 26.05
EXAMPLES_RELEASE := 24.10
LOCK_PYTHONS := 3.10 3.12
IMAGE_LOGS := .work/images

.PHONY: setup serve serve-mme serve-streaming serve-llm serve-sessions rehearse test test-fresh test-images image standin lock lint bench

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml build/setup.sh build/examples/train_ncf.py build/examples/make_text_generator.py \
		build/examples/prepare_sentence_embedding.py
	bash build/setup.sh
	touch $@

# Local runs keep Triton's verbose log off (it writes about nine lines a
# request and costs throughput) unless VERBOSE=1 (or SAGEMAKER_TRITON_LOG_VERBOSE
# in the environment) asks for it. The image keeps NVIDIA's default: on.
VERBOSE ?=
SERVE_LOG := SAGEMAKER_TRITON_LOG_VERBOSE=$(if $(VERBOSE),true,$${SAGEMAKER_TRITON_LOG_VERBOSE:-false})

# Serve the bundled example repository on port $(PORT) with a real Triton,
# laid out as SageMaker lays out /opt/ml (the folder is linked, never copied).
serve: setup
	mkdir -p .opt_ml && ln -sfn ../model_repository .opt_ml/model
	$(SERVE_LOG) OPT_ML=$(CURDIR)/.opt_ml SAGEMAKER_BIND_TO_PORT=$(PORT) \
	SAGEMAKER_TRITON_DEFAULT_MODEL_NAME=$${SAGEMAKER_TRITON_DEFAULT_MODEL_NAME:-ncf_food} \
	.venv/bin/serve

# The same examples as a multi-model endpoint: each NCF model packed into its
# own model.tar.gz, in the folders SageMaker hands the container. Load them
# with POST /models (README.md shows the calls).
serve-mme: setup
	for model in ncf_food ncf_fashion; do \
	  mkdir -p .opt_ml/models/$$model/model && \
	  tar -czhf .opt_ml/models/$$model/model/model.tar.gz -C model_repository $$model; \
	done
	$(SERVE_LOG) OPT_ML=$(CURDIR)/.opt_ml SAGEMAKER_BIND_TO_PORT=$(PORT) SAGEMAKER_MULTI_MODEL=true \
	.venv/bin/serve

# The streaming example (streaming_repository/): a text-generation pipeline
# that streams its tokens to /invocations (a tiny BLOOM with random weights).
serve-streaming: setup
	mkdir -p .opt_ml/streaming && ln -sfn ../../streaming_repository .opt_ml/streaming/model
	$(SERVE_LOG) OPT_ML=$(CURDIR)/.opt_ml/streaming SAGEMAKER_BIND_TO_PORT=$(PORT) .venv/bin/serve

# The language-model example (llm_repository/): a tiny random-weight BLOOM with the vLLM
# backend's inputs and a chat template, answering the OpenAI and TGI schemas on /invocations.
serve-llm: setup
	mkdir -p .opt_ml/llm && ln -sfn ../../llm_repository .opt_ml/llm/model
	$(SERVE_LOG) OPT_ML=$(CURDIR)/.opt_ml/llm SAGEMAKER_BIND_TO_PORT=$(PORT) \
	SERVE_TEXT_GENERATION_MODELS=$${SERVE_TEXT_GENERATION_MODELS:-chat_generator} .venv/bin/serve

# smtriton's way to an endpoint (package, upload, deploy, invoke, update,
# delete) against the local AWS stand-in, invocations reaching a real serve.
rehearse: setup
	bash build/rehearse.sh

# The sessions examples (sessions_repository/): chat_memory, a stateful model for
# stateful sessions on /invocations, and speech_stream, a decoupled one for the
# bidirectional streams at ws://localhost:$(PORT)/invocations-bidirectional-stream.
serve-sessions: setup
	mkdir -p .opt_ml/sessions && ln -sfn ../../sessions_repository .opt_ml/sessions/model
	$(SERVE_LOG) OPT_ML=$(CURDIR)/.opt_ml/sessions SAGEMAKER_BIND_TO_PORT=$(PORT) \
	SAGEMAKER_TRITON_DEFAULT_MODEL_NAME=$${SAGEMAKER_TRITON_DEFAULT_MODEL_NAME:-chat_memory} \
	.venv/bin/serve

# Everything: lint, the local suite and the container suite, the latter
# against an image built on each release's stand-in base. The images build
# while the tests that need none run (build/test.sh); TEST_WORKERS pytest-xdist
# workers share the tests (most of their time is spent waiting on servers).
TEST_WORKERS ?= 4
test: setup
	IMAGE=$(IMAGE) TEST_RELEASES="$(TEST_RELEASES)" EXAMPLES_RELEASE=$(EXAMPLES_RELEASE) \
	TEST_WORKERS=$(TEST_WORKERS) IMAGE_LOGS=$(IMAGE_LOGS) bash build/test.sh

# `make test` as a new machine runs it: a clean clone of HEAD, a podman storage
# and a pip cache of its own (build/test-fresh.sh).
test-fresh:
	bash build/test-fresh.sh

# The images the container suite runs. Each stand-in base is built first, with
# a log of its own, so that the image's log (checked by the tests) holds only
# what the project's Dockerfile does.
test-images: setup
	mkdir -p $(IMAGE_LOGS)
	for release in $(TEST_RELEASES); do \
	  libraries=$$([ $$release = $(EXAMPLES_RELEASE) ] && echo true || echo false); \
	  $(MAKE) --no-print-directory standin TRITON_VERSION=$$release 2>&1 \
	    | tee $(IMAGE_LOGS)/standin-$$release.log | grep -E '^(standin:|COMMIT)' ; \
	  test "$${PIPESTATUS[0]}" -eq 0 || exit 1; \
	  $(MAKE) --no-print-directory image BASE_IMAGE=localhost/tritonserver TRITON_VERSION=$$release \
	    MODEL_LIBRARIES=$$libraries TAG=test-$$release 2>&1 \
	    | tee $(IMAGE_LOGS)/$(IMAGE)-test-$$release.log \
	    | grep -E '^(STEP|COMMIT)' ; \
	  test "$${PIPESTATUS[0]}" -eq 0 || exit 1; \
	done

image: setup $(if $(STANDIN),standin)
	.venv/bin/smtriton image --repository $(IMAGE) --tag $(TAG) \
	  --base-image $(BASE_IMAGE) --triton-version $(TRITON_VERSION) \
	  --build-arg MODEL_LIBRARIES=$(MODEL_LIBRARIES)

standin:
	bash build/standin/build.sh $(TRITON_VERSION)

# Rewrite the image's locked dependency trees, one per Python of the
# supported bases: serve's own (pyproject.toml) and the model libraries.
lock: setup
	for python in $(LOCK_PYTHONS); do \
	  for layer in serve models; do \
	    input=$$([ $$layer = serve ] && echo pyproject.toml || echo container/requirements/models.in); \
	    .venv/bin/uv pip compile $$input --quiet --generate-hashes --python-version $$python \
	      --python-platform x86_64-manylinux_2_28 \
	      --output-file container/requirements/$$layer-py$$python.txt || exit 1; \
	  done; \
	done

lint: setup
	.venv/bin/ruff check serve tests build
	.venv/bin/ruff format --check serve tests build
	.venv/bin/mypy

bench: setup
	.venv/bin/python build/bench/invocations.py
