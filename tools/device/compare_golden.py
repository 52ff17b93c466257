"""Compares `pixart run transformer` outputs with the golden `sample` of every transformer
fixture: max abs diff (f32) or relative L2 error (bf16). Usage:
    python compare_golden.py OUT_DIR DTYPE   (OUT_DIR holds <case>.safetensors)
"""
import os
import sys

from safetensors.torch import load_file

root = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "golden", "transformer")
out_dir, dtype = sys.argv[1], sys.argv[2]
worst = 0.0
ok = True
for case in sorted(os.listdir(root)):
    got_p = os.path.join(out_dir, f"{case}.safetensors")
    if not os.path.exists(got_p):
        print(f"{case:16} MISSING")
        ok = False
        continue
    got = load_file(got_p)["sample"].double()
    want = load_file(os.path.join(root, case, "io.safetensors"))["sample"].double()
    if dtype == "f32":
        d = (got - want).abs().max().item()
        good = d <= 1e-5
        print(f"{case:16} f32 max|diff| {d:.3e} {'ok' if good else 'FAIL'} (tolerance 1e-5)")
    else:
        d = ((got - want).norm() / want.norm()).item()
        good = d <= 3e-2
        print(f"{case:16} {dtype} rel L2 {d:.3e} {'ok' if good else 'FAIL'} (tolerance 3e-2)")
    worst = max(worst, d)
    ok &= good
print(f"golden {dtype}: {'all ok' if ok else 'FAILURES'}; worst {worst:.3e}")
sys.exit(0 if ok else 1)
