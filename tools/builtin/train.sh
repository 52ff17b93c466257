#!/usr/bin/env bash
# Trains the project's built-in model (models/builtin) from nothing, with the project's own
# commands and the configs in configs/builtin, on the CPU:
#
#   1. the demo dataset           pixart demo-data        data/demo64 (20000 images, 64 px)
#   2. the tokenizer              pixart train-tokenizer  models/builtin/tokenizer
#   3. the frozen text encoder    pixart init text-encoder models/builtin/text_encoder (seed 0)
#   4. the VAE                    pixart train-vae        runs/vae -> models/builtin/vae
#   5. the training features      pixart extract          data/features64
#   6. the transformer            pixart train            runs/builtin (3000 steps at 1e-3), then
#                                                         runs/builtin-ft (1000 at 3e-4), then runs/builtin-ft2
#                                                         (1500 at 1.5e-4), then runs/builtin-ft3 (1500 at
#                                                         7.5e-5), then runs/builtin-obj (1000 at 1e-4 on a
#                                                         cosine, object-weighted ε-MSE)
#                                                         -> models/builtin/transformer
#   7. the evaluation             pixart eval demo        docs/images/builtin-eval.png
#
# Every stage is resumable: run the script again after an interruption and finished stages are
# skipped, the VAE and transformer runs continue from their last checkpoint (bit for bit).
# Times on the 2-core Zen 4 machine: stage 4 ≈ 48 min, 5 ≈ 3 min, 6 ≈ 58 + 18 + 31 + 25 + 15 min (docs/builtin-model.md).
#
#   tools/builtin/train.sh            # everything
#   PIXART=/path/to/pixart tools/builtin/train.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ -z "${PIXART:-}" ]]; then
    cargo build --release -p pixart-cli
    PIXART=target/release/pixart
fi
out=models/builtin
data=data/demo64
features=data/features64

step() { printf '\n== %s\n' "$*"; }

step "1. demo dataset ($data)"
"$PIXART" demo-data --out "$data" --size 64

step "2. tokenizer"
"$PIXART" train-tokenizer --data "$data/train.jsonl" --vocab-size 256 --out "$out/tokenizer"

step "3. text encoder (frozen random T5, seed 0)"
"$PIXART" init text-encoder --config configs/builtin/text_encoder.json --seed 0 --out "$out/text_encoder"

step "4. VAE"
if [[ ! -f runs/vae/vae/diffusion_pytorch_model.safetensors ]]; then
    resume=()
    [[ -f runs/vae/checkpoint.safetensors ]] && resume=(--resume)
    "$PIXART" train-vae --config configs/builtin/vae.toml "${resume[@]}"
fi
mkdir -p "$out/vae" "$out/scheduler"
cp runs/vae/vae/config.json runs/vae/vae/diffusion_pytorch_model.safetensors "$out/vae/"
cp configs/builtin/scheduler_config.json "$out/scheduler/scheduler_config.json"

step "5. features"
"$PIXART" extract --data "$data/train.jsonl" --vae "$out/vae" --text-encoder "$out/text_encoder" \
    --tokenizer "$out/tokenizer" --out "$features" --resolution 64 --max-length 32

step "6. transformer"
train() { # config, run folder
    if [[ ! -f "$2/transformer/diffusion_pytorch_model.safetensors" ]]; then
        resume=()
        [[ -f "$2/checkpoints/latest" ]] && resume=(--resume)
        "$PIXART" train --config "$1" "${resume[@]}"
    fi
}
train configs/builtin/transformer.toml runs/builtin
train configs/builtin/transformer-ft.toml runs/builtin-ft
train configs/builtin/transformer-ft2.toml runs/builtin-ft2
train configs/builtin/transformer-ft3.toml runs/builtin-ft3
train configs/builtin/transformer-obj.toml runs/builtin-obj
mkdir -p "$out/transformer"
cp runs/builtin-obj/transformer/config.json runs/builtin-obj/transformer/diffusion_pytorch_model.safetensors \
    "$out/transformer/"
# Last: with model_index.json the folder is a complete pipeline, and `pixart generate` takes it.
cp configs/builtin/model_index.json "$out/model_index.json"

step "7. evaluation"
mkdir -p docs/images
"$PIXART" eval demo --model "$out" --data "$data/eval.jsonl" --out docs/images/builtin-eval.png \
    --json runs/builtin-eval.json
du -sh "$out"
