#!/usr/bin/env bash
# The WGSL backend on the GPU host's own Vulkan driver, from the directory build_pack.sh made
# (it carries the Vulkan loader, lib/libvulkan.so.1, since the host may have none):
#   1. finds the NVIDIA Vulkan driver (an ICD file the image has, or libGLX_nvidia.so.0 with an
#      ICD file written here) and says what `outlier-attn info` sees;
#   2. issue 14's decode (B = 4, Nq = 1, Hq = 32, Hkv = 8, d = 128, Nk = 8 192, f16; dense and
#      16-token pages) unsplit and with split-KV, side by side (examples/wgsl_decode.rs);
#   3. the WGSL parity suites (tests/wgsl_parity.rs, tests/wgsl_split.rs) on that adapter.
# Each step has a time limit, 170 s in all. Where the host has no Vulkan driver for the GPU, it
# says so and stops (exit 0: nothing of the crate failed). Results go to $RES (./results).
# The H200 image of 2026-12-04 has the ICD file, but its libGLX_nvidia.so.0 gives the loader
# no vkCreateInstance (a compute-only container): there it stops after `outlier-attn info`.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
RES=${RES:-$HERE/results}
mkdir -p "$RES" "$HERE/lib"
export LD_LIBRARY_PATH="$HERE/lib:${LD_LIBRARY_PATH:-}"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

echo "== WGSL on the host's Vulkan driver"
icd=""
for f in /usr/share/vulkan/icd.d/nvidia*.json /etc/vulkan/icd.d/nvidia*.json; do
  [ -e "$f" ] && icd=$f && break
done
if [ -z "$icd" ]; then
  glx=$(ldconfig -p 2>/dev/null | grep -o '/[^ ]*libGLX_nvidia.so.0' | head -1)
  [ -z "$glx" ] && glx=$(ls /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 /usr/lib64/libGLX_nvidia.so.0 2>/dev/null | head -1)
  if [ -n "$glx" ]; then
    icd="$HERE/lib/nvidia_icd.json"
    printf '{"file_format_version":"1.0.0","ICD":{"library_path":"%s","api_version":"1.3"}}\n' "$glx" >"$icd"
  fi
fi
if [ -z "$icd" ]; then
  echo "no NVIDIA Vulkan driver on this host (no ICD file, no libGLX_nvidia.so.0): WGSL not run"
  ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1 | head -5
  exit 0
fi
export VK_ICD_FILENAMES=$icd
echo "ICD: $icd"
# shellcheck source=common.sh
. "$HERE/common.sh"  # for `step`; the WGSL steps need no NVRTC
step wgsl_info 15 ./bin/outlier-attn info
grep -i "wgsl" "$RES/wgsl_info.log" | head -5
if ! grep -qi "nvidia" "$RES/wgsl_info.log"; then
  echo "the adapter found is not the GPU; the WGSL steps are skipped"
  exit 0
fi
export WGPU_ADAPTER_NAME=nvidia
step wgsl_decode 40 ./bin/wgsl_decode 8192 9 f16 1024
step wgsl_decode_auto 25 ./bin/wgsl_decode 8192 9 f16 auto
OUTLIER_ATTN_REQUIRE=wgsl PROPTEST_CASES=32 step wgsl_split 30 ./bin/wgsl_split
OUTLIER_ATTN_REQUIRE=wgsl PROPTEST_CASES=32 step wgsl_parity 60 ./bin/wgsl_parity
echo "== WGSL decode (ms, median of 9)"
cat "$RES/wgsl_decode.log" "$RES/wgsl_decode_auto.log"
echo "== WGSL parity"
grep -hE "^test .*(FAILED|ok)$|test result" "$RES/wgsl_split.log" "$RES/wgsl_parity.log" | grep -vE " ok$" || true
grep -h -A 15 "panicked" "$RES/wgsl_split.log" "$RES/wgsl_parity.log" | head -60 || true
exit $status
