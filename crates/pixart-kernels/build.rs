//! With the `cuda` feature, compiles the project's own CUDA kernels (cuda/*.cu) to PTX with nvcc
//! for the compute capability in CUDA_COMPUTE_CAP (default 90: H100 / H200), embedded in the
//! library and JIT-compiled by the driver when first used. The CPU build runs nothing.
//! nvcc: $NVCC, else $CUDA_HOME/bin/nvcc, else `nvcc` on PATH (tools/cuda/build.sh sets NVCC).
//!
//! It also tells the tests what this machine lacks, so that a test that cannot run shows as
//! ignored in the summary instead of passing without checking: `no_cxx` (no C++ compiler for
//! the CUDA host emulation), `no_avx512` (the native f32 GEMM is not there to compare). Under
//! `CI` it sets neither: there every test runs, and fails if what it needs is missing.
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["flash_attention", "fused_ops"];

/// `cfg(name)` for the tests when `missing` and not under CI.
fn lacks(name: &str, missing: bool) {
    println!("cargo::rustc-check-cfg=cfg({name})");
    if missing && std::env::var_os("CI").is_none() {
        println!("cargo:rustc-cfg={name}");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-env-changed=CXX");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    lacks(
        "no_cxx",
        !Command::new(&cxx)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
    );
    #[cfg(target_arch = "x86_64")]
    lacks("no_avx512", !std::arch::is_x86_feature_detected!("avx512f"));
    #[cfg(not(target_arch = "x86_64"))]
    lacks("no_avx512", true);
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
