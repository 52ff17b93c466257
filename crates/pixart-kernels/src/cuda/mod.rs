//! The project's own CUDA kernels (crates/pixart-model/cuda/*.cu, compiled to PTX by build.rs with
//! the `cuda` feature): fused attention and the fused element-wise ops of the transformer block;
//! and the Linear layers as one cuBLASLt call each, bias and GELU in the GEMM's epilogue.
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

/// `impl CustomOp2` for an op of two tensors that runs on CUDA only (as [`cuda_only_op3`]).
macro_rules! cuda_only_op2 {
    ($ty:ty, $name:literal, $fwd:path) => {
        impl candle_core::CustomOp2 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(
                &self,
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
            ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
                $fwd(self, a, al, b, bl)
            }
        }
    };
}
use cuda_only_op2;

mod attention;
mod fused;
mod linear;

pub use attention::{applies as attention_applies, flash_attention, flash_attention_variant, pipelined, rows_per_warp};
pub use fused::{add_gated, applies as fused_applies, layer_norm_modulate};
pub use fused::{kv_conv, kv_conv_applies};
pub use linear::{applies as linear_applies, gated_in_gemm, linear, linear_residual, residual_applies};

/// Whether `PIXART_CUDA_KERNELS` leaves the project's kernels on (read once per process).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| env_choice("PIXART_CUDA_KERNELS", true, &[("pixart", true), ("candle", false)]))
}

/// The value of the environment variable `name` among `choices`: `default` when it is unset or
/// empty, and with a warning when it is none of them.
fn env_choice<T: Copy>(name: &str, default: T, choices: &[(&str, T)]) -> T {
    choice(name, std::env::var(name).ok().as_deref(), default, choices)
}

/// [`env_choice`] on the variable's value (`None`: unset).
fn choice<T: Copy>(name: &str, value: Option<&str>, default: T, choices: &[(&str, T)]) -> T {
    let v = value.unwrap_or("").trim();
    if v.is_empty() {
        return default;
    }
    match choices.iter().find(|(k, _)| *k == v) {
        Some(&(_, t)) => t,
        None => {
            let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
            eprintln!("{name}={v:?} is not one of {names:?}; using the default");
            default
        }
    }
}

/// Prints, once per process and `what`, that a kernel failed and candle's ops took over.
pub fn warn_once(what: &'static str, err: &dyn std::fmt::Display) {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&what) {
        seen.push(what);
        eprintln!("warning: {what} failed ({err}); using candle's ops instead");
    }
}

/// A CUDA build, a CUDA tensor that no gradient tracks, the kernels switched on.
pub(crate) fn usable(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && !x.track_op() && enabled()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_reads_known_values_and_falls_back_to_the_default() {
        let choices = [("16", 16usize), ("32", 32)];
        let pick = |v: Option<&str>| choice("PIXART_FA_ROWS", v, 32, &choices);
        assert_eq!(pick(None), 32, "unset: the default");
        assert_eq!(pick(Some(" 16 ")), 16, "a known value, trimmed");
        assert_eq!(pick(Some("32")), 32);
        assert_eq!(pick(Some("")), 32, "empty: the default");
        assert_eq!(pick(Some("64")), 32, "unknown: the default");
    }

    #[test]
    fn nothing_applies_on_the_cpu() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::zeros((2, 8, 16), candle_core::DType::BF16, &dev)?;
        let w = Tensor::zeros((4, 16), candle_core::DType::BF16, &dev)?;
        let b = Tensor::zeros(4, candle_core::DType::BF16, &dev)?;
        assert!(!linear_applies(&x, &w, Some(&b)));
        assert!(!attention_applies(&x, 8));
        assert!(!fused_applies(&x, &[]));
        assert!(!kv_conv_applies(&x, &w, &b));
        Ok(())
    }
}
