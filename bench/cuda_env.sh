# Sourced by the CUDA benchmark scripts: puts the driver, NVRTC, cuBLAS and
# cuSOLVER on the library path (the toolkit's lib64, the driver's folder and
# the pip wheels torch uses, whichever exist), keeps the CUBIN cache in
# "$1/cubin" (seeded from .device-bin/cubin) and prints the GPU.
for d in /usr/local/cuda/lib64 /usr/local/nvidia/lib64 \
         "$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia/cu13/lib"; do
    if [ -d "$d" ]; then LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; fi
done
export LD_LIBRARY_PATH
export GPTQ_CUBIN_CACHE="$1/cubin"
# CUBINs compiled on the CPU machine for this GPU, carried in .device-bin/cubin (the precompile example of
# crates/gptq-cuda): a build's first launch here then skips NVRTC (about a minute of device time per build).
if compgen -G ".device-bin/cubin/*.cubin" > /dev/null; then mkdir -p "$1/cubin"; cp .device-bin/cubin/*.cubin "$1/cubin/"; fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv || true
