//! Rough per-op timings at the shapes of one 256 px forward (batch 2), to see where the time
//! goes: `cargo run --release -p pixart-model --example op_timing`.
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};

fn time<T>(name: &str, reps: usize, mut f: impl FnMut() -> T) {
    let _ = f();
    let s = Instant::now();
    for _ in 0..reps {
        let _ = f();
    }
    println!("{name:40} {:8.2} ms", s.elapsed().as_secs_f64() * 1e3 / reps as f64);
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (b, n, c) = (2, 1024, 1152);
    let x = Tensor::randn(0f32, 1.0, (b, n, c), &dev)?;
    let h = Tensor::randn(0f32, 1.0, (b, n, 4 * c), &dev)?;
    let sh = Tensor::randn(0f32, 1.0, (b, 1, c), &dev)?;
    let w = Tensor::randn(0f32, 0.02, (c, c), &dev)?;
    let lin = candle_nn::Linear::new(w.clone(), Some(Tensor::zeros(c, DType::F32, &dev)?));
    let w4 = Tensor::randn(0f32, 0.02, (4 * c, c), &dev)?;
    let lin4 = candle_nn::Linear::new(w4, Some(Tensor::zeros(4 * c, DType::F32, &dev)?));
    time("linear c->c", 5, || lin.forward(&x));
    time("linear c->4c", 5, || lin4.forward(&x));
    time("gelu (b,n,4c) candle", 5, || h.gelu());
    time("gelu (b,n,4c) pixart kernel", 5, || pixart_kernels::ops::gelu(&h));
    time("layer_norm_no_affine", 5, || {
        pixart_kernels::ops::layer_norm_no_affine(&x, 1e-6)
    });
    time("modulate", 5, || pixart_kernels::ops::modulate(&x, &sh, &sh));
    time("broadcast_mul gate + add", 5, || &x + x.broadcast_mul(&sh)?);
    let q = Tensor::randn(0f32, 1.0, (b, 16, n, 72), &dev)?;
    time("attention n=1024", 5, || {
        pixart_kernels::ops::chunked_attention(&q, &q, &q, None, None, 0.1, 1 << 25)
    });
    let kt = q.t()?;
    time("  qk^T", 5, || q.matmul(&kt));
    let s = q.matmul(&kt)?;
    time("  softmax_last_dim candle", 5, || candle_nn::ops::softmax_last_dim(&s));
    time("  softmax_last_dim pixart kernel", 5, || {
        pixart_kernels::ops::softmax_last_dim(&s)
    });
    time("  p v", 5, || s.matmul(&q));
    time("  q * scale", 5, || &q * 0.1);
    time("split heads (transpose+contiguous)", 5, || {
        x.reshape((b, n, 16, 72))?.transpose(1, 2)?.contiguous()
    });
    Ok(())
}
