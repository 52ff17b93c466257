//! Memory figures for benchmarks and summaries.

/// Peak resident set size of this process in bytes (`VmHWM`), or `None` where the platform
/// does not report it.
pub fn peak_rss_bytes() -> Option<u64> {
    read_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size of this process in bytes (`VmRSS`).
pub fn current_rss_bytes() -> Option<u64> {
    read_status_kib("VmRSS:").map(|kib| kib * 1024)
}

fn read_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.trim_start_matches(key)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Tunes glibc's allocator for tensor work: every block comes from the heap (no `mmap` per
/// allocation, whatever its size) and freed memory is kept (up to 1 GiB at the top of the heap)
/// instead of being returned to the system at once. Without this every large temporary tensor
/// is a new mapping whose pages the kernel must fault in and zero, and unmap when it is freed:
/// a fifth of a CPU training step, about a tenth of an f32 transformer forward at 256 px and of
/// a 512 px VAE decode (`pixart bench`, 2026-11-26). Freed blocks are reused by later
/// allocations, so the peak resident memory stays that of the live tensors plus some
/// fragmentation (+3 % on the VAE decode). No effect off glibc, or with
/// `PIXART_MALLOC=default` (glibc's own settings, for comparisons).
pub fn tune_allocator() {
    if std::env::var("PIXART_MALLOC").is_ok_and(|v| v == "default") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
