#!/usr/bin/env bash
# The WGSL before/after table of BENCHMARKS.md: this tree's kernels against an older build of
# the crate, case by case in one run (old and new alternate, so that both see the same machine
# load), next to PyTorch's CPU SDPA when a Python with torch is given.
#
#   scripts/wgsl_speed.sh OLD_TREE [PYTHON]
#
# OLD_TREE: a checkout of the older commit (e.g. `git worktree add /tmp/old 292957f`); both trees
# get `cargo build --release --features wgpu --example wgsl_speed` (examples/wgsl_speed.rs is
# copied into the old tree if it lacks it). PYTHON: e.g. /tmp/venv-torch/bin/python.
set -euo pipefail
old=${1:?usage: scripts/wgsl_speed.sh OLD_TREE [PYTHON]}
python=${2:-}
here=$(cd "$(dirname "$0")/.." && pwd)
[ -e "$old/examples/wgsl_speed.rs" ] || cp "$here/examples/wgsl_speed.rs" "$old/examples/"
(cd "$here" && cargo build -q --release --features wgpu --example wgsl_speed)
(cd "$old" && cargo build -q --release --features wgpu --example wgsl_speed)
new_bin="$here/target/release/examples/wgsl_speed"
old_bin="$old/target/release/examples/wgsl_speed"
reps=${REPS:-3}
echo "| d | dtype | N | case | old ms | new ms | speed-up |"
echo "| ---: | --- | ---: | --- | ---: | ---: | ---: |"
row() {
    local o n
    o=$("$old_bin" "$@" "$reps")
    n=$("$new_bin" "$@" "$reps")
    echo "| $1 | $2 | $3 | $4 $5 | $o | $n | $(awk "BEGIN { printf \"%.1fx\", $o / $n }") |"
}
for d in 64 128; do
    for dtype in f32 f16; do
        for n in 512 2048; do
            row "$d" "$dtype" "$n" softmax off
        done
    done
done
for case in "softmax heads" "softmax heads_and_keys" "clipped off"; do
    # shellcheck disable=SC2086
    row 64 f16 512 $case
done
if [ -n "$python" ]; then
    echo
    "$python" "$here/scripts/torch_sdpa_cpu.py"
fi
