#!/usr/bin/env bash
# Runs the whole test suite: the Rust core's tests, then pytest (which uses the installed package).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo test (rust_tokenizer) =="
cargo test --release --manifest-path rust_tokenizer/Cargo.toml
echo "== pytest =="
python -m pytest -q tests "$@"
