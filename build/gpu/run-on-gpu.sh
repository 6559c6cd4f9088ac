#!/usr/bin/env bash
# On a GPU machine (the device tool's nvidia-h100-x1), from the repository
# root with .gpu/ from build/gpu/pack.sh: serve the NCF example with KIND_GPU
# through `serve`, send one request, and run build/bench/invocations.py and
# build/bench/multi_model.py (BATCH_BENCH=1 adds a batch-64 run; NCF_ARGS replaces them
# with invocations.py runs at each concurrency;
# SKIP_NCF_BENCH=1 skips those two benchmarks, SKIP_NCF=1 the example altogether; ENCODER_BENCH=1 adds
# build/bench/gpu_encoder.py, the BERT-base-sized encoder, ENCODER_ARGS its options;
# PAYLOAD_BENCH=1 adds build/bench/payloads.py (PAYLOAD_ARGS its options,
# PAYLOAD_VERBOSE=1 a second run with Triton's verbose log); STREAMING_BENCH=1 adds
# build/bench/streaming.py, with the streaming example pack.sh packs); SPEED_BENCH=1
# adds build/gpu/speed.sh (two-core, many-streams and encoder runs; see it); LLM_BENCH=1
# adds build/bench/llm_stream.py (GPT-2 small, serve's chat route against Triton's own
# generate_stream; LLM_ARGS its options; LLM_INSTANT=1 the same on a model that answers at once;
# LLM_AB_ENV="NAME=VALUE ..." a second run with serve given those settings).
# Everything is logged under $OUT.
set -x
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out} && mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
G=$PWD/.gpu T=/tmp/triton SRC=/tmp/src V=/tmp/v OPT=/tmp/opt_ml

nvidia-smi -L
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
echo "commit $(cat "$G/COMMIT")"

# Unpack Triton + nginx + wrk, and the committed code.
mkdir -p "$T/bin" "$SRC" "$OPT" /var/log/nginx /var/lib/nginx
xz -dc "$G/triton.tar.xz" | tar -C "$T" -xf -
xz -dc "$G/src.tar.xz" | tar -C "$SRC" -xf -
for b in nginx wrk; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$T/tools/lib" "$T/tools/$b" >"$T/bin/$b"
done
chmod +x "$T/bin/"*

# A venv whose site-packages (numpy 1.26.4 for the Python backend, serve's
# packages) come before the machine's torch environment (a .pth file).
torch_site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
python3 -c 'import sys, google.protobuf as p, numpy
print(sys.executable, sys.base_prefix, sys.version, "protobuf", p.__version__, "numpy", numpy.__version__)'
python3 -m venv --without-pip --system-site-packages "$V"
site=$("$V/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
xz -dc "$G/site.tar.xz" | tar -C "$site" -xf -
# Only torch and what it imports: the machine's other packages (jax, scipy, ...)
# are built for numpy 2 and break imports under the backend's numpy 1.26.
torch_view=/tmp/torch-site && mkdir -p "$torch_view"
for entry in "$torch_site"/{torch,torchgen,functorch,nvidia,triton,sympy,mpmath,networkx,filelock,fsspec,typing_extensions.py} \
             "$torch_site"/{torch,triton,sympy,mpmath,networkx,filelock,fsspec,typing_extensions}-*.dist-info; do
    [ -e "$entry" ] && ln -sfn "$entry" "$torch_view/"
done
echo "$torch_view" >"$site/zz-torch.pth"
printf '#!%s\nimport sys\nfrom serve.runtime.cli import main\nsys.exit(main())\n' "$V/bin/python3" >"$V/bin/serve"
chmod +x "$V/bin/serve"
export PATH=$V/bin:$T/bin:$PATH PYTHONPATH=$SRC
export TRITONSERVER_BIN=$T/pytriton/tritonserver/bin/tritonserver

# The 3.12 stub needs a shared libpython: the machine's, else Ubuntu's (carried).
stub=$T/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub
if ldd "$stub" | grep -q 'libpython.*not found'; then
    libdir=$(python3 -c 'import sysconfig as s; print(s.get_config_var("LIBDIR"))')
    [ -e "$libdir/libpython3.12.so.1.0" ] || libdir=$T/tools/libpython
    export LD_LIBRARY_PATH=$libdir
fi
ldd "$stub" | grep -E 'python|not found'
ldd "$TRITONSERVER_BIN" | grep 'not found'
nginx -v; wrk -v | head -1
python -c 'import sys, numpy, torch, flask, google.protobuf as p
from tritonclient.grpc import model_config_pb2
print(sys.prefix, "numpy", numpy.__version__, numpy.__file__, "torch", torch.__version__,
      torch.cuda.get_device_name(0), "flask", flask.__version__, "protobuf", p.__version__)'

cd "$SRC"
# SKIP_NCF=1: none of the NCF example (its serve check and benchmarks), for a short run.
if [ -z "${SKIP_NCF:-}" ]; then
python build/examples/train_ncf.py --repository model_repository
ln -sfn "$SRC/model_repository" "$OPT/model"

# serve, as SageMaker runs it; a request; the GPU's view of it.
OPT_ML=$OPT SAGEMAKER_TRITON_DEFAULT_MODEL_NAME=ncf_food SAGEMAKER_TRITON_LOG_VERBOSE=0 \
    serve >"$OUT/serve.log" 2>&1 &
serve_pid=$!
python - <<'EOF'
import json, time, urllib.request
for _ in range(360):
    try:
        if urllib.request.urlopen("http://127.0.0.1:8080/ping", timeout=2).status == 200:
            break
    except OSError:
        time.sleep(0.5)
else:
    raise SystemExit("serve never answered /ping with 200")
print("ping 200")
body = {"inputs": [
    {"name": "user_id", "shape": [3, 1], "datatype": "INT64", "data": [42, 42, 42]},
    {"name": "item_id", "shape": [3, 1], "datatype": "INT64", "data": [7, 19, 301]}]}
print("request", json.dumps(body))
request = urllib.request.Request("http://127.0.0.1:8080/invocations", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as response:
    print("response", response.status, response.read().decode())
EOF
ready=$?
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
kill -TERM $serve_pid; wait $serve_pid
grep -E 'GPU|CPU|successfully loaded|WARNING|ERROR' "$OUT/serve.log"
[ $ready = 0 ] || exit 1
fi

# The benchmark: serve's front against Triton's own SageMaker frontend.
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$OUT/gpu-util.csv" &
smi_pid=$!
bench() { timeout 170 python build/bench/invocations.py --seconds 8 "$@"; }
if [ -z "${SKIP_NCF_BENCH:-}${SKIP_NCF:-}${NCF_ARGS:-}" ]; then
    bench --rounds 5 | tee "$OUT/bench-c16.txt"
    bench --rounds 3 --connections 64 | tee "$OUT/bench-c64.txt"
    [ -n "${BATCH_BENCH:-}" ] && bench --rounds 3 --batch 64 | tee "$OUT/bench-b64.txt"
    # The multi-model endpoint: /models/NAME/invoke against Triton's own frontend.
    timeout 250 python build/bench/multi_model.py --seconds 8 --rounds 5 ${MME_CONTROL:+--control} | tee "$OUT/bench-mme-c16.txt"
fi
# NCF_ARGS="...": instead of those, invocations.py with these options at each of
# NCF_CONNECTIONS (default 1 16 64), e.g. "--rounds 5 --seconds 4 --bare-proxy".
if [ -n "${NCF_ARGS:-}" ] && [ -z "${SKIP_NCF:-}" ]; then
    for connections in ${NCF_CONNECTIONS:-1 16 64}; do
        # shellcheck disable=SC2086
        bench --connections "$connections" $NCF_ARGS | tee -a "$OUT/bench-ncf.txt"
    done
fi
# The BERT-base-sized encoder (fp16, sequence 128) against the same module in-process.
if [ -n "${ENCODER_BENCH:-}" ]; then
    # shellcheck disable=SC2086
    timeout "${ENCODER_TIMEOUT:-300}" python build/bench/gpu_encoder.py --commit "$(cat "$G/COMMIT")" \
        ${ENCODER_ARGS:-} | tee "$OUT/bench-encoder.txt"
    # One archive of every setup's serve.log ($OUT brings back at most 8 files).
    (cd /tmp && tar -czf "$OUT/serve-encoder-logs.tar.gz" bench-encoder-*/setup-*/serve.log)
fi
# The payload service: simple JSON and CSV against native v2 JSON on the NCF example.
if [ -n "${PAYLOAD_BENCH:-}" ]; then
    # shellcheck disable=SC2086
    timeout 200 python build/bench/payloads.py --seconds 5 ${PAYLOAD_ARGS:-} | tee "$OUT/bench-payloads.txt"
    # PAYLOAD_VERBOSE=1: again with Triton's verbose log on (serve's default, as NVIDIA's).
    [ -n "${PAYLOAD_VERBOSE:-}" ] && timeout 200 python build/bench/payloads.py --seconds 5 \
        ${PAYLOAD_ARGS:-} --env SAGEMAKER_TRITON_LOG_VERBOSE=true | tee "$OUT/bench-payloads-verbose.txt"
fi
# The first streamed chunk of the text-generation example (a CPU model) against
# Triton's own generate_stream; needs the streaming example packed.
if [ -n "${STREAMING_BENCH:-}" ]; then
    mkdir -p streaming_repository/text_generator/1
    xz -dc "$G/streaming.tar.xz" | tar -C streaming_repository/text_generator/1 -xf -
    # What model.py imports, so a missing package shows here and not in a load failure.
    PYTHONPATH=streaming_repository/text_generator/1/packages python -c \
        'import transformers; from transformers import TextIteratorStreamer, pipeline
print("transformers", transformers.__version__)' 2>&1 | tail -4
    timeout 200 python build/bench/streaming.py --requests 100 | tee "$OUT/bench-streaming.txt"
fi
# Language models (issue 26): GPT-2 small (random weights, a tokenizer made here) streaming
# through serve's chat route against Triton's own generate_stream on the same model. The
# model is built with the machine's own Python (transformers imports there, not beside the
# backend's numpy 1.26), then served and measured with serve's. LLM_ARGS: its options.
# LLM_INSTANT=1 first runs the same paths on a model that answers at once (their cost alone).
if [ -n "${LLM_INSTANT:-}" ]; then
    python build/bench/llm_stream.py --build /tmp/llm-instant --instant
    # shellcheck disable=SC2086
    timeout "${LLM_INSTANT_TIMEOUT:-200}" python build/bench/llm_stream.py \
        --repository /tmp/llm-instant ${LLM_ARGS:-} | tee "$OUT/bench-llm-instant.txt"
fi
if [ -n "${LLM_BENCH:-}" ]; then
    "${torch_site%/lib/*}/bin/python3" build/bench/llm_stream.py --build /tmp/llm-bench
    # shellcheck disable=SC2086
    timeout "${LLM_TIMEOUT:-560}" python build/bench/llm_stream.py --repository /tmp/llm-bench \
        ${LLM_ARGS:-} | tee "$OUT/bench-llm.txt"
    # LLM_AB_ENV="NAME=VALUE ...": the same run again with serve given those settings.
    if [ -n "${LLM_AB_ENV:-}" ]; then
        # shellcheck disable=SC2086
        env $LLM_AB_ENV timeout "${LLM_TIMEOUT:-560}" python build/bench/llm_stream.py \
            --repository /tmp/llm-bench ${LLM_ARGS:-} | tee "$OUT/bench-llm-b.txt"
    fi
fi
# Issue 15's speed runs (build/gpu/speed.sh).
# shellcheck source=build/gpu/speed.sh
[ -n "${SPEED_BENCH:-}" ] && source "$SRC/build/gpu/speed.sh"
kill $smi_pid
