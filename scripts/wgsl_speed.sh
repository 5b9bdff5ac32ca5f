#!/usr/bin/env bash
# The WGSL before/after table of BENCHMARKS.md: this tree's kernels against an older build of
# the crate, case by case in one run (the builds alternate row by row, so that they see the
# same machine load), next to PyTorch's CPU SDPA when a Python with torch is given.
#
#   scripts/wgsl_speed.sh OLD_TREE [PYTHON]
#
# OLD_TREE: a checkout of the older commit (e.g. `git worktree add /tmp/old 292957f`); every
# tree gets `cargo build --release --features wgpu --example wgsl_speed` (examples/wgsl_speed.rs
# is copied into a tree that lacks it). MID_TREE=DIR in the environment adds a third build (say
# main before a change) as a middle column. PYTHON: e.g. /tmp/venv-torch/bin/python. REPS=N
# sets the timed runs per case (the median is reported; default 3).
set -euo pipefail
old=${1:?usage: scripts/wgsl_speed.sh OLD_TREE [PYTHON]}
python=${2:-}
mid=${MID_TREE:-}
here=$(cd "$(dirname "$0")/.." && pwd)
build() {
    [ -e "$1/examples/wgsl_speed.rs" ] || cp "$here/examples/wgsl_speed.rs" "$1/examples/"
    (cd "$1" && cargo build -q --release --features wgpu --example wgsl_speed)
}
build "$here"
build "$old"
[ -z "$mid" ] || build "$mid"
new_bin="$here/target/release/examples/wgsl_speed"
old_bin="$old/target/release/examples/wgsl_speed"
mid_bin="$mid/target/release/examples/wgsl_speed"
reps=${REPS:-3}
ratio() { awk "BEGIN { printf \"%.2fx\", $1 / $2 }"; }
if [ -z "$mid" ]; then
    echo "| d | dtype | N | case | old ms | new ms | old/new |"
    echo "| ---: | --- | ---: | --- | ---: | ---: | ---: |"
else
    echo "| d | dtype | N | case | old ms | mid ms | new ms | old/new | mid/new |"
    echo "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
fi
row() {
    local o m n
    o=$("$old_bin" "$@" "$reps")
    if [ -z "$mid" ]; then
        n=$("$new_bin" "$@" "$reps")
        echo "| $1 | $2 | $3 | $4 $5 | $o | $n | $(ratio "$o" "$n") |"
    else
        m=$("$mid_bin" "$@" "$reps")
        n=$("$new_bin" "$@" "$reps")
        echo "| $1 | $2 | $3 | $4 $5 | $o | $m | $n | $(ratio "$o" "$n") | $(ratio "$m" "$n") |"
    fi
}
for d in 64 128; do
    for dtype in f32 f16; do
        for n in 512 2048; do
            row "$d" "$dtype" "$n" softmax off
        done
    done
done
# The statistics' and ClippedSoftmax's cost over the first row of each dtype.
for dtype in f32 f16; do
    for case in "softmax heads" "softmax heads_and_keys" "clipped off"; do
        # shellcheck disable=SC2086
        row 64 "$dtype" 512 $case
    done
done
if [ -n "$python" ]; then
    echo
    "$python" "$here/scripts/torch_sdpa_cpu.py"
fi
