#!/bin/sh
# The image's lock of LAYER (serve or models) for the base image's python3, or
# a failure naming the fix. Used by the Dockerfile's install steps.
set -eu
python_version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
lock="$(dirname "$0")/$1-py${python_version}.txt"
if [ ! -f "${lock}" ]; then
    echo "no ${lock}: add Python ${python_version} to LOCK_PYTHONS and run make lock" >&2
    exit 1
fi
echo "${lock}"
