#!/usr/bin/env bash
# Regenerates fixtures/golden/data/ (see tools/golden/gen_data.py): the input dataset, then the
# tokenizer and T5 encoder our commands make from it, then transformers'/diffusers' expectations.
# Usage: tools/golden/gen_data.sh [PYTHON]   (default: the reference venv ../pixart-ref-venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-../pixart-ref-venv/bin/python}
OUT=fixtures/golden/data
rm -rf "$OUT"
"$PY" tools/golden/gen_data.py --phase inputs
cargo build -p pixart-cli
BIN=${CARGO_TARGET_DIR:-target}/debug/pixart
"$BIN" train-tokenizer --data "$OUT/train.jsonl" --vocab-size 64 --out "$OUT/tokenizer"
"$BIN" init text-encoder --config "$OUT/t5_config.json" --seed 0 --out "$OUT/text_encoder"
"$PY" tools/golden/gen_data.py --phase expected
