//! Per-stage timing of the transformer forward (`pixart bench transformer --profile`).
//!
//! Off by default: a stage then costs one relaxed atomic load. When on, the device is
//! synchronised before and after every stage, so that a GPU's time lands on the stage that queued
//! the work (at the price of a launch bubble per stage, a few µs). Stages do not nest: each
//! label times leaf work (a projection, the attention core, a fused norm), and the labels of one
//! forward add up to nearly all of it.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;

static ON: AtomicBool = AtomicBool::new(false);
/// (label, seconds, calls), in the order the labels were first seen.
static TIMES: Mutex<Vec<(&'static str, f64, usize)>> = Mutex::new(Vec::new());

/// Turns the timing of stages on or off (for the whole process).
pub fn set_enabled(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Runs `f`, adding its time to `label` when profiling is on.
pub fn stage<T, E: From<candle_core::Error>>(
    label: &'static str,
    dev: &Device,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    if !ON.load(Ordering::Relaxed) {
        return f();
    }
    dev.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    dev.synchronize()?;
    let s = start.elapsed().as_secs_f64();
    let mut times = TIMES.lock().unwrap_or_else(|e| e.into_inner());
    match times.iter_mut().find(|(l, ..)| *l == label) {
        Some(entry) => {
            entry.1 += s;
            entry.2 += 1;
        }
        None => times.push((label, s, 1)),
    }
    Ok(out)
}

/// The accumulated (label, seconds, calls) since the last call, and a reset.
pub fn take() -> Vec<(&'static str, f64, usize)> {
    std::mem::take(&mut *TIMES.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Tests that switch profiling on hold this, so that they do not see each other's stages.
#[cfg(test)]
pub(crate) static TEST_LOCK: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_accumulate_only_when_on() {
        let _serial = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dev = Device::Cpu;
        let sleep = |ms| {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok::<_, candle_core::Error>(())
        };
        // Other tests of this binary may run stages meanwhile: look at this test's labels only.
        let mine = |t: Vec<(&'static str, f64, usize)>| -> Vec<(&'static str, f64, usize)> {
            t.into_iter().filter(|(l, ..)| l.starts_with("profile-test")).collect()
        };
        stage("profile-test-off", &dev, || sleep(1)).unwrap();
        assert!(mine(take()).is_empty());
        set_enabled(true);
        stage("profile-test-a", &dev, || sleep(5)).unwrap();
        stage("profile-test-b", &dev, || sleep(1)).unwrap();
        stage("profile-test-a", &dev, || sleep(5)).unwrap();
        set_enabled(false);
        let t = mine(take());
        let counts: Vec<_> = t.iter().map(|(l, _, n)| (*l, *n)).collect();
        assert_eq!(counts, [("profile-test-a", 2), ("profile-test-b", 1)]);
        assert!(t[0].1 >= 0.010 && t[1].1 >= 0.001, "{t:?}");
        // An error inside a stage is passed on.
        set_enabled(true);
        let r: candle_core::Result<()> = stage("profile-test-err", &dev, || candle_core::bail!("boom"));
        set_enabled(false);
        assert!(r.is_err());
    }
}
