//! The CUDA kernels of cuda/*.cu run on the CPU under cuda/emulate.hpp (every thread of a block a
//! host thread, WMMA emulated per warp), checked against a double-precision reference by
//! cuda/emulate_test.cpp. This tests the kernels' indexing, synchronisation and online softmax on
//! machines with no GPU; speed and the real tensor cores are checked on a GPU
//! (examples/cuda_attention_check.rs, tools/device/gpu-check.sh).
//!
//! Needs a C++20 compiler (`c++`, or $CXX); where build.rs found none the test is ignored
//! (under CI it runs, and fails).
use std::path::Path;
use std::process::Command;

#[test]
#[cfg_attr(no_cxx, ignore = "no C++ compiler (c++ or $CXX) for the host emulation")]
fn flash_attention_kernel_matches_the_reference_under_emulation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let tmp = std::env::temp_dir().join(format!("pixart-cuda-emulated-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let exe = tmp.join("flash_attention_emulated");
    let built = match Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-o"])
        .arg(&exe)
        .arg(dir.join("emulate_test.cpp"))
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("no C++ compiler ({cxx}: {e}): the CUDA kernels' host emulation cannot run"),
    };
    assert!(
        built.status.success(),
        "{cxx} failed on cuda/emulate_test.cpp:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        run.status.success(),
        "emulated flash attention out of tolerance:\n{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("all cases passed"), "{stdout}");
}
