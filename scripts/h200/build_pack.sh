#!/usr/bin/env bash
# Builds the CUDA parity test and the CUDA benchmark (release, stripped) on a machine without a
# GPU and packs them with run.sh and compare.py for the H200 host, which has no Rust and no
# network. Usage: scripts/h200/build_pack.sh [OUT_DIR]   (default target/h200-pack)
# Then copy OUT_DIR (or OUT_DIR.tar.gz) to the GPU host and run `./run.sh` there, and
# `./decode.sh` for the decode bandwidth (a separate 5-minute budget).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/h200-pack}
rm -rf "$OUT"
mkdir -p "$OUT/bin"

executable() {  # the executables cargo reports in its JSON messages
  grep -o '"executable":"[^"]*"' | sed 's/"executable":"\(.*\)"/\1/'
}
test_bin=$(cargo test --release --features cuda --test cuda_parity --no-run --message-format=json | executable)
bench_bin=$(cargo bench --features cuda --bench cuda --no-run --message-format=json | executable)
decode_bin=$(cargo bench --features cuda --bench cuda_decode --no-run --message-format=json | executable)
cp "$test_bin" "$OUT/bin/cuda_parity"
cp "$bench_bin" "$OUT/bin/cuda_bench"
cp "$decode_bin" "$OUT/bin/cuda_decode"
strip "$OUT/bin/cuda_parity" "$OUT/bin/cuda_bench" "$OUT/bin/cuda_decode"
cp scripts/h200/run.sh scripts/h200/compare.py scripts/h200/decode.sh scripts/h200/decode_compare.py "$OUT/"
chmod +x "$OUT/run.sh" "$OUT/decode.sh"

bytes=$(du -cb "$OUT"/bin/* | tail -1 | cut -f1)
echo "packed $OUT: $(ls "$OUT"/bin | tr '\n' ' ')($((bytes / 1024 / 1024)) MiB)"
if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
  echo "error: binaries exceed 64 MiB" >&2
  exit 1
fi
tar -C "$(dirname "$OUT")" -czf "$OUT.tar.gz" "$(basename "$OUT")"
echo "archive: $OUT.tar.gz"
