#!/usr/bin/env bash
# `make test`: lint, the tests that need no image while the images build,
# then the tests that run the images. Every part runs even when one before it
# failed; the exit status is the first failure's. Each part's time is printed
# (the budget: docs/benchmarks.md, "The test suite's time").
set -uo pipefail
cd "$(dirname "$0")/.."

: "${IMAGE:?}" "${TEST_RELEASES:?}" "${EXAMPLES_RELEASE:?}" "${TEST_WORKERS:?}" "${IMAGE_LOGS:?}"
pytest=(.venv/bin/python -m pytest -n "$TEST_WORKERS" --durations=15)
for release in $TEST_RELEASES; do
    pytest+=(--image "$IMAGE:test-$release")
done
pytest+=(--examples-image "$IMAGE:test-$EXAMPLES_RELEASE")

status=0
started=$(date +%s)
part() { # NAME STATUS: note a part's end, its time, and the first failure
    printf 'test: %s %s after %ds\n' "$1" "$([ "$2" -eq 0 ] && echo passed || echo FAILED)" \
        $(($(date +%s) - started))
    [ "$status" -ne 0 ] || status=$2
}

mkdir -p "$IMAGE_LOGS"
make --no-print-directory test-images > "$IMAGE_LOGS/build.log" 2>&1 &
images=$!
trap 'kill $images 2>/dev/null' EXIT

make --no-print-directory lint
part lint $?

# A module's tests stay on one worker, so a `serve` they share starts once.
"${pytest[@]}" --dist loadscope --targets local
part "tests without an image" $?

wait $images
built=$?
grep -E '^(standin:|STEP 1/|COMMIT)' "$IMAGE_LOGS/build.log"
if [ "$built" -ne 0 ]; then
    tail -n 40 "$IMAGE_LOGS/build.log"
fi
part "images (built meanwhile, log in $IMAGE_LOGS)" $built

if [ "$built" -eq 0 ]; then
    # These start their own containers: each test goes to whichever worker is free.
    "${pytest[@]}" --dist load --targets images
    part "tests of the images" $?
fi
exit "$status"
