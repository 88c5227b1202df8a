#!/bin/bash
# Instructions per byte of text encoded (callgrind), the reproducible speed measure of
# docs/performance.md: `encode_bench MODEL FILE 1` does 2 cold + 2 warm one-thread encodes of FILE
# (NUL-separated texts, e.g. from `scripts/bench_tokenizer_classes.py --dump DIR`); the same run on
# an empty file (model loads only) is subtracted and the rest divided by 4x the file size.
#
#   cargo build --release --example encode_bench
#   scripts/tokenizer_instr_per_byte.sh target/release/examples/encode_bench MODEL FILE...
set -euo pipefail
bin=$1 model=$2; shift 2
empty=$(mktemp)
trap 'rm -f "$empty"' EXIT
ir() {
    valgrind --tool=callgrind --dump-instr=no --callgrind-out-file=/dev/null "$bin" "$model" "$1" 1 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
e=$(ir "$empty")
for f in "$@"; do
    i=$(ir "$f")
    s=$(stat -c %s "$f")
    python3 -c "print('$(basename "$f")', round(($i - $e) / (4 * $s), 2))"
done
