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
    let kib = |key: &str| meminfo_kib(&info, key);
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

/// How much more memory this process may take, and which limit says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Bytes beyond what the process holds now.
    pub bytes: u64,
    /// The limit that gives [`Self::bytes`]: the tightest of those below.
    pub limit: &'static str,
}

/// What this process may still allocate: the tightest of its cgroup's memory limit (v2
/// `memory.max`, v1 `memory.limit_in_bytes`, less what it holds now), its address-space limit
/// (`ulimit -v`, less its virtual size) and the machine's available memory and free swap
/// (`/proc/meminfo`); `None` where the platform reports none of them.
pub fn allowance() -> Option<Allowance> {
    let rss = current_rss_bytes().unwrap_or(0);
    let mut best: Option<Allowance> = None;
    let mut consider = |bytes: u64, limit: &'static str| {
        if best.is_none_or(|b| bytes < b.bytes) {
            best = Some(Allowance { bytes, limit });
        }
    };
    if let Some(max) = cgroup_memory_limit() {
        consider(max.saturating_sub(rss), "the cgroup's memory limit");
    }
    if let Some(limit) = address_space_limit() {
        let size = read_status_kib("VmSize:").map_or(0, |kib| kib * 1024);
        consider(limit.saturating_sub(size), "the address-space limit (ulimit -v)");
    }
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        let kib = |key: &str| meminfo_kib(&info, key);
        if let Some(available) = kib("MemAvailable:") {
            let swap = kib("SwapFree:").unwrap_or(0);
            consider(
                (available + swap) * 1024,
                "the machine's available memory and free swap",
            );
        }
    }
    best
}

fn meminfo_kib(info: &str, key: &str) -> Option<u64> {
    let line = info.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// The memory limit of this process's cgroup in bytes (`None` when unlimited or unknown).
fn cgroup_memory_limit() -> Option<u64> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in groups.lines() {
        // v2: `0::/PATH`; v1: `N:memory:/PATH` (also `N:cpu,memory:/PATH`).
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        let text = std::fs::read_to_string(&file).ok()?;
        // "max" (v2) or a huge number (v1, no limit): unlimited.
        return text.trim().parse::<u64>().ok().filter(|&b| b < 1 << 60);
    }
    None
}

/// The address-space limit (`RLIMIT_AS`, `ulimit -v`) in bytes, `None` when unlimited.
fn address_space_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0;
        (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// The global allocator of the binaries: the system's, but an allocation that fails (the
/// memory estimate before the work let it through, or there is none for this work) ends the
/// process with one line on stderr and exit status 2, instead of Rust's abort with "memory
/// allocation of N bytes failed" and a backtrace (exit 134). Nothing half-written stays
/// behind: outputs are written through temp files, which the next run removes.
pub struct ExitOnAllocFailure;

impl ExitOnAllocFailure {
    #[cold]
    fn fail(size: usize) -> ! {
        // No allocation from here on: the message is put together on the stack.
        let mut buf = [0u8; 200];
        let mut n = 0;
        let mut put = |bytes: &[u8]| {
            let k = bytes.len().min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&bytes[..k]);
            n += k;
        };
        put(b"error: out of memory: an allocation of ");
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = size;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        put(&digits[i..]);
        put(b" bytes failed (try a smaller size or batch, --vae-tiling on, or a bf16 --dtype)\n");
        // SAFETY: writes a stack buffer to stderr and ends the process without unwinding.
        unsafe {
            libc::write(2, buf.as_ptr().cast(), n);
            libc::_exit(2)
        }
    }
}

// SAFETY: every call is forwarded to the system allocator with the same layout; only a null
// result is turned into the exit above.
unsafe impl std::alloc::GlobalAlloc for ExitOnAllocFailure {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if p.is_null() {
            Self::fail(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc_zeroed(layout) };
        if p.is_null() {
            Self::fail(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            Self::fail(new_size);
        }
        p
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

    #[test]
    fn the_allowance_is_the_tightest_limit() {
        let a = super::allowance().expect("/proc/meminfo");
        assert!(a.bytes > 0 && !a.limit.is_empty(), "{a:?}");
        // Never more than the machine has.
        assert!(a.bytes <= super::machine_memory_bytes().unwrap(), "{a:?}");
    }
}
