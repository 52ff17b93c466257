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

/// Memory this machine can give a process: RAM plus swap (`/proc/meminfo`), or `None` where
/// the platform does not say.
pub fn machine_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)) * 1024)
}

/// Refuses to allocate `bytes` for `what` when this machine's memory cannot hold them (an
/// allocation that large would abort the process instead of failing with a message).
pub fn check_fits(bytes: u128, what: &str) -> std::result::Result<(), String> {
    let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
    match machine_memory_bytes() {
        Some(total) if bytes > total as u128 => Err(format!(
            "{what} need {:.1} GiB, more than this machine's memory ({:.1} GiB with swap)",
            gib(bytes),
            gib(total as u128)
        )),
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn memory_checks_refuse_what_cannot_be_held() {
        let total = super::machine_memory_bytes().expect("/proc/meminfo");
        assert!(total > 0);
        assert!(super::check_fits(1 << 20, "a small thing").is_ok());
        let e = super::check_fits(total as u128 * 2, "the weights").unwrap_err();
        assert!(
            e.starts_with("the weights need ") && e.contains("more than this machine's memory"),
            "{e}"
        );
    }
}
