# Says plainly that this is the project's stand-in, not NVIDIA's image.
echo "Stand-in for nvcr.io/nvidia/tritonserver:${NVIDIA_TRITON_SERVER_VERSION}-py3 (Triton 2.51 from nvidia-pytriton, no CUDA)."
