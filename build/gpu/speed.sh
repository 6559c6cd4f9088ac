# Issue 15's speed runs on a GPU host, sourced by run-on-gpu.sh (SPEED_BENCH=1), which
# has unpacked everything and set PATH, PYTHONPATH, $G, $OUT; the current folder is
# the committed code. SPEED_PARTS picks the parts (default: all of them):
# - two-core: build/bench/invocations.py with serve, Triton and the bare nginx on
#   cores 0-1 and wrk on 2-5, and no GPU (CUDA_VISIBLE_DEVICES empty: the model runs
#   on the CPU, as on an ml.c5.large's two cores), Triton's verbose log off
#   and on; first with the serve/ of the commit pack.sh got as BEFORE (if any);
# - pieces: build/bench/front_pieces.py, pinned the same way: what each piece of
#   serve's nginx config costs;
# - threads: the same as two-core, log off, with SAGEMAKER_TRITON_THREAD_COUNT=2 beside it;
# - streams: build/bench/streams.py, 64 and 256 streams, servers on 0-7, clients on 8-15;
# - encoder: build/bench/gpu_encoder.py at c=64 with ENCODER_SETUPS (space-separated);
# - payloads: build/bench/payloads.py (the payload service's path) with the BEFORE
#   commit's serve/, then this one's, twice in turn, on all cores.
part() { [[ " ${SPEED_PARTS:-two-core pieces threads streams encoder payloads} " == *" $1 "* ]]; }
pinned=(--server-cpus 0,1 --load-cpus 2-5 --rounds "${SPEED_ROUNDS:-3}" --seconds "${SPEED_SECONDS:-6}")
if part two-core; then
    if [ -f "$G/src-before.tar.xz" ]; then
        mkdir -p /tmp/src-before && xz -dc "$G/src-before.tar.xz" | tar -C /tmp/src-before -xf -
        CUDA_VISIBLE_DEVICES= PYTHONPATH=/tmp/src-before timeout 200 python build/bench/invocations.py \
            --log off "${pinned[@]}" | tee "$OUT/two-core-before.txt"
    fi
    CUDA_VISIBLE_DEVICES= timeout 400 python build/bench/invocations.py --log both "${pinned[@]}" | tee "$OUT/two-core-after.txt"
fi
if part pieces; then
    CUDA_VISIBLE_DEVICES= timeout 300 python build/bench/front_pieces.py "${pinned[@]}" \
        | tee "$OUT/two-core-pieces.txt"
fi
if part threads; then
    CUDA_VISIBLE_DEVICES= timeout 300 python build/bench/invocations.py --log off "${pinned[@]}" \
        --variant SAGEMAKER_TRITON_THREAD_COUNT=2 | tee "$OUT/two-core-threads.txt"
fi
if part streams; then
    timeout 300 python build/bench/streams.py --server-cpus 0-7 --load-cpus 8-15 \
        ${STREAMS_ARGS:-} | tee "$OUT/streams.txt"
fi
if part encoder; then
    setups=()
    for setup in ${ENCODER_SETUPS:-committed}; do setups+=(--setup "$setup"); done
    timeout 560 python build/bench/gpu_encoder.py --commit "$(cat "$G/COMMIT")" \
        --concurrency 64 --seconds 5 "${setups[@]}" | tee "$OUT/encoder.txt"
fi
if part payloads && [ -f "$G/src-before.tar.xz" ]; then
    mkdir -p /tmp/src-before && xz -dc "$G/src-before.tar.xz" | tar -C /tmp/src-before -xf -
    for turn in 1 2; do
        PYTHONPATH=/tmp/src-before timeout 120 python build/bench/payloads.py --batch 1 \
            --rounds 2 --seconds 4 | tee -a "$OUT/payloads-before.txt"
        timeout 120 python build/bench/payloads.py --batch 1 --rounds 2 --seconds 4 \
            | tee -a "$OUT/payloads-after.txt"
    done
fi
