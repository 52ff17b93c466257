"""One comparison of pixart-rs against PyTorch on this machine: each case runs the Rust
benchmark (`pixart bench ...`) and the same work in PyTorch/diffusers/transformers
(tools/bench/*.py: random weights, same shapes, same dtype, same thread count), alternating
which goes first, and prints a markdown table: time, ratio Rust/PyTorch, peak RSS of each
(separate processes), achieved GFLOP/s where the work is counted.

    PIXART_REF_PYTHON=<venv>/bin/python python3 tools/bench/compare.py [--cases a,b] [--threads 2]

Cases (default: all, about an hour on 2 cores): transformer-{256,512,1024}-{f32,bf16},
vae-{512,1024} (decode), vae-encode-{512,1024}, t5-large-bf16, t5-xxl-bf16 (2 × 300 tokens), denoise-512-{f32,bf16} (20 steps,
CFG) and denoise-512-bf16-20tok (the prompt has 20 valid tokens, as a typical one).
The Rust binary: PIXART_BIN or target/release/pixart (built with cargo build --release).

    python3 tools/bench/compare.py --against-bin OLD/pixart --rounds 3 --cases transformer-512-bf16

compares two pixart binaries instead (e.g. before and after a change): the same `pixart bench`
arguments, the two alternated within each round, the median of the rounds in the table (no
Python reference needed).
"""
import statistics
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BENCH = os.path.join(ROOT, "tools", "bench")


def t5_flops(d, dff, layers, heads, dkv, tokens, batch):
    """Multiply-adds × 2 of a gated T5 encoder forward (projections, FFN, attention products)."""
    inner = heads * dkv
    per_token = 2 * (4 * d * inner + 3 * d * dff) + 2 * 2 * tokens * inner
    return batch * tokens * layers * per_token


T5_LARGE = (1024, 2816, 24, 16, 64)
T5_XXL = (4096, 10240, 24, 64, 64)


def cases(threads):
    """name -> (rust args, python script + args, seconds key, flops or None (Rust reports))."""
    out = {}
    for size in (256, 512, 1024):
        for dt in ("f32", "bf16"):
            iters = "1" if size == 1024 else "3"
            out[f"transformer-{size}-{dt}"] = (
                ["bench", "transformer", "--size", str(size), "--dtype", dt, "--iters", iters],
                ["transformer.py", "--size", str(size), "--dtype", dt, "--iters", iters],
                "seconds_per_forward", "gflop_per_forward")
    for size in (512, 1024):
        out[f"vae-{size}"] = (
            ["bench", "vae-decode", "--size", str(size), "--tile", "off"],
            ["vae_decode.py", "--size", str(size)],
            "seconds_per_decode", None)
        out[f"vae-encode-{size}"] = (
            ["bench", "vae-encode", "--size", str(size), "--tile", "off"],
            ["vae_decode.py", "--size", str(size), "--encode"],
            "seconds_per_encode", None)
    for name, cfg, shape in (("t5-large-bf16", os.path.join(BENCH, "t5-large.json"), T5_LARGE),
                             ("t5-xxl-bf16", "xxl", T5_XXL)):
        out[name] = (
            ["bench", "text-encoder", "--config", cfg, "--dtype", "bf16", "--tokens", "300", "--batch", "2"],
            ["text_encoder.py", "--config", cfg, "--dtype", "bf16", "--tokens", "300", "--batch", "2"],
            "seconds_per_forward", t5_flops(*shape, 300, 2) / 1e9)
    for dt in ("f32", "bf16"):
        out[f"denoise-512-{dt}"] = (
            ["bench", "denoise", "--size", "512", "--steps", "20", "--dtype", dt],
            ["denoise.py", "--size", "512", "--steps", "20", "--dtype", dt],
            "seconds", "gflop_reference")
    out["denoise-512-bf16-20tok"] = (
        ["bench", "denoise", "--size", "512", "--steps", "20", "--dtype", "bf16", "--valid-tokens", "20"],
        ["denoise.py", "--size", "512", "--steps", "20", "--dtype", "bf16", "--valid-tokens", "20"],
        "seconds", "gflop_reference")
    for v in out.values():
        v[1].extend(["--threads", str(threads)])
    return out


def last_json(cmd, env):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"{' '.join(cmd)} printed no JSON:\n{p.stdout[-2000:]}")
    return json.loads(lines[-1])


def selection(a):
    """(every case, the names asked for, the environment with the thread counts)."""
    all_cases = cases(a.threads)
    names = list(all_cases) if a.cases == "all" else a.cases.split(",")
    unknown = [n for n in names if n not in all_cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(all_cases)}")
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    return all_cases, names, env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="all", help="comma-separated case names, or all")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="also write every result here")
    ap.add_argument("--against-bin", help="another pixart binary to compare with instead of PyTorch")
    ap.add_argument("--rounds", type=int, default=1, help="alternated rounds per case (table: medians)")
    a = ap.parse_args()
    if a.against_bin:
        return against(a)
    py = os.environ.get("PIXART_REF_PYTHON", os.path.join(ROOT, "..", "pixart-ref-venv", "bin", "python"))
    if not os.access(py, os.X_OK):
        raise SystemExit(f"no reference python at {py} (set PIXART_REF_PYTHON or run tools/golden/setup.sh)")
    binary = os.environ.get("PIXART_BIN", os.path.join(ROOT, "target", "release", "pixart"))
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"no pixart binary at {binary}: cargo build --release -p pixart-cli (or set PIXART_BIN)")
    all_cases, names, env = selection(a)
    print(f"threads {a.threads}; {binary} against {py}", file=sys.stderr)
    print("| case | pixart-rs s | PyTorch s | ratio | pixart-rs peak RSS GiB | PyTorch peak RSS GiB "
          "| pixart-rs GFLOP/s | PyTorch GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    results = []
    for k, name in enumerate(names):
        rust_args, py_args, key, flops = all_cases[name]
        runs = [("rust", [binary] + rust_args), ("torch", [py, os.path.join(BENCH, py_args[0])] + py_args[1:])]
        if k % 2:
            runs.reverse()
        got = {}
        for who, cmd in runs:
            print(f"{name}: {who} ...", file=sys.stderr, flush=True)
            got[who] = last_json(cmd, env)
        r, p = got["rust"], got["torch"]
        rs, ps = r[key], p[key]
        gflop = r.get(flops) if isinstance(flops, str) else flops
        rate = (lambda s: f"{gflop / s:.0f}") if gflop else (lambda s: "–")
        gib = lambda j: f"{j['peak_rss_bytes'] / 2**30:.2f}"  # noqa: E731
        print(f"| {name} | {rs:.2f} | {ps:.2f} | {rs / ps:.2f} | {gib(r)} | {gib(p)} | {rate(rs)} | {rate(ps)} |",
              flush=True)
        results.append({"case": name, "rust": r, "torch": p, "gflop": gflop})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


def against(a):
    """Two pixart binaries on the same cases, alternated, `a.rounds` times each."""
    binary = os.environ.get("PIXART_BIN", os.path.join(ROOT, "target", "release", "pixart"))
    for b in (binary, a.against_bin):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"no pixart binary at {b}")
    all_cases, names, env = selection(a)
    print(f"threads {a.threads}; {binary} (new) against {a.against_bin} (old), {a.rounds} rounds", file=sys.stderr)
    print("| case | new s (median) | old s (median) | new/old | new runs | old runs |")
    print("|---|---|---|---|---|---|")
    results = []
    for name in names:
        rust_args, _, key, _ = all_cases[name]
        times = {"new": [], "old": []}
        for r in range(a.rounds):
            runs = [("new", binary), ("old", a.against_bin)]
            if r % 2:
                runs.reverse()
            for who, b in runs:
                print(f"{name} round {r + 1}: {who} ...", file=sys.stderr, flush=True)
                times[who].append(last_json([b] + rust_args, env)[key])
        n, o = statistics.median(times["new"]), statistics.median(times["old"])
        fmt = lambda ts: " ".join(f"{t:.3f}" for t in ts)  # noqa: E731
        print(f"| {name} | {n:.3f} | {o:.3f} | {n / o:.3f} | {fmt(times['new'])} | {fmt(times['old'])} |", flush=True)
        results.append({"case": name, "new": times["new"], "old": times["old"]})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
