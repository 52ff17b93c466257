//! GFLOP/s of the fused CPU attention at the transformer's self-attention shapes (batch 2,
//! 16 heads of 72): `cargo run --release -p pixart-gemm --example attention_bench [-- N [DTYPE [REPS]]]`
//! (N = tokens, default 4096: 1024 px; DTYPE bf16 or f32). Counts 4·b·h·n²·d flops.
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use pixart_kernels::cpu::attention::{attention_bf16, attention_f32, ScoreBias};

/// `attention_bf16` or `attention_f32`.
type Attention = fn(&Tensor, &Tensor, &Tensor, ScoreBias, f32) -> candle_core::Result<Tensor>;

fn main() -> candle_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4096);
    let dtype = args.next().unwrap_or_else(|| "bf16".into());
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let (b, h, d) = (2, 16, 72);
    let dev = Device::Cpu;
    let (dt, f): (DType, Attention) = match dtype.as_str() {
        "f32" => (DType::F32, attention_f32),
        _ => (DType::BF16, attention_bf16),
    };
    let make = || Tensor::randn(0f32, 1.0, (b, h, n, d), &dev)?.to_dtype(dt);
    let (q, k, v) = (make()?, make()?, make()?);
    let scale = 1.0 / (d as f32).sqrt();
    f(&q, &k, &v, ScoreBias::None, scale)?;
    let start = Instant::now();
    for _ in 0..reps {
        f(&q, &k, &v, ScoreBias::None, scale)?;
    }
    let s = start.elapsed().as_secs_f64() / reps as f64;
    let flops = 4.0 * (b * h * n * n * d) as f64;
    println!(
        "attention {dtype} b={b} h={h} n={n} d={d}: {:.1} ms, {:.0} GFLOP/s",
        s * 1e3,
        flops / s / 1e9
    );
    if dt == DType::BF16 {
        pieces(n, d)?;
    }
    Ok(())
}

/// One thread, one block of 64 queries against `n` keys: the time of each piece.
fn pieces(n: usize, d: usize) -> candle_core::Result<()> {
    use half::bf16;
    use pixart_kernels::cpu::bf16::{gemm, Lhs, Output, PackedB};
    let e = |e: pixart_kernels::cpu::bf16::GemmError| candle_core::Error::Msg(e.to_string());
    let rows = 64;
    let val = |i: usize| bf16::from_f32(((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5);
    let q: Vec<bf16> = (0..rows * d).map(val).collect();
    let k: Vec<bf16> = (0..n * d).map(|i| val(i + 13)).collect();
    let (mut pk, mut pv) = (PackedB::new(), PackedB::new());
    pk.pack_nk(&k, n, d, d, false).map_err(e)?;
    pv.pack_kn(&k, n, d, d, false).map_err(e)?;
    let mut scores = vec![0f32; rows * n];
    let mut probs = vec![bf16::ZERO; rows * n];
    let mut out = vec![bf16::ZERO; rows * d];
    let reps = (1 << 28) / (rows * n * d) + 1;
    let time = |f: &mut dyn FnMut() -> candle_core::Result<()>| -> candle_core::Result<f64> {
        f()?;
        let s = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        Ok(s.elapsed().as_secs_f64() / reps as f64 * 1e6)
    };
    let qk = time(&mut || {
        gemm(
            Lhs::rows(&q, rows, d, d).map_err(e)?,
            &pk,
            Output::F32 {
                c: &mut scores,
                ldc: n,
                alpha: 0.1,
            },
            false,
        )
        .map_err(e)
    })?;
    let soft = time(&mut || {
        for (row, prow) in scores.chunks_mut(n).zip(probs.chunks_mut(n)) {
            pixart_kernels::cpu::bf16::softmax_to_bf16(row, prow);
        }
        Ok(())
    })?;
    let pvt = time(&mut || {
        gemm(
            Lhs::rows(&probs, rows, n, n).map_err(e)?,
            &pv,
            Output::Bf16 {
                c: &mut out,
                ldc: d,
                bias: None,
            },
            false,
        )
        .map_err(e)
    })?;
    let gf = |us: f64| 2.0 * (rows * n * d) as f64 / us / 1e3;
    println!(
        "one thread, {rows} queries x {n} keys: q·kᵀ {qk:.0} µs ({:.0} GFLOP/s), softmax + round {soft:.0} µs, p·v {pvt:.0} µs ({:.0} GFLOP/s)",
        gf(qk),
        gf(pvt)
    );
    Ok(())
}
