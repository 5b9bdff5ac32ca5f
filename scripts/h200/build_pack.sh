#!/usr/bin/env bash
# Builds the CUDA parity test and the CUDA benchmark (release, stripped) on a machine without a
# GPU and packs them with run.sh and compare.py for the H200 host, which has no Rust and no
# network. Usage: scripts/h200/build_pack.sh [OUT_DIR]   (default target/h200-pack)
# Then copy OUT_DIR (or OUT_DIR.tar.gz) to the GPU host and run `./run.sh` there, and
# `./decode.sh` for the decode bandwidth (a separate 5-minute budget), `./wgsl.sh` for the WGSL
# backend on the host's own Vulkan driver (with the Vulkan loader of this machine, packed).
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
wgsl_tests=$(cargo test --release --features wgpu --test wgsl_parity --test wgsl_split --no-run --message-format=json | executable)
wgsl_tools=$(cargo build --release --features wgpu,cli --bin outlier-attn --example wgsl_decode --message-format=json | executable)
cp "$test_bin" "$OUT/bin/cuda_parity"
for f in $wgsl_tests $wgsl_tools; do  # cargo's names carry a hash: keep the target's name
  cp "$f" "$OUT/bin/$(basename "$f" | sed 's/-[0-9a-f]\{16\}$//')"
done
mkdir -p "$OUT/lib"
vulkan=$(ls /usr/lib/x86_64-linux-gnu/libvulkan.so.1 2>/dev/null || true)
if [ -n "$vulkan" ]; then
  cp "$(readlink -f "$vulkan")" "$OUT/lib/libvulkan.so.1"
else
  echo "warning: no libvulkan.so.1 here (Debian libvulkan1): wgsl.sh will use the host's, if any" >&2
fi
cp "$bench_bin" "$OUT/bin/cuda_bench"
cp "$decode_bin" "$OUT/bin/cuda_decode"
strip "$OUT"/bin/*
cp scripts/h200/run.sh scripts/h200/compare.py scripts/h200/decode.sh scripts/h200/decode_compare.py \
  scripts/h200/wgsl.sh scripts/h200/profile.sh scripts/h200/common.sh "$OUT/"
chmod +x "$OUT"/*.sh

bytes=$(du -cb "$OUT"/bin/* "$OUT"/lib/* 2>/dev/null | tail -1 | cut -f1)
echo "packed $OUT: $(ls "$OUT"/bin | tr '\n' ' ')($((bytes / 1024 / 1024)) MiB)"
if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
  echo "error: binaries exceed 64 MiB" >&2
  exit 1
fi
tar -C "$(dirname "$OUT")" -czf "$OUT.tar.gz" "$(basename "$OUT")"
echo "archive: $OUT.tar.gz"
