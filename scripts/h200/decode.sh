#!/usr/bin/env bash
# Decode bandwidth on the GPU host, from the directory build_pack.sh made (after or instead of
# run.sh; each step has a time limit, 300 s in all):
#   1. bin/cuda_decode (benches/cuda_decode.rs): the device's copy bandwidth, then decode at
#      bf16, Hq/Hkv = 64/8 and 32/8, d = 64/128, B = 1..64, Nk = 4k..128k, dense and paged
#      (16- and 64-token pages), and a gpt-oss layer (sinks, 128-token window) at 8k and 32k;
#   2. decode_compare.py: PyTorch SDPA on the same caches gathered dense, FlashInfer's paged
#      decode if it imports, and one table of K/V GB/s as a fraction of the copy bandwidth.
# A piece that is missing (a layout this build refuses, PyTorch, FlashInfer, memory) is a
# line in the table saying so, never the end of the run. Results go to ./results/decode*.
# Usage: ./decode.sh [--quick]   (--quick: B <= 4, Nk <= 32k; a minute)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
RES=${RES:-$HERE/results}
mkdir -p "$RES"
# shellcheck source=common.sh
. "$HERE/common.sh"
[ "${1:-}" = "--quick" ] && export OUTLIER_ATTN_DECODE_QUICK=1
OUT="$RES/decode.jsonl"
rm -f "$OUT"
if [ -x ./bin/cuda_decode ]; then
  OUTLIER_ATTN_BENCH_OUT="$OUT" timeout 200 ./bin/cuda_decode >"$RES/decode_bench.log" 2>&1
  rc=$?
  echo "cuda_decode rc=$rc (results/decode_bench.log)"
  [ $rc -eq 0 ] || status=1
else
  echo "bin/cuda_decode missing: rebuild the pack (scripts/h200/build_pack.sh)"
  status=1
fi
if [ -s "$OUT" ]; then
  timeout 100 python3 -u decode_compare.py "$OUT" >"$RES/decode_compare.log" 2>&1
  rc=$?
  echo "decode_compare rc=$rc (results/decode_compare.log)"
  [ $rc -eq 0 ] || status=1
  cat "$RES/decode_compare.log"
else
  echo "no decode results to compare"
  tail -20 "$RES/decode_bench.log" 2>/dev/null || true
fi
exit $status
