//! CUDA smoke test for the first run on a GPU machine: runs the candle ops the PixArt-Σ
//! pipeline relies on, on `Device::new_cuda(0)` and on the CPU, and compares the results.
//!
//! Build (no GPU needed): `tools/cuda/build.sh`. Without the `cuda` feature it still compiles
//! (so CI lints it) but exits at once.
//! Run on the GPU machine: `cuda_smoke` (exit status 0 when every check passes).
//! It also times a bf16 and an f32 matmul as a sanity check of cuBLAS speed.

use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use std::time::Instant;

/// Largest |a - b| divided by the largest |b| (or 1 when b is all zeros).
fn rel_err(gpu: &Tensor, cpu: &Tensor) -> candle_core::Result<f32> {
    let g = gpu.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let c = cpu.to_dtype(DType::F32)?;
    let diff = (g - &c)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = c.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(diff / if scale > 0.0 { scale } else { 1.0 })
}

struct Checker {
    failed: usize,
}

impl Checker {
    fn check(&mut self, name: &str, gpu: &Tensor, cpu: &Tensor, tol: f32) -> candle_core::Result<()> {
        let err = rel_err(gpu, cpu)?;
        let ok = err.is_finite() && err <= tol && gpu.dims() == cpu.dims();
        if !ok {
            self.failed += 1;
        }
        println!(
            "{:<40} {:>18} rel err {:>10.3e} (tol {:.0e})  {}",
            name,
            format!("{:?}", gpu.dims()),
            err,
            tol,
            if ok { "ok" } else { "FAIL" }
        );
        Ok(())
    }
}

fn time_matmul(dev: &Device, dtype: DType, n: usize) -> candle_core::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(dtype)?;
    for _ in 0..3 {
        a.matmul(&b)?;
    }
    dev.synchronize()?;
    let iters = 20;
    let t = Instant::now();
    for _ in 0..iters {
        a.matmul(&b)?;
    }
    dev.synchronize()?;
    let s = t.elapsed().as_secs_f64();
    Ok(2.0 * (n as f64).powi(3) * iters as f64 / s / 1e12)
}

fn main() -> candle_core::Result<()> {
    if !candle_core::utils::cuda_is_available() {
        eprintln!("cuda_smoke: built without the `cuda` feature (use tools/cuda/build.sh)");
        std::process::exit(2);
    }
    let t0 = Instant::now();
    let gpu = Device::new_cuda(0)?;
    println!("Device::new_cuda(0) ok in {:.2} s", t0.elapsed().as_secs_f64());
    let cpu = Device::Cpu;
    let mut c = Checker { failed: 0 };

    // f32 matmul (batched, as in attention).
    let a = Tensor::randn(0f32, 1.0, (4, 256, 72), &cpu)?;
    let b = Tensor::randn(0f32, 1.0, (4, 72, 300), &cpu)?;
    let (ag, bg) = (a.to_device(&gpu)?, b.to_device(&gpu)?);
    // cuBLAS may use TF32 for f32; allow for that.
    c.check("matmul f32 (batched)", &ag.matmul(&bg)?, &a.matmul(&b)?, 5e-3)?;

    // bf16 matmul against an f32 CPU reference.
    let a2 = Tensor::randn(0f32, 1.0, (512, 1152), &cpu)?;
    let b2 = Tensor::randn(0f32, 1.0, (1152, 1152), &cpu)?;
    let bf = a2
        .to_device(&gpu)?
        .to_dtype(DType::BF16)?
        .matmul(&b2.to_device(&gpu)?.to_dtype(DType::BF16)?)?;
    c.check("matmul bf16 vs f32 reference", &bf, &a2.matmul(&b2)?, 3e-2)?;
    // Transposed (non-contiguous) operand, as in `x.matmul(&w.t())`.
    let w = Tensor::randn(0f32, 1.0, (768, 1152), &cpu)?;
    let r = a2.matmul(&w.t()?)?;
    let g = a2
        .to_device(&gpu)?
        .to_dtype(DType::BF16)?
        .matmul(&w.to_device(&gpu)?.to_dtype(DType::BF16)?.t()?)?;
    c.check("matmul bf16 x w.t()", &g, &r, 3e-2)?;

    // Softmax over the last dim, f32 and bf16.
    let s = (Tensor::randn(0f32, 1.0, (2, 16, 64, 300), &cpu)? * 4.0)?;
    let sg = s.to_device(&gpu)?;
    let sm_cpu = candle_nn::ops::softmax_last_dim(&s)?;
    c.check(
        "softmax_last_dim f32",
        &candle_nn::ops::softmax_last_dim(&sg)?,
        &sm_cpu,
        1e-5,
    )?;
    c.check(
        "softmax_last_dim bf16",
        &candle_nn::ops::softmax_last_dim(&sg.to_dtype(DType::BF16)?)?,
        &sm_cpu,
        2e-2,
    )?;
    c.check(
        "softmax (generic, D::Minus1)",
        &candle_nn::ops::softmax(&sg, D::Minus1)?,
        &sm_cpu,
        1e-5,
    )?;

    // conv2d: patch embedding (k=2, s=2), a VAE-style 3x3 conv, and the depthwise strided conv
    // of PixArt-Σ's KV token compression (groups = channels).
    let x = Tensor::randn(0f32, 1.0, (1, 4, 32, 32), &cpu)?;
    let k = Tensor::randn(0f32, 0.2, (1152, 4, 2, 2), &cpu)?;
    c.check(
        "conv2d patch embed k2 s2",
        &x.to_device(&gpu)?.conv2d(&k.to_device(&gpu)?, 0, 2, 1, 1)?,
        &x.conv2d(&k, 0, 2, 1, 1)?,
        5e-3,
    )?;
    let x3 = Tensor::randn(0f32, 1.0, (1, 64, 48, 40), &cpu)?;
    let k3 = Tensor::randn(0f32, 0.1, (128, 64, 3, 3), &cpu)?;
    let ref3 = x3.conv2d(&k3, 1, 1, 1, 1)?;
    c.check(
        "conv2d 3x3 pad1 f32",
        &x3.to_device(&gpu)?.conv2d(&k3.to_device(&gpu)?, 1, 1, 1, 1)?,
        &ref3,
        5e-3,
    )?;
    let g3 =
        x3.to_device(&gpu)?
            .to_dtype(DType::BF16)?
            .conv2d(&k3.to_device(&gpu)?.to_dtype(DType::BF16)?, 1, 1, 1, 1)?;
    c.check("conv2d 3x3 pad1 bf16", &g3, &ref3, 3e-2)?;
    let xd = Tensor::randn(0f32, 1.0, (1, 1152, 32, 32), &cpu)?;
    let kd = Tensor::randn(0f32, 0.3, (1152, 1, 2, 2), &cpu)?;
    c.check(
        "conv2d depthwise k2 s2 (KV compress)",
        &xd.to_device(&gpu)?.conv2d(&kd.to_device(&gpu)?, 0, 2, 1, 1152)?,
        &xd.conv2d(&kd, 0, 2, 1, 1152)?,
        5e-3,
    )?;

    // Norms, activations, elementwise, reductions, indexing, casts.
    let h = Tensor::randn(0f32, 1.0, (2, 256, 1152), &cpu)?;
    let hg = h.to_device(&gpu)?;
    let gamma = Tensor::randn(1f32, 0.1, 1152, &cpu)?;
    let beta = Tensor::randn(0f32, 0.1, 1152, &cpu)?;
    let (gg, bg2) = (gamma.to_device(&gpu)?, beta.to_device(&gpu)?);
    c.check(
        "layer_norm (fused)",
        &candle_nn::ops::layer_norm(&hg, &gg, &bg2, 1e-6)?,
        &candle_nn::ops::layer_norm(&h, &gamma, &beta, 1e-6)?,
        1e-4,
    )?;
    let ln = candle_nn::LayerNorm::new_no_bias(Tensor::ones(1152, DType::F32, &cpu)?, 1e-6);
    let ln_g = candle_nn::LayerNorm::new_no_bias(Tensor::ones(1152, DType::F32, &gpu)?, 1e-6);
    c.check("LayerNorm no bias", &ln_g.forward(&hg)?, &ln.forward(&h)?, 1e-4)?;
    c.check(
        "rms_norm",
        &candle_nn::ops::rms_norm(&hg, &gg, 1e-6)?,
        &candle_nn::ops::rms_norm(&h, &gamma, 1e-6)?,
        1e-4,
    )?;
    c.check("gelu (tanh)", &hg.gelu()?, &h.gelu()?, 1e-5)?;
    c.check("gelu_erf", &hg.gelu_erf()?, &h.gelu_erf()?, 1e-5)?;
    c.check("silu", &hg.silu()?, &h.silu()?, 1e-5)?;
    c.check(
        "exp/tanh/sqrt mix",
        &(hg.tanh()? + hg.abs()?.sqrt()?)?.exp()?,
        &(h.tanh()? + h.abs()?.sqrt()?)?.exp()?,
        1e-5,
    )?;
    let m = h.i((.., 0..1, ..))?;
    let mg = hg.i((.., 0..1, ..))?;
    c.check(
        "broadcast mul/add (modulate)",
        &hg.broadcast_mul(&(&mg + 1.0)?)?.broadcast_add(&mg)?,
        &h.broadcast_mul(&(&m + 1.0)?)?.broadcast_add(&m)?,
        1e-5,
    )?;
    c.check("sum_keepdim / mean", &hg.sum_keepdim(2)?, &h.sum_keepdim(2)?, 1e-5)?;
    c.check(
        "max_keepdim",
        &hg.max_keepdim(D::Minus1)?,
        &h.max_keepdim(D::Minus1)?,
        0.0,
    )?;
    c.check(
        "transpose+contiguous",
        &hg.transpose(1, 2)?.contiguous()?,
        &h.transpose(1, 2)?.contiguous()?,
        0.0,
    )?;
    c.check(
        "cat dim 1",
        &Tensor::cat(&[&hg, &hg], 1)?,
        &Tensor::cat(&[&h, &h], 1)?,
        0.0,
    )?;
    let ids = Tensor::new(&[3u32, 0, 255, 7], &cpu)?;
    c.check(
        "index_select",
        &hg.index_select(&ids.to_device(&gpu)?, 1)?,
        &h.index_select(&ids, 1)?,
        0.0,
    )?;
    let mask = Tensor::new(&[1u8, 0, 1, 1], &cpu)?.reshape((1, 4))?;
    let on = Tensor::zeros((3, 4), DType::F32, &cpu)?;
    let off = Tensor::full(f32::NEG_INFINITY, (3, 4), &cpu)?;
    let wc = mask.broadcast_as((3, 4))?.where_cond(&on, &off)?;
    let wg = mask
        .to_device(&gpu)?
        .broadcast_as((3, 4))?
        .where_cond(&on.to_device(&gpu)?, &off.to_device(&gpu)?)?;
    let same = wg.to_device(&cpu)?.flatten_all()?.to_vec1::<f32>()? == wc.flatten_all()?.to_vec1::<f32>()?;
    println!(
        "{:<40} {:>18} {}",
        "where_cond (attention mask)",
        "[3, 4]",
        if same { "ok" } else { "FAIL" }
    );
    if !same {
        c.failed += 1;
    }
    c.check(
        "cast f32->bf16->f16->f32",
        &hg.to_dtype(DType::BF16)?.to_dtype(DType::F16)?.to_dtype(DType::F32)?,
        &h,
        1e-2,
    )?;
    c.check(
        "upsample_nearest2d",
        &x3.to_device(&gpu)?.upsample_nearest2d(96, 80)?,
        &x3.upsample_nearest2d(96, 80)?,
        0.0,
    )?;
    let rnd = Tensor::randn(0f32, 1.0, (1 << 20,), &gpu)?;
    let mean = rnd.mean_all()?.to_scalar::<f32>()?;
    let ok = mean.abs() < 0.01;
    println!(
        "{:<40} {:>18} mean {:+.4}  {}",
        "randn on device (cuRAND)",
        "[1048576]",
        mean,
        if ok { "ok" } else { "FAIL" }
    );
    if !ok {
        c.failed += 1;
    }

    // Speed sanity check (H100: about 600-800 TFLOP/s bf16 through cuBLAS at n=8192).
    for (dtype, n) in [(DType::BF16, 8192), (DType::F32, 4096)] {
        println!("matmul {:?} {n}^3: {:.1} TFLOP/s", dtype, time_matmul(&gpu, dtype, n)?);
    }

    println!("total {:.2} s", t0.elapsed().as_secs_f64());
    if c.failed > 0 {
        eprintln!("{} check(s) FAILED", c.failed);
        std::process::exit(1);
    }
    println!("all checks passed");
    Ok(())
}
