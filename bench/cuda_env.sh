# Sourced by the CUDA benchmark scripts: puts the driver, NVRTC, cuBLAS and
# cuSOLVER on the library path (the toolkit's lib64, the driver's folder and
# the pip wheels torch uses, whichever exist), keeps the CUBIN cache in
# "$1/cubin" and prints the GPU.
for d in /usr/local/cuda/lib64 /usr/local/nvidia/lib64 \
         "$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia/cu13/lib"; do
    if [ -d "$d" ]; then LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
done
export LD_LIBRARY_PATH
export GPTQ_CUBIN_CACHE="$1/cubin"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv || true
