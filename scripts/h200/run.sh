#!/usr/bin/env bash
# Runs on the GPU host (CUDA 13.0 driver and toolkit with compute-sanitizer, PyTorch; no Rust,
# no network), from the directory build_pack.sh made. In order, each with a time limit; the
# limits add up to 535 s, so the whole run stays under 10 minutes whatever happens:
#   1. module compile time: cold (empty disk cache), every specialisation in parallel (so no
#      later step waits for NVRTC), then warm (a second process start reads the disk cache);
#   2. the CUDA parity proptests (OUTLIER_ATTN_REQUIRE=cuda: a missing GPU fails): the suite
#      CI runs on the CPU emulator (tests/cuda_emu_parity.rs); where the two disagree, the GPU
#      is right;
#   3. compute-sanitizer memcheck and racecheck on the fixed cases, the bad device index
#      tensors (tests/cuda_parity.rs `cuda_contains_bad_index_tensors`) and the engine layouts;
#   4. the benchmark (benches/cuda.rs: bf16 and f16, d = 64/128, causal and not, N = 1k..16k,
#      B·N = 16k, 16 heads; then Heads, HeadsAndKeys and every variant at bf16, d = 128,
#      N = 4k), then PyTorch's scaled_dot_product_attention (flash) on the same shapes, and one
#      table of TFLOP/s, ratios and overheads over Softmax (compare.py).
# Results go to ./results/; the exit status is nonzero if any step failed.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE"
RES=${RES:-$HERE/results}
rm -rf "$RES" "$HERE/cache"
mkdir -p "$RES"

# shellcheck source=common.sh
. "$HERE/common.sh"
export OUTLIER_ATTN_REQUIRE=cuda

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $HERE/run.sh"
echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "nvrtc: ${nvrtc:-not found under $CUDA_HOME}"

echo "== steps"
step compile_cold 40 ./bin/cuda_parity --exact cuda_module_compile_time --nocapture
step compile_all 90 ./bin/cuda_parity --exact cuda_prepare_every_specialization --nocapture
step compile_warm 15 ./bin/cuda_parity --exact cuda_module_compile_time --nocapture
PROPTEST_CASES=64 step parity 150 ./bin/cuda_parity
# Under both sanitizers: the fixed cases, the bad device index tensors, and (four cases of the
# sweep) every engine layout, unsplit and split.
sanitized="cuda_fixed_cases cuda_contains_bad_index_tensors cuda_split_kv_runs_on_every_sequence_layout cuda_runs_every_engine_shaped_case"
# shellcheck disable=SC2086  # one test name per word
PROPTEST_CASES=4 step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 ./bin/cuda_parity --exact $sanitized
# shellcheck disable=SC2086
PROPTEST_CASES=4 step racecheck 45 compute-sanitizer --tool racecheck --error-exitcode 1 ./bin/cuda_parity --exact $sanitized
# 52 cases, each a warm-up, ten timed passes and criterion's 0.2 + 0.5 s.
OUTLIER_ATTN_BENCH_OUT="$RES/ours.jsonl" step bench 90 ./bin/cuda_bench --bench '^cuda/' --warm-up-time 0.2 --measurement-time 0.5
step compare 45 python3 compare.py "$RES/ours.jsonl"

echo "== compile time"
grep -h "outlier-attn-compile" "$RES"/compile_*.log || true
echo "== parity"
grep -E "^test |test result" "$RES/parity.log" || tail -20 "$RES/parity.log"
grep -A 25 "panicked" "$RES/parity.log" | head -80 || true
echo "== sanitizers"
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY" "$RES/memcheck.log" "$RES/racecheck.log" || true
echo "== benchmark"
cat "$RES/compare.log"
exit $status
