#!/usr/bin/env bash
# A full-size PixArt-Σ 1024 px pipeline folder with random weights, written by `pixart init` (no
# Python, no download): the XL/2 transformer (tools/device/random-pipeline/transformer.json,
# PixArt-Sigma-XL-2-1024-MS's config), the SDXL VAE (vae.json) and a T5 encoder of XXL's width
# with 2 of its 24 layers (text_encoder.json: the text features have the real shape, the folder
# stays about 5 GB), with the built-in model's tokenizer and PixArt-Σ's scheduler config. For
# timing `pixart generate` end to end at 1024 px with real-size components; the images are noise.
#
#   tools/device/make-random-pipeline.sh PIXART_BINARY OUT_DIR [DTYPE]   (transformer dtype, default bf16)
set -euo pipefail
pix=${1:?usage: make-random-pipeline.sh PIXART_BINARY OUT_DIR [DTYPE]}
out=${2:?usage: make-random-pipeline.sh PIXART_BINARY OUT_DIR [DTYPE]}
dtype=${3:-bf16}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cfg="$here/random-pipeline"
mkdir -p "$out"
"$pix" init transformer --config "$cfg/transformer.json" --dtype "$dtype" --out "$out/transformer"
"$pix" init vae --config "$cfg/vae.json" --out "$out/vae"
"$pix" init text-encoder --config "$cfg/text_encoder.json" --out "$out/text_encoder"
for part in tokenizer scheduler; do
  rm -rf "${out:?}/$part" && cp -r "$repo/models/builtin/$part" "$out/$part"
done
cp "$repo/models/builtin/model_index.json" "$out/model_index.json"
du -sh "$out"
