#!/usr/bin/env bash
# Pack what a bare GPU machine (Ubuntu 24.04, Python 3.12, torch, no network)
# needs to run `serve` on the NCF example: a trimmed Triton from the
# nvidia-pytriton wheel, nginx and wrk from Debian, serve's locked packages for
# Python 3.12, plus the committed code (git archive HEAD). Everything lands in
# .gpu/ (ignored, not committed, about 55 MB),
# which build/gpu/run-on-gpu.sh unpacks there.
#
# Run from the repository root after `make setup` (it reads .venv/).
set -euo pipefail
SITE=${SITE:-.venv/lib/python3.11/site-packages}
OUT=.gpu
# In a worktree .git is a file: the exclude list is the common one.
exclude=$(git rev-parse --git-common-dir)/info/exclude
grep -qx '/.gpu/' "$exclude" 2>/dev/null || { mkdir -p "$(dirname "$exclude")"; echo /.gpu/ >>"$exclude"; }
rm -rf "$OUT" && mkdir -p "$OUT"
stage=$(mktemp -d) && trap 'rm -rf "$stage"' EXIT

# 1. Triton: server, backends, the 3.12 stub and the bundled libraries, in the
#    wheel's layout (RPATHs are relative: <root>/pytriton/tritonserver/...,
#    <root>/nvidia_pytriton.libs/). The 3.13 libpython is the one lib no
#    binary we keep needs.
t=$stage/triton/pytriton/tritonserver
mkdir -p "$t/python_backend_stubs" "$stage/triton/nvidia_pytriton.libs"
cp -a "$SITE/pytriton/tritonserver/"{bin,backends,caches} "$t/"
cp -a "$SITE/pytriton/tritonserver/python_backend_stubs/3.12" "$t/python_backend_stubs/"
rm -rf "$t/backends/python/__pycache__"
find "$SITE/nvidia_pytriton.libs" -type f ! -name 'libpython3-*' \
    -exec cp -a {} "$stage/triton/nvidia_pytriton.libs/" \;
for f in "$t/bin/tritonserver" "$t/backends/python/libtriton_python.so" \
         "$t/python_backend_stubs/3.12/triton_python_backend_stub"; do
    # libpython3.12 comes from the GPU machine (or tools/libpython below).
    if ldd "$f" | grep 'not found' | grep -v libpython3.12; then
        echo "missing library for $f" >&2; exit 1
    fi
done

# 2. nginx and wrk from Debian bookworm, with their less common libraries;
#    run-on-gpu.sh wraps both so only they see tools/lib. libpython3.12 from
#    Ubuntu noble, used only if the GPU machine has no shared libpython.
debs=$stage/debs && mkdir -p "$debs" && cd "$debs"
apt-get download -q nginx libluajit2-5.1-2 wrk libpcre2-8-0 libssl3 >/dev/null
noble=$stage/noble && mkdir -p "$noble/lists/partial"
echo 'deb [trusted=yes] http://archive.ubuntu.com/ubuntu noble-updates main' >"$noble/sources.list"
apt_noble=(-o Dir::Etc::SourceList="$noble/sources.list" -o Dir::Etc::SourceParts=-
           -o Dir::State::Lists="$noble/lists" -o APT::Architecture=amd64
           -o APT::Architectures=amd64 -o Debug::NoLocking=1)
apt-get "${apt_noble[@]}" update -q >/dev/null
apt-get "${apt_noble[@]}" download -q libpython3.12t64 >/dev/null
cd - >/dev/null
for d in "$debs"/*.deb; do dpkg -x "$d" "$stage/root"; done
tools=$stage/triton/tools && mkdir -p "$tools/lib" "$tools/libpython"
cp "$stage/root/usr/sbin/nginx" "$stage/root/usr/bin/wrk" "$tools/"
cp -L "$stage/root/usr/lib/x86_64-linux-gnu/"{libluajit-5.1.so.2,libpcre2-8.so.0,libssl.so.3,libcrypto.so.3} "$tools/lib/"
cp -L "$stage/root/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0" "$tools/libpython/"
for b in nginx wrk; do LD_LIBRARY_PATH=$tools/lib ldd "$tools/$b" | grep -q 'not found' && exit 1; done

tar -C "$stage/triton" -cf - . | xz -T0 -6 >"$OUT/triton.tar.xz"

# 3. serve's locked packages (container/requirements/serve-py3.12.txt, what the
#    image installs) for the GPU machine's Python 3.12, unpacked and packed with
#    xz (the wheels alone would pass the device's 64 MiB); tritonclient without
#    the binaries its wheel carries.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$stage/wheels" \
    -r container/requirements/serve-py3.12.txt 2>/dev/null
for wheel in "$stage"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$stage/site"; done
rm -rf "$stage/site/tritonclient/bin" "$stage/site/bin"
tar -C "$stage/site" -cf - . | xz -T0 -9 >"$OUT/site.tar.xz"

# 4. The committed code, so the run is of HEAD and not of anyone's unfinished edits.
# (Not the sentence-embedding example: its weights and environment are made by set-up.)
git archive --format=tar HEAD serve build/bench build/examples build/gpu model_repository \
    streaming_repository ':(exclude)model_repository/sentence_*' | xz >"$OUT/src.tar.xz"
# BEFORE=<commit>: that commit's serve/ too, for a benchmark of before and after.
[ -n "${BEFORE:-}" ] && git archive --format=tar "$BEFORE" serve | xz >"$OUT/src-before.tar.xz"

# 5. The streaming example's packages (make_text_generator.py's pins, and what
#    transformers imports that a bare machine may lack) for Python 3.12, unpacked:
#    xz packs the sources to 7 MB where the wheels take 16, under the device's
#    64 MiB. With the random-weight generator set-up made (PAYLOAD_BENCH uses both).
generator=streaming_repository/text_generator/1/generator
if [ -d "$generator" ] && [ -z "${SKIP_STREAMING:-}" ]; then
    read -ra pins < <(python3 -c 'import sys; sys.path.insert(0, "build/examples")
from make_text_generator import PACKAGES; print(*PACKAGES)')
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$stage/streaming-wheels" "${pins[@]}" \
        regex pyyaml requests urllib3 idna certifi charset-normalizer packaging \
        filelock fsspec typing-extensions
    mkdir -p "$stage/streaming/packages"
    for wheel in "$stage"/streaming-wheels/*.whl; do
        python3 -m zipfile -e "$wheel" "$stage/streaming/packages"
    done
    cp -a "$generator" "$stage/streaming/generator"
    tar -C "$stage/streaming" -cf - . | xz -T0 -9e >"$OUT/streaming.tar.xz"
fi
git rev-parse --short HEAD >"$OUT/COMMIT"

du -sh "$OUT"; ls -l "$OUT"
