#!/usr/bin/env bash
# Build a local stand-in for NVIDIA's Triton image, from public parts only:
#   build/standin/build.sh RELEASE        (RELEASE: 24.10 or 26.05)
# makes localhost/tritonserver:RELEASE-py3, which the project's Dockerfile
# builds FROM with --build-arg BASE_IMAGE=localhost/tritonserver.
# Steps: an Ubuntu root file system from Ubuntu's archive (mmdebstrap),
# NVIDIA's OS and Python steps for that release (RELEASE.Containerfile), and
# Triton 2.51 from the nvidia-pytriton wheel laid out as in NVIDIA's image.
# Each step is skipped when its result exists (the image: built from these
# very files, which its label records); STANDIN_REBUILD=1 redoes all.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
release=${1:-}
containerfile=$here/$release.Containerfile
if [ -z "$release" ] || [ ! -f "$containerfile" ]; then
    echo "usage: $0 RELEASE, where RELEASE is one of:" \
        "$(cd "$here" && ls ./*.Containerfile | sed 's|./||; s|.Containerfile||' | tr '\n' ' ')" >&2
    exit 2
fi
engine=${CONTAINER_ENGINE:-podman}
image=${STANDIN_IMAGE:-localhost/tritonserver}:$release-py3
work=${STANDIN_WORK:-$root/.work/standin}
pytriton=nvidia-pytriton==0.7.0
ubuntu_archive=${UBUNTU_ARCHIVE:-http://archive.ubuntu.com/ubuntu}
ubuntu_security=${UBUNTU_SECURITY:-http://security.ubuntu.com/ubuntu}
suite=$(sed -n 's/^# ubuntu-suite: //p' "$containerfile")
python=$(sed -n 's/^# python: //p' "$containerfile")
os_image=localhost/standin-ubuntu:$suite
rebuild=${STANDIN_REBUILD:-0}

exists() { "$engine" image inspect "$1" > /dev/null 2>&1; }
# What the stand-in is made from; a change to any of it rebuilds the image.
digest=$(cd "$here" && cat build.sh "$release.Containerfile" $(find entrypoint -type f | sort) \
    | sha256sum | cut -c 1-16)
built_from() {
    "$engine" image inspect --format '{{ index .Config.Labels "standin.digest" }}' "$image" 2>/dev/null
}

if [ "$rebuild" = 1 ] || [ "$(built_from)" != "$digest" ]; then
    mkdir -p "$work"

    # 1. Ubuntu as its official image has it, plus what this host needs to
    #    reach PyPI: the host's extra CA certificates, trusted by pip too.
    #    That is a fact of the machine building it, so it lives here, never
    #    in the project's Dockerfile.
    if [ "$rebuild" = 1 ] || ! exists "$os_image"; then
        echo "standin: Ubuntu $suite root file system"
        components="main universe"
        mmdebstrap --variant=minbase --include=apt,ca-certificates --components="$components" \
            --customize-hook='cp -r /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
            --customize-hook='chroot "$1" update-ca-certificates' \
            --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"' \
            --customize-hook="printf '%s\n' 'deb $ubuntu_archive $suite $components' 'deb $ubuntu_archive $suite-updates $components' 'deb $ubuntu_security $suite-security $components' > \"\$1/etc/apt/sources.list\"" \
            "$suite" "$work/ubuntu-$suite.tar" \
            "deb [trusted=yes] $ubuntu_archive $suite $components" \
            "deb [trusted=yes] $ubuntu_archive $suite-updates $components" \
            "deb [trusted=yes] $ubuntu_security $suite-security $components"
        "$engine" import "$work/ubuntu-$suite.tar" "$os_image"
        rm "$work/ubuntu-$suite.tar"
    fi

    # 2. Triton as NVIDIA's image lays it out: /opt/tritonserver/{bin,lib,
    #    backends,caches}, the Python backend's stub for the image's Python.
    context=$work/context-$release
    rm -rf "$context"
    mkdir -p "$context/tritonserver/lib" "$work/wheel"
    wheel=$(ls "$work"/wheel/nvidia_pytriton-0.7.0-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            --platform manylinux_2_35_x86_64 -d "$work/wheel" "$pytriton"
        wheel=$(ls "$work"/wheel/nvidia_pytriton-0.7.0-*.whl | head -n 1)
    fi
    unpacked=$context/wheel
    python3 -m zipfile -e "$wheel" "$unpacked"
    server=$unpacked/pytriton/tritonserver
    cp -a "$server/bin" "$server/backends" "$server/caches" "$context/tritonserver/"
    find "$context/tritonserver" -name __pycache__ -prune -exec rm -rf {} +
    cp -a "$server/python_backend_stubs/$python/triton_python_backend_stub" \
        "$context/tritonserver/backends/python/"
    # The stub for Python 3.13 brings its own libpython; no other part uses it.
    find "$unpacked/nvidia_pytriton.libs" -name 'libpython*' -delete
    cp -a "$unpacked/nvidia_pytriton.libs/." "$context/tritonserver/lib/"
    chmod -R a+rX "$context/tritonserver"
    chmod a+x "$context/tritonserver/bin/tritonserver" \
        "$context/tritonserver/backends/python/triton_python_backend_stub"
    rm -rf "$unpacked"
    cp -a "$here/entrypoint" "$context/"

    # 3. NVIDIA's steps for this release.
    echo "standin: $image"
    "$engine" build --network host --build-arg "OS_IMAGE=$os_image" \
        --label "standin.digest=$digest" --file "$containerfile" --tag "$image" "$context"
    rm -rf "$context"
fi

# Everything Triton and the stub load must resolve inside the image.
"$engine" run --rm --network host --entrypoint /bin/bash "$image" -c '
    missing=$(ldd /opt/tritonserver/bin/tritonserver \
        /opt/tritonserver/backends/python/libtriton_python.so \
        /opt/tritonserver/backends/python/triton_python_backend_stub | grep "not found" || true)
    if [ -n "$missing" ]; then echo "standin: unresolved libraries: $missing" >&2; exit 1; fi'
echo "$image"
