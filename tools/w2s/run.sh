#!/usr/bin/env bash
# The weak-to-strong study at small scale (docs/weak-to-strong.md), after tools/builtin/train.sh
# (it needs the demo dataset, the built-in tokenizer, text encoder and VAE = VAE B, and the
# 64 px features):
#
#   1. VAE A                    pixart train-vae  configs/w2s/vae-a.toml         runs/w2s/vae-a
#   2. 32 px features (VAE A)   pixart extract                                    data/features32a
#   3. (i) weak                 pixart train      configs/w2s/weak.toml           runs/w2s/weak
#   4. (ii) strong from weak    pixart train      configs/w2s/strong-from-weak.toml
#   5. (iii) strong, scratch    pixart train      configs/w2s/strong-scratch.toml
#   6. KV ablation: (ii) without KV compression   configs/w2s/strong-from-weak-nokv.toml
#   7. accuracy curves          pixart eval curve                                 docs/images/w2s-*.png
#
# Resumable: finished stages are skipped, interrupted training runs continue from their last
# checkpoint.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ -z "${PIXART:-}" ]]; then
    cargo build --release -p pixart-cli
    PIXART=target/release/pixart
fi
b=models/builtin
eval_data=data/demo64/eval.jsonl
for need in "$b/vae/config.json" data/features64/index.json "$eval_data"; do
    [[ -e "$need" ]] || { echo "missing $need: run tools/builtin/train.sh first" >&2; exit 2; }
done

step() { printf '\n== %s\n' "$*"; }

# Trains with config $1 into run folder $2 unless it has finished; resumes an interrupted run.
train() {
    [[ -f "$2/transformer/diffusion_pytorch_model.safetensors" ]] && return 0
    local resume=()
    [[ -f "$2/checkpoints/latest" ]] && resume=(--resume)
    "$PIXART" train --config "$1" "${resume[@]}"
}

step "1. VAE A"
if [[ ! -f runs/w2s/vae-a/vae/diffusion_pytorch_model.safetensors ]]; then
    resume=()
    [[ -f runs/w2s/vae-a/checkpoint.safetensors ]] && resume=(--resume)
    "$PIXART" train-vae --config configs/w2s/vae-a.toml "${resume[@]}"
fi
mkdir -p runs/w2s/base-a
for c in tokenizer text_encoder scheduler; do
    ln -sfn "$PWD/$b/$c" "runs/w2s/base-a/$c"
done
ln -sfn "$PWD/runs/w2s/vae-a/vae" runs/w2s/base-a/vae
cp "$b/model_index.json" runs/w2s/base-a/

step "2. 32 px features through VAE A"
"$PIXART" extract --data data/demo64/train.jsonl --vae runs/w2s/base-a/vae --text-encoder "$b/text_encoder" \
    --tokenizer "$b/tokenizer" --out data/features32a --resolution 32 --max-length 32

step "3. (i) weak";                 train configs/w2s/weak.toml runs/w2s/weak
step "4. (ii) strong from weak";    train configs/w2s/strong-from-weak.toml runs/w2s/strong-from-weak
step "5. (iii) strong from scratch"; train configs/w2s/strong-scratch.toml runs/w2s/strong-scratch
step "6. KV ablation";              train configs/w2s/strong-from-weak-nokv.toml runs/w2s/strong-from-weak-nokv

step "7. accuracy curves"
mkdir -p docs/images
"$PIXART" eval curve --run runs/w2s/weak --caption short --data "$eval_data" \
    --out docs/images/w2s-weak.png --json runs/w2s/weak-curve.json
"$PIXART" eval curve --run runs/w2s/strong-from-weak --run runs/w2s/strong-scratch \
    --run runs/w2s/strong-from-weak-nokv --attribute all,color,shape,position --data "$eval_data" \
    --out docs/images/w2s.png --json runs/w2s/curve.json --loss-out docs/images/w2s-loss.png
