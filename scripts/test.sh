#!/usr/bin/env bash
# Runs the whole test suite: static checks (ruff, mypy, clippy), the Rust core's tests, then pytest
# (which uses the installed package). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff =="
python -m ruff check .
echo "== mypy (python/baichuan) =="
python -m mypy
echo "== cargo clippy -D warnings (rust_tokenizer) =="
cargo clippy --release --manifest-path rust_tokenizer/Cargo.toml --all-features --all-targets -- -D warnings
# the version-specific build (no "abi3" feature; see pyproject.toml) has code of its own in py.rs
cargo clippy --release --manifest-path rust_tokenizer/Cargo.toml --features python --lib -- -D warnings
echo "== cargo test (rust_tokenizer) =="
cargo test --release --manifest-path rust_tokenizer/Cargo.toml
echo "== pytest =="
python -m pytest -q tests "$@"
