# Shared by the GPU host's scripts (sourced after HERE and RES are set): the toolkit's NVRTC
# on the library path, the module cache, and `step`.

# NVRTC: cudarc (built for CUDA 12.x names) loads libnvrtc.so or libnvrtc.so.12. The toolkit's
# own NVRTC matches the driver (a newer one makes code this driver may refuse); link it as
# lib/libnvrtc.so and keep its directory on the path for libnvrtc-builtins. Else the NVRTC
# wheel PyTorch brought. Sets `nvrtc` (empty when none was found).
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$HERE/lib"
nvrtc=$(ls "$CUDA_HOME"/lib64/libnvrtc.so.* "$CUDA_HOME"/targets/*/lib/libnvrtc.so.* 2>/dev/null | grep -v builtins | head -1 || true)
if [ -z "$nvrtc" ]; then
  site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
  nvrtc=$(ls "$site"/nvidia/cu13/lib/libnvrtc.so.* "$site"/nvidia/cuda_nvrtc/lib/libnvrtc.so.* 2>/dev/null | grep -v builtins | head -1 || true)
fi
if [ -n "$nvrtc" ]; then
  ln -sf "$nvrtc" "$HERE/lib/libnvrtc.so"
  export LD_LIBRARY_PATH="$HERE/lib:$(dirname "$nvrtc"):${LD_LIBRARY_PATH:-}"
fi
export PATH="$CUDA_HOME/bin:$PATH"
export OUTLIER_ATTN_CACHE_DIR="$HERE/cache"

status=0
step() {  # step NAME LIMIT_SECONDS COMMAND...: its log in $RES/NAME.log, a line of its result
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$RES/$name.log" 2>&1
  local rc=$?
  printf '%-22s rc=%-3s %4ss  (results/%s.log)\n' "$name" "$rc" "$((SECONDS - t0))" "$name"
  [ $rc -eq 0 ] || status=1
}
