//! GFLOP/s of the native bf16 GEMM against candle's bf16 and f32 matmul at the transformer's
//! Linear shapes: `cargo run --release -p pixart-gemm --example gemm_bench [-- M]`
//! (M = tokens × batch, default 512: 256 px, batch 2).
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use pixart_kernels::cpu::sgemm;

/// CPU time of all this process's threads (Linux: /proc/self/task/*/schedstat), in seconds;
/// on a machine shared with other jobs, flops per CPU-second is the fairer figure.
fn cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// (wall, cpu) seconds per call.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (s, c) = (Instant::now(), cpu_seconds());
    for _ in 0..reps {
        f();
    }
    (
        s.elapsed().as_secs_f64() / reps as f64,
        (cpu_seconds() - c) / reps as f64,
    )
}

fn main() -> candle_core::Result<()> {
    let m: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    let dev = Device::Cpu;
    println!("native AVX512-BF16: {}", pixart_kernels::cpu::bf16::native_available());
    println!("GFLOP/s by wall time (GFLOP/s per CPU-second in brackets)");
    println!(
        "{:>6} {:>6} {:>6} {:>18} {:>18} {:>18} {:>18}",
        "m", "n", "k", "native bf16", "candle bf16", "native f32", "candle f32"
    );
    for (n, k) in [(1152, 1152), (4608, 1152), (1152, 4608), (32, 1152), (1152, 4096)] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let b = Tensor::zeros(n, DType::F32, &dev)?;
        let (xb, wb, bb) = (
            x.to_dtype(DType::BF16)?,
            w.to_dtype(DType::BF16)?,
            b.to_dtype(DType::BF16)?,
        );
        let native = pixart_kernels::Linear::new(wb.clone(), Some(bb.clone()));
        let cand_b = candle_nn::Linear::new(wb, Some(bb));
        let cand_f = candle_nn::Linear::new(w.clone(), Some(b.clone()));
        let flops = 2.0 * (m * n * k) as f64;
        let reps = (2e10 / flops).clamp(3.0, 200.0) as usize;
        let t0 = time(reps, || drop(native.forward(&xb)));
        let t1 = time(reps.div_ceil(3), || drop(cand_b.forward(&xb)));
        let (xv, wv, bv) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
            b.to_vec1::<f32>()?,
        );
        let mut c = vec![0f32; m * n];
        let t3 = time(reps.div_ceil(2), || {
            let lhs = sgemm::Lhs::rows(&xv, m, k, k).expect("x fits");
            let mut out = sgemm::Output::new(&mut c, n);
            out.bias = sgemm::Bias::Cols(&bv);
            sgemm::gemm(lhs, sgemm::Rhs::Nk { w: &wv, ld: k }, n, out, true).expect("shapes fit");
        });
        let t2 = time(reps.div_ceil(3), || drop(cand_f.forward(&x)));
        let g = |(w, c): (f64, f64)| format!("{:7.1} [{:7.1}]", flops / w / 1e9, flops / c / 1e9);
        println!(
            "{m:>6} {n:>6} {k:>6} {:>18} {:>18} {:>18} {:>18}",
            g(t0),
            g(t1),
            g(t3),
            g(t2)
        );
    }
    Ok(())
}
