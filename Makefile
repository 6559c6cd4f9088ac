# The two commands of the README: `make serve` and `make test`.
# Both run set-up first; set-up is skipped once it is done.
SHELL := /bin/bash
PORT ?= 8080
SETUP_STAMP := .venv/.setup-done

.PHONY: setup serve serve-mme serve-streaming test lint bench

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml build/setup.sh build/examples/train_ncf.py build/examples/make_text_generator.py
	bash build/setup.sh
	touch $@

# Serve the bundled example repository on port $(PORT) with a real Triton,
# laid out as SageMaker lays out /opt/ml (the folder is linked, never copied).
serve: setup
	mkdir -p .opt_ml && ln -sfn ../model_repository .opt_ml/model
	OPT_ML=$(CURDIR)/.opt_ml SAGEMAKER_BIND_TO_PORT=$(PORT) \
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
	OPT_ML=$(CURDIR)/.opt_ml SAGEMAKER_BIND_TO_PORT=$(PORT) SAGEMAKER_MULTI_MODEL=true \
	.venv/bin/serve

# The streaming example (streaming_repository/): a text-generation pipeline
# that streams its tokens to /invocations (a tiny BLOOM with random weights).
serve-streaming: setup
	mkdir -p .opt_ml/streaming && ln -sfn ../../streaming_repository .opt_ml/streaming/model
	OPT_ML=$(CURDIR)/.opt_ml/streaming SAGEMAKER_BIND_TO_PORT=$(PORT) .venv/bin/serve

test: setup lint
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check serve tests build
	.venv/bin/ruff format --check serve tests build

bench: setup
	.venv/bin/python build/bench/invocations.py
