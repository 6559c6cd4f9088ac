# As NVIDIA's images do: without a driver, warn and mark the container CPU-only.
if [ ! -e /proc/driver/nvidia/version ]; then
  echo "WARNING: no NVIDIA driver was found; GPU functionality is not available."
  export NVIDIA_CPU_ONLY=1
fi
if [ "${NVIDIA_CPU_ONLY:-0}" = "1" ]; then
  export TRITON_SERVER_CPU_ONLY=1
fi
