//! With the `cuda` feature, compiles the project's own CUDA kernels (cuda/*.cu) to PTX with nvcc
//! for the compute capability in CUDA_COMPUTE_CAP (default 90: H100 / H200), embedded in the
//! library and JIT-compiled by the driver when first used. The CPU build runs nothing.
//! nvcc: $NVCC, else $CUDA_HOME/bin/nvcc, else `nvcc` on PATH (tools/cuda/build.sh sets NVCC).
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["flash_attention", "fused_ops"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().trim_start_matches("sm_").to_string();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for name in KERNELS {
        let src = format!("cuda/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        println!("cargo:rerun-if-changed=cuda/common.cuh");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{cap}"), "-o"])
            .arg(&ptx)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run nvcc ({}): {e}; set NVCC or CUDA_HOME", nvcc.display()));
        assert!(status.success(), "nvcc failed on {src}");
    }
}
