# CUDA forward compatibility, as NVIDIA's images turn it on at start: when the
# host's driver is older than the image's CUDA, the compat libraries shipped
# in ${_CUDA_COMPAT_PATH}/lib.real go first on the loader path. The stand-in
# has no CUDA, so this only records what it found; an image whose ENTRYPOINT
# skips this script never sets the variable.
export CUDA_COMPAT_CHECKED="${_CUDA_COMPAT_PATH:-/usr/local/cuda/compat}"
if [ -d "${CUDA_COMPAT_CHECKED}/lib.real" ] && [ -e /proc/driver/nvidia/version ]; then
  ln -sfn "${CUDA_COMPAT_CHECKED}/lib.real" "${CUDA_COMPAT_CHECKED}/lib"
  echo "${CUDA_COMPAT_CHECKED}/lib" > /etc/ld.so.conf.d/00-cuda-compat.conf
  ldconfig
fi
