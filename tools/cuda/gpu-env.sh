# Source this on the GPU machine before running a CUDA build of pixart:
#   source tools/cuda/gpu-env.sh && ./pixart ...
# It puts the CUDA 13 libraries the binary was linked against on LD_LIBRARY_PATH, taking them
# from (in order) $PIXART_CUDA_LIBS, the pip wheels of the python3 there (PyTorch cu130 brings
# nvidia-cublas, nvidia-curand, nvidia-cuda-nvrtc, nvidia-cuda-runtime), and /usr/local/cuda.
# libcuda.so.1 comes from the driver (ldconfig or /usr/local/nvidia/lib64). See docs/cuda.md.

_pixart_need="libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13"
_pixart_dirs=""
_pixart_add() { case ":$_pixart_dirs:" in *":$1:"*) ;; *) _pixart_dirs="${_pixart_dirs:+$_pixart_dirs:}$1" ;; esac; }

for _lib in $_pixart_need; do
  _found=""
  for _d in ${PIXART_CUDA_LIBS:-} \
      $(python3 -c 'import site,sys; [print(p + "/nvidia/cu13/lib") for p in site.getsitepackages() + [site.getusersitepackages()]]' 2>/dev/null) \
      /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    if [ -e "$_d/$_lib" ]; then _found="$_d"; break; fi
  done
  if [ -n "$_found" ]; then _pixart_add "$_found"; else echo "gpu-env: $_lib not found" >&2; fi
done
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  for _d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib64; do
    if [ -e "$_d/libcuda.so.1" ]; then _pixart_add "$_d"; break; fi
  done
fi
export LD_LIBRARY_PATH="$_pixart_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "gpu-env: LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
unset _pixart_need _pixart_dirs _lib _found _d
unset -f _pixart_add
