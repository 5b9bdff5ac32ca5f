#!/usr/bin/env bash
# Nsight Compute on the decode kernels, from the directory build_pack.sh made: one launch of
# each kernel of a decode case (benches/cuda_decode.rs, `OUTLIER_ATTN_DECODE_CASES`), with the
# sections that say where a memory-bound kernel loses its bandwidth (speed of light, memory
# workload, occupancy, warp stall reasons, launch statistics). 90 s in all.
# Usage: ./profile.sh [CASE...]   (default: dense and 16-token-paged decode, 32/8 heads,
# d = 128, B = 4, Nk = 32k). Reports go to $RES (./results/profile_*.txt). Prepared on
# 2026-12-04 when the device lease ran out: not yet run on a GPU.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
RES=${RES:-$HERE/results}
mkdir -p "$RES"
# shellcheck source=common.sh
. "$HERE/common.sh"
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu "$CUDA_HOME"/nsight-compute*/ncu 2>/dev/null | head -1)
if [ -z "$ncu" ]; then
  echo "no ncu (Nsight Compute) on this host: nothing profiled"
  exit 0
fi
cases=("$@")
[ ${#cases[@]} -eq 0 ] && cases=(decode/dense/h32-8/d128/b4/nk32768 decode/paged16/h32-8/d128/b4/nk32768)
for c in "${cases[@]}"; do
  out="$RES/profile_$(echo "$c" | tr '/' '_').txt"
  OUTLIER_ATTN_DECODE_CASES=$c timeout 45 "$ncu" --launch-count 2 -k 'regex:attention|combine' \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
    --section WarpStateStats --section LaunchStats --section SchedulerStats \
    ./bin/cuda_decode >"$out" 2>&1
  rc=$?
  echo "$c: ncu rc=$rc ($out)"
  [ $rc -eq 0 ] || status=1
  grep -E "^  [a-z_]+\(|Memory Throughput|DRAM Throughput|Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Block Limit|Grid Size|Stall|Warp Cycles Per Issued|Issued Warp|No Eligible" "$out" | head -60
done
exit $status
