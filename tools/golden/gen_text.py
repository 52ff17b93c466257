"""Golden files for the text side (T5 tokenizer + T5 v1.1 encoder), from transformers.

Writes, under fixtures/golden/text/:
- tokenizer/: a tiny SentencePiece Unigram model (`spiece.model`, trained here on generated
  English captions, T5 conventions: <pad> 0, </s> 1, <unk> 2, nmt_nfkc normalisation) plus the
  tokenizer_config.json / special_tokens_map.json a T5 tokenizer folder has (no tokenizer.json,
  like the PixArt repos).
- tokenizer_json/: the same tokenizer saved by transformers (`tokenizer.json` only, no spiece.model).
- tokens.json: prompts with the ids and attention mask of transformers' `T5Tokenizer`
  (max_length 300, padding "max_length", truncation, add_special_tokens), the raw sentencepiece
  ids for information, and diffusers' caption preprocessing (`text.lower().strip()`).
- text_encoder/: a tiny random `T5EncoderModel` (gated-gelu, every norm weight randomised) as
  config.json + model.safetensors.
- io.safetensors: input_ids / attention_mask (one long row, one row holding only `</s>`),
  last_hidden_state, the embedding output, every block's output, and
  the bucket of every relative position in -299..299 for the T5-XXL settings.

References: transformers 5.23.0 `models/t5/modeling_t5.py`, `models/t5/tokenization_t5.py`,
`convert_slow_tokenizer.py`; diffusers 0.42.1 `pipelines/pixart_alpha/pipeline_pixart_sigma.py`
(`_text_preprocessing` without bs4/ftfy).

Run with the reference venv:  /work/pyref/bin/python tools/golden/gen_text.py
"""
import io
import json
import os
import random
import shutil
import tempfile

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5Tokenizer

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "text")
MAX_LENGTH = 300


def captions(rng, n):
    subjects = ["a cat", "a dog", "an old man", "a young woman", "two children", "a red fox", "a robot",
                "a castle", "a lighthouse", "a bowl of ramen", "a vintage car", "a dragon", "a hummingbird",
                "an astronaut", "a sailboat", "a bakery", "a forest cabin", "a steam train", "a jellyfish",
                "a mountain lake", "a city street", "a wooden bridge", "a violin", "a sunflower field"]
    adjectives = ["tiny", "giant", "glowing", "rusty", "colorful", "misty", "golden", "frozen", "ancient",
                  "futuristic", "cozy", "dramatic", "serene", "neon", "watercolor", "detailed", "soft"]
    places = ["on a beach at sunset", "in a snowy forest", "under the stars", "in Tokyo at night",
              "on the moon", "in a busy market", "near a waterfall", "inside a library", "in the rain",
              "on a rooftop", "in a field of tulips", "by the sea", "in the desert", "at dawn", "in Paris"]
    styles = ["photorealistic", "oil painting", "studio lighting", "8k", "cinematic", "35mm photo",
              "digital art", "isometric", "pencil sketch", "highly detailed", "bokeh", "wide angle",
              "trending on artstation", "soft shadows", "HDR", "low poly", "pixel art"]
    extra = ["café au lait", "naïve façade", "jalapeño", "crème brûlée", "Zürich", "São Paulo", "smörgåsbord",
             "東京", "こんにちは", "北京", "grün", "1920x1080", "3.14", "100%", "$20", "#1", "e-mail",
             "don't", "it's", "(wow)", "[sic]", "A+B=C", "well...", "yes!", "why?", "C'est la vie"]
    words = ("portrait landscape umbrella reflection silhouette harbor meadow canyon glacier volcano orchard "
             "lantern carnival balcony cathedral windmill greenhouse submarine telescope compass typewriter "
             "porcelain velvet marble copper emerald sapphire crimson turquoise lavender amber ivory charcoal "
             "whispering dancing running sleeping flying swimming reading painting cooking gardening climbing "
             "quietly brightly gently wildly slowly beneath beyond between across through around against "
             "elephant giraffe penguin octopus butterfly squirrel tortoise peacock flamingo kangaroo panther "
             "bicycle motorcycle helicopter airship skateboard tractor caravan gondola rickshaw zeppelin "
             "strawberry pineapple avocado pumpkin croissant dumpling pretzel lollipop cupcake waffle "
             "thunderstorm blizzard rainbow aurora eclipse twilight midnight afternoon morning evening "
             "symmetrical surreal minimalist baroque gothic victorian cyberpunk steampunk impressionist").split()
    out = []
    for _ in range(n):
        s = f"{rng.choice(adjectives)} {rng.choice(subjects)} {rng.choice(places)}"
        if rng.random() < 0.7:
            s += " with " + " ".join(rng.sample(words, rng.randint(2, 5)))
        if rng.random() < 0.6:
            s += ", " + ", ".join(rng.sample(styles, rng.randint(1, 3)))
        if rng.random() < 0.3:
            s += " " + rng.choice(extra)
        if rng.random() < 0.3:
            s = s[0].upper() + s[1:]
        if rng.random() < 0.2:
            s += "."
        out.append(s)
    return out


EDGE_PROMPTS = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "a",
    "A",
    "hello",
    "Hello",
    "HELLO WORLD",
    "a cat",
    " a cat",
    "a cat ",
    "  a   cat  ",
    "a\tcat",
    "a\ncat",
    "a\r\ncat",
    "a \t\n cat",
    "\ta cat\n",
    "a  cat   on    a mat",
    "A cat on a beach at sunset, photorealistic, 8k.",
    "A small cactus with a happy face in the Sahara desert.",
    "café au lait, naïve façade, jalapeño, crème brûlée",
    "Zürich und São Paulo, grün",
    "東京の夜景",
    "北京 and 東京 at night",
    "こんにちは世界",
    "emoji 🐱🐶🚀 party 🎉",
    "🐱",
    "flags 🇫🇷 and families 👨‍👩‍👧",
    "digits 0123456789 and 3.14159 and 1920x1080",
    "prices: $20, €15, £9.99, ¥1000",
    "punctuation!!! ??? ... ,,, ;;; ::: --- ___",
    "quotes \"double\" 'single' “curly” ‘curly’ «guillemets»",
    "brackets (round) [square] {curly} <angle>",
    "math: a+b=c, x^2, 5*3/2, 100%, #1, @user, ~tilde, `code`, a|b, back\\slash",
    "fullwidth ＡＢＣ１２３ and ﬁ ligature and ½ fraction and ² superscript",
    "non-breaking\u00a0space and ideographic\u3000space and zero\u200bwidth",
    "combining e\u0301 vs precomposed é",
    "Ångström ÅÄÖ åäö Ææ Øø ß",
    "Ελληνικά και Русский текст",
    "العربية עברית",
    "हिन्दी ภาษาไทย 한국어",
    "mixed CASE Words And ALLCAPS and lowercase",
    "it's a dog's life, isn't it? don't you think so",
    "e-mail, well-known, state-of-the-art",
    "http://example.com/path?query=1&b=2",
    "user@example.com",
    "<extra_id_0> sentinel",
    "a </s> inside",
    "<pad> and <unk> tokens",
    "word<extra_id_5>word",
    "▁ metaspace char ▁▁ twice",
    "trailing spaces    ",
    "    leading spaces",
    "\u2028line separator\u2029paragraph",
    "control\x07bell and\x1bescape",
    "a" * 50,
    "ab " * 40,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]


def fuzz(rng, n):
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " ,.!?;:'\"-()[]{}/\\@#$%^&*+=<>|~`_",
        "   \t\n\r\u00a0\u3000\u2009",
        "éèêëàâäôöùûüçñÉÀÇÑßøåæœ",
        "東京北京日本語中文字漢こんにちはカタカナ한국어",
        "🐱🐶🚀🎉❤️✨🌸",
        "ＡＢＣａｂｃ１２３ﬁﬂ½²™©®",
        "▁",
    ]
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        s = "".join(rng.choice(rng.choice(pools)) for _ in range(k))
        out.append(s)
    return out


def train_spiece(rng, path):
    corpus = captions(rng, 600) + [p for p in EDGE_PROMPTS if p.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=512,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        character_coverage=0.9995,
        normalization_rule_name="nmt_nfkc",
        num_threads=1,
        minloglevel=2,
    )
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def write_tokenizer_folder(d):
    extra = [f"<extra_id_{i}>" for i in range(100)]
    special = {
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "additional_special_tokens": extra,
    }
    config = dict(special, extra_ids=100, model_max_length=512, tokenizer_class="T5Tokenizer",
                  clean_up_tokenization_spaces=True, sp_model_kwargs={}, legacy=True)
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)


def encode(tok, text, max_length):
    enc = tok(text, max_length=max_length, padding="max_length", truncation=True, add_special_tokens=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = sum(mask)
    assert mask == [1] * n + [0] * (max_length - n), text
    assert ids[n:] == [0] * (max_length - n), text
    assert ids[n - 1] == 1, text
    return ids[:n]


def main():
    rng = random.Random(1234)
    tok_dir = os.path.join(OUT, "tokenizer")
    json_dir = os.path.join(OUT, "tokenizer_json")
    for d in (tok_dir, json_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    spiece = os.path.join(tok_dir, "spiece.model")
    train_spiece(rng, spiece)
    write_tokenizer_folder(tok_dir)

    tok = T5Tokenizer.from_pretrained(tok_dir)
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "tokenizer.json"), json_dir)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if os.path.exists(os.path.join(tmp, name)):
                shutil.copy(os.path.join(tmp, name), json_dir)
    tok_json = T5Tokenizer.from_pretrained(json_dir)
    sp = spm.SentencePieceProcessor(model_file=spiece)

    long_caption = " ".join(captions(random.Random(7), 80))
    prompts = EDGE_PROMPTS + captions(random.Random(99), 120) + fuzz(random.Random(5), 200) + [
        long_caption,
        long_caption.upper(),
        " ".join(["word"] * 400),
        "🐱 " * 350,
    ]
    cases = []
    sp_differs = 0
    for text in prompts:
        ids = encode(tok, text, MAX_LENGTH)
        assert encode(tok_json, text, MAX_LENGTH) == ids, f"tokenizer.json differs on {text!r}"
        raw = tok(text, add_special_tokens=True)["input_ids"]
        case = {
            "text": text,
            "ids": ids,
            "untruncated_len": len(raw),
            "sp_ids": sp.encode(text) + [1],
            "preprocessed": text.lower().strip(),
        }
        if case["sp_ids"] != raw:
            sp_differs += 1
        cases.append(case)
    # A short max_length exercises truncation on ordinary prompts.
    short = [{"text": t, "max_length": 8, "ids": encode(tok, t, 8)} for t in prompts[:80]]
    n_trunc = sum(c["untruncated_len"] > MAX_LENGTH for c in cases)
    assert n_trunc >= 3, n_trunc
    with open(os.path.join(OUT, "tokens.json"), "w") as f:
        json.dump({
            "vocab_size": len(tok),
            "max_length": MAX_LENGTH,
            "cases": cases,
            "short_cases": short,
            "extra_id_0": tok.convert_tokens_to_ids("<extra_id_0>"),
            "extra_id_99": tok.convert_tokens_to_ids("<extra_id_99>"),
        }, f, ensure_ascii=False, indent=0)
    print(f"tokenizer: vocab {len(tok)} ({sp.get_piece_size()} pieces), {len(cases)} cases, "
          f"{n_trunc} truncated, sentencepiece differs from T5Tokenizer on {sp_differs}")

    # ---- encoder ----
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=3,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5EncoderModel(cfg).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
            elif name == "shared.weight":
                p.normal_(0.0, 1.0)
            else:  # (out, in) linear weights: unit-variance outputs
                p.normal_(0.0, p.shape[1] ** -0.5)
    enc_dir = os.path.join(OUT, "text_encoder")
    shutil.rmtree(enc_dir, ignore_errors=True)
    model.save_pretrained(enc_dir, safe_serialization=True)

    seq = 140  # > max_distance, so every bucket kind is used
    row0 = tok(long_caption, max_length=seq, padding="max_length", truncation=True)
    row1 = tok("", max_length=seq, padding="max_length", truncation=True)
    # Row 0 keeps 20 pad positions so both rows have padded keys.
    ids0 = row0["input_ids"][: seq - 20] + [0] * 20
    ids0[seq - 21] = 1
    mask0 = [1] * (seq - 20) + [0] * 20
    input_ids = torch.tensor([ids0, row1["input_ids"]], dtype=torch.long)
    attention_mask = torch.tensor([mask0, row1["attention_mask"]], dtype=torch.long)
    assert attention_mask[1].sum() == 1

    captured = {}
    hooks = [model.encoder.block[i].register_forward_hook(
        lambda m, a, o, i=i: captured.__setitem__(f"block.{i}", o[0].detach().clone()))
        for i in range(cfg.num_layers)]
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = model.shared(input_ids)
    for h in hooks:
        h.remove()
    rel = torch.arange(-(MAX_LENGTH - 1), MAX_LENGTH, dtype=torch.long)
    attn = model.encoder.block[0].layer[0].SelfAttention
    buckets = attn._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    io_t = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "last_hidden_state": out.contiguous(),
        "embeddings": emb.contiguous(),
        "relative_position": rel,
        "relative_position_bucket": buckets.to(torch.long),
    }
    for i in range(cfg.num_layers):
        io_t[f"block.{i}"] = captured[f"block.{i}"].contiguous()
    save_file(io_t, os.path.join(OUT, "io.safetensors"))
    print(f"encoder: |last_hidden_state| max {out.abs().max():.3f}, std {out.std():.3f}")


if __name__ == "__main__":
    main()
