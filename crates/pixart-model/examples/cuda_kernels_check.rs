//! GPU check of the project's CUDA kernels (`pixart_model::cuda`): the fused attention
//! (cuda/flash_attention.cu) and the fused LayerNorm + modulation and gated residual
//! (cuda/fused_ops.cu), each compared with candle's composed ops in f32 on the same GPU at
//! PixArt-Σ's shapes, then timed against the composed path in bf16 (for attention:
//! `matmul → softmax → matmul` with the scores in device memory).
//!
//! Build (no GPU needed): `tools/cuda/build.sh`; run on the GPU machine (tools/device/gpu-check.sh,
//! stage `kernels`). Prints one line per check and JSON lines for the timings; exit status 1 when
//! a check fails. Without the `cuda` feature it compiles (CI lints it) and exits at once.
use candle_core::{DType, Device, Tensor};
use pixart_model::cuda::{add_gated, flash_attention, layer_norm_modulate};
use pixart_model::ops::{chunked_attention, layer_norm_composed, modulate};
use std::time::Instant;

const BUDGET: usize = pixart_model::attention::MAX_SCORE_ELEMENTS_GPU;

/// Seconds per call of `f` on the GPU: one warm-up call, then `iters` between synchronisations.
fn seconds_per_call(
    dev: &Device,
    iters: usize,
    f: &dyn Fn() -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    f()?;
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / iters as f64)
}

/// (b, h, n, d) view of a (b, n, h, d) tensor, as the transformer passes its projections.
fn heads(x: &Tensor) -> candle_core::Result<Tensor> {
    x.transpose(1, 2)
}

/// The composed attention in f32 with the prefix mask as a bias; returns (b, n, h, d).
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, lens: Option<&[usize]>) -> candle_core::Result<Tensor> {
    let f = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    let (b, _h, _n, d) = q.dims4()?;
    let m = k.dim(2)?;
    let bias = match lens {
        Some(lens) => {
            let rows: Vec<f32> = lens
                .iter()
                .flat_map(|&l| (0..m).map(move |j| if j < l { 0.0 } else { f32::NEG_INFINITY }))
                .collect();
            Some(Tensor::from_vec(rows, (b, 1, 1, m), q.device())?)
        }
        None => None,
    };
    let scale = 1.0 / (d as f64).sqrt();
    chunked_attention(&f(q)?, &f(k)?, &f(v)?, bias.as_ref(), None, scale, BUDGET)?
        .transpose(1, 2)?
        .contiguous()
}

fn main() -> candle_core::Result<()> {
    if !cfg!(feature = "cuda") {
        println!("cuda_kernels_check: built without the `cuda` feature; nothing to do");
        return Ok(());
    }
    let dev = Device::new_cuda(0)?;
    let mut failed = 0;
    struct Case {
        name: &'static str,
        b: usize,
        h: usize,
        n: usize,
        m: usize,
        d: usize,
        lens: Option<Vec<usize>>,
        dtype: DType,
    }
    let case = |name, b, h, n, m, d, lens, dtype| Case {
        name,
        b,
        h,
        n,
        m,
        d,
        lens,
        dtype,
    };
    let cases = [
        case("self 256 px", 2, 16, 256, 256, 72, None, DType::BF16),
        case("self 1024 px", 2, 16, 4096, 4096, 72, None, DType::BF16),
        case("self 1024 px f16", 2, 16, 4096, 4096, 72, None, DType::F16),
        case("self, KV compressed 4x", 2, 16, 4096, 1024, 72, None, DType::BF16),
        case(
            "cross, 300 tokens, lens 20/300",
            2,
            16,
            4096,
            300,
            72,
            Some(vec![20, 300]),
            DType::BF16,
        ),
        case("odd sizes d=40", 3, 2, 150, 97, 40, Some(vec![1, 64, 97]), DType::BF16),
    ];
    for Case {
        name,
        b,
        h,
        n,
        m,
        d,
        lens,
        dtype,
    } in &cases
    {
        let q = Tensor::randn(0f32, 1.0, (*b, *n, *h, *d), &dev)?.to_dtype(*dtype)?;
        let k = Tensor::randn(0f32, 1.0, (*b, *h, *m, *d), &dev)?.to_dtype(*dtype)?;
        let v = Tensor::randn(0f32, 1.0, (*b, *h, *m, *d), &dev)?.to_dtype(*dtype)?;
        let scale = 1.0 / (*d as f64).sqrt();
        let got = flash_attention(&heads(&q)?, &k, &v, scale, lens.as_deref())?.to_dtype(DType::F32)?;
        let want = reference(&heads(&q)?, &k, &v, lens.as_deref())?;
        let diff = (&got - &want)?;
        let max_abs = diff.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let rel_l2 = (diff.sqr()?.sum_all()?.to_scalar::<f32>()? / want.sqr()?.sum_all()?.to_scalar::<f32>()?).sqrt();
        // One rounding of the probabilities and of the output to the input type.
        let tol = if *dtype == DType::F16 { 2e-3 } else { 1e-2 };
        let ok = rel_l2.is_finite() && rel_l2 <= tol && got.dims() == want.dims();
        failed += usize::from(!ok);
        println!(
            "flash attention {name:<32} {dtype:?} rel L2 {rel_l2:.3e} max|diff| {max_abs:.3e} (tol {tol:.0e}) {}",
            if ok { "ok" } else { "FAIL" }
        );
    }

    // Timing at the 1024 px and 2048 px self-attention shapes, bf16.
    for (n, iters) in [(4096usize, 20usize), (16_384, 3)] {
        let (b, h, d) = (2usize, 16usize, 72usize);
        let q = Tensor::randn(0f32, 1.0, (b, n, h, d), &dev)?.to_dtype(DType::BF16)?;
        let k = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev)?.to_dtype(DType::BF16)?;
        let v = Tensor::randn(0f32, 1.0, (b, h, n, d), &dev)?.to_dtype(DType::BF16)?;
        let scale = 1.0 / (d as f64).sqrt();
        let qh = heads(&q)?;
        let qc = qh.contiguous()?;
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| seconds_per_call(&dev, iters, f);
        let flash = time(&|| flash_attention(&qh, &k, &v, scale, None))?;
        let composed = time(&|| chunked_attention(&qc, &k, &v, None, None, scale, BUDGET))?;
        let flop = 4.0 * (b * h * n * n * d) as f64;
        println!(
            "{{\"bench\": \"attention\", \"dtype\": \"bf16\", \"b\": {b}, \"heads\": {h}, \"n\": {n}, \"m\": {n}, \"d\": {d}, \
             \"flash_ms\": {:.3}, \"composed_ms\": {:.3}, \"flash_tflops\": {:.1}, \"composed_tflops\": {:.1}}}",
            flash * 1e3,
            composed * 1e3,
            flop / flash / 1e12,
            flop / composed / 1e12
        );
    }
    // Fused LayerNorm + modulation and gated residual at the 1024 px block's shape.
    let (b, n, c) = (2usize, 4096usize, 1152usize);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let f32_of = |t: &Tensor| t.to_dtype(DType::F32);
        let x = (Tensor::randn(0f32, 2.0, (b, n, c), &dev)? + 3.0)?.to_dtype(dtype)?;
        let y = Tensor::randn(0f32, 1.0, (b, n, c), &dev)?.to_dtype(dtype)?;
        let mods = Tensor::randn(0f32, 0.5, (b, 6, c), &dev)?.to_dtype(dtype)?;
        let (shift, scale, gate) = (mods.narrow(1, 0, 1)?, mods.narrow(1, 1, 1)?, mods.narrow(1, 2, 1)?);
        let want = modulate(
            &layer_norm_composed(&f32_of(&x)?, 1e-6)?,
            &f32_of(&shift)?,
            &f32_of(&scale)?,
        )?;
        let got = f32_of(&layer_norm_modulate(&x, &shift, &scale, 1e-6)?)?;
        let want_g = (f32_of(&x)? + f32_of(&y)?.broadcast_mul(&f32_of(&gate)?)?)?;
        let got_g = f32_of(&add_gated(&x, &y, &gate)?)?;
        // One rounding to the output type (relative 2^-8 bf16, 2^-11 f16) of values up to ~15.
        let tol = match dtype {
            DType::F32 => 1e-5,
            DType::F16 => 1e-2,
            _ => 8e-2,
        };
        for (what, g, w) in [("ln_modulate", &got, &want), ("add_gated", &got_g, &want_g)] {
            let max_abs = (g - w)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let ok = max_abs.is_finite() && max_abs <= tol;
            failed += usize::from(!ok);
            println!(
                "fused {what:<12} {dtype:?} (2, 4096, 1152) max|diff| {max_abs:.3e} (tol {tol:.0e}) {}",
                if ok { "ok" } else { "FAIL" }
            );
        }
        if dtype == DType::BF16 {
            let iters = 50;
            let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| seconds_per_call(&dev, iters, f);
            let fused = time(&|| layer_norm_modulate(&x, &shift, &scale, 1e-6))?;
            let composed = time(&|| modulate(&layer_norm_composed(&x, 1e-6)?, &shift, &scale))?;
            let fused_g = time(&|| add_gated(&x, &y, &gate))?;
            let composed_g = time(&|| &x + y.broadcast_mul(&gate)?)?;
            println!(
                "{{\"bench\": \"fused-ops\", \"dtype\": \"bf16\", \"shape\": [{b}, {n}, {c}], \
                 \"ln_modulate_ms\": {:.4}, \"composed_ln_modulate_ms\": {:.4}, \
                 \"add_gated_ms\": {:.4}, \"composed_add_gated_ms\": {:.4}}}",
                fused * 1e3,
                composed * 1e3,
                fused_g * 1e3,
                composed_g * 1e3
            );
        }
    }

    if failed > 0 {
        println!("{failed} check(s) FAILED");
        std::process::exit(1);
    }
    println!("all CUDA kernel checks passed");
    Ok(())
}
