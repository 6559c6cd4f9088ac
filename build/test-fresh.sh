#!/usr/bin/env bash
# `make test-fresh`: the README's test command as a new machine runs it.
# A clean clone of the committed HEAD (no .venv, no generated weights, no
# .work/), a podman storage of its own (the stand-ins and images built from
# nothing; the default storage is never touched) and an empty pip cache.
# Debian packages already installed stay installed: apt is the one cache a
# run cannot set aside without root's whole system. Prints the time each
# part took and leaves the log in .work/test-fresh/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/test-fresh-XXXXXX")
# mktemp's folder is 0700; a clone is usually enterable by others (CI's is), and the
# least-privilege tests run Triton and Python as another user from the checkout's venv.
chmod 755 "$scratch"
log_dir=$root/.work/test-fresh
mkdir -p "$log_dir"
log=$log_dir/$(date -u +%Y%m%dT%H%M%SZ)-$(git -C "$root" rev-parse --short HEAD).log

cleanup() {
    # The throwaway storage's containers and layers go with it.
    CONTAINERS_STORAGE_CONF=$scratch/storage.conf podman system reset --force >/dev/null 2>&1 || true
    rm -rf "$scratch"
}
trap cleanup EXIT

git clone --quiet --no-hardlinks "$root" "$scratch/clone"
cat > "$scratch/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$scratch/storage"
runroot = "$scratch/run"
EOF
export CONTAINERS_STORAGE_CONF=$scratch/storage.conf
export PIP_CACHE_DIR=$scratch/pip-cache

echo "test-fresh: $(git -C "$scratch/clone" log -1 --format='%h %s') in $scratch/clone"
echo "test-fresh: log in $log"
start=$(date +%s)
status=0
(cd "$scratch/clone" && make test) > "$log" 2>&1 || status=$?
seconds=$(($(date +%s) - start))
tail -n 5 "$log"
printf 'test-fresh: make test exited %d after %dm%02ds\n' "$status" $((seconds / 60)) $((seconds % 60))
exit "$status"
