//! The project's own CUDA kernels (crates/pixart-model/cuda/*.cu, compiled to PTX by build.rs with
//! the `cuda` feature): fused attention and the fused element-wise ops of the transformer block.
//! Inference only (tensors that track gradients take candle's composed ops, which have a
//! backward).
//!
//! `PIXART_CUDA_KERNELS=candle` turns them all off (candle's composed ops everywhere, the path
//! before these kernels existed), for comparisons; `pixart` (the default) uses them wherever they
//! apply.
//!
//! The kernels' indexing and arithmetic are tested on the CPU by running the `.cu` files under a
//! host emulation (tests/cuda_emulated.rs); `examples/cuda_attention_check.rs` compares them
//! with the composed ops on a GPU (tools/device/gpu-check.sh).
use candle_core::Tensor;
use std::sync::OnceLock;

/// `impl CustomOp3` for an op of three tensors that runs on CUDA only: the CPU never reaches it
/// (each `applies` needs a CUDA tensor) and gets an error; `cuda_fwd` calls `$fwd`.
macro_rules! cuda_only_op3 {
    ($ty:ty, $name:literal, $fwd:path) => {
        impl candle_core::CustomOp3 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
                _: &candle_core::CpuStorage,
                _: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
                candle_core::bail!(concat!($name, " runs on CUDA only"))
            }

            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                a: &candle_core::CudaStorage,
                al: &candle_core::Layout,
                b: &candle_core::CudaStorage,
                bl: &candle_core::Layout,
                c: &candle_core::CudaStorage,
                cl: &candle_core::Layout,
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                $fwd(self, a, al, b, bl, c, cl)
            }
        }
    };
}
use cuda_only_op3;

mod attention;
mod fused;

pub use attention::{applies as attention_applies, flash_attention};
pub use fused::{add_gated, applies as fused_applies, layer_norm_modulate};

/// Whether `PIXART_CUDA_KERNELS` leaves the project's kernels on (read once per process).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| match std::env::var("PIXART_CUDA_KERNELS") {
        Err(_) => true,
        Ok(v) => match v.trim() {
            "" | "pixart" => true,
            "candle" => false,
            other => {
                eprintln!("PIXART_CUDA_KERNELS={other:?} is not pixart or candle; using pixart");
                true
            }
        },
    })
}

/// A CUDA build, a CUDA tensor that no gradient tracks, the kernels switched on.
fn usable(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && !x.track_op() && enabled()
}
