//! Writing files atomically: a temp file beside the target, fsync, rename (links are
//! followed and kept, devices and FIFOs written in place, folders refused).
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::{Error, Result};

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename, fsync
/// of the folder. A reader (or a crash) sees either the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let target = match output_target(path)? {
        Target::File(t) => t,
        Target::Stream(t) => return write_stream(path, &t, bytes),
    };
    let tmp = temp_path(&target);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        // A replaced file keeps its mode.
        if let Ok(m) = std::fs::metadata(&target) {
            f.set_permissions(m.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        sync_parent(&target);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(path, e))
}

/// Saves tensors as safetensors at `path`, atomically (see [`write_atomic`]).
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let target = match output_target(path)? {
        Target::File(t) => t,
        Target::Stream(t) => {
            let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
                .map_err(|e| Error::weights(path, format!("cannot serialise: {e}")))?;
            return write_stream(path, &t, &bytes);
        }
    };
    let tmp = temp_path(&target);
    let result = candle_core::safetensors::save(tensors, &tmp)
        .map_err(|e| match e {
            // The temp file's name means nothing to the user: name the output.
            candle_core::Error::Io(io) => Error::io(path, io),
            e => Error::from(e),
        })
        .and_then(|()| {
            // The safetensors crate writes through a private (0600) temp file: give the file
            // the mode a plain create would (or the replaced file's).
            let mode = std::fs::metadata(&target).map_or_else(|_| 0o666 & !umask(), |m| m.permissions().mode());
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))?;
            let f = std::fs::File::open(&tmp).map_err(|e| Error::io(path, e))?;
            f.sync_all().map_err(|e| Error::io(path, e))?;
            std::fs::rename(&tmp, &target).map_err(|e| Error::io(path, e))?;
            sync_parent(&target);
            Ok(())
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Where a write lands.
enum Target {
    /// A regular file (or none yet): written atomically.
    File(PathBuf),
    /// A character device or FIFO (`/dev/null`, `/dev/stdout` into a pipe): written in place,
    /// since renaming over it would replace it.
    Stream(PathBuf),
}

/// `path`, or the file a symbolic link there points to (the link is kept, as an editor saving
/// through it would keep it), and how to write it. A folder is refused.
fn output_target(path: &Path) -> Result<Target> {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let target = if is_link {
        match std::fs::canonicalize(path) {
            Ok(t) => t,
            // A dangling link: the file it names is created.
            Err(_) => {
                let link = std::fs::read_link(path).map_err(|e| Error::io(path, e))?;
                path.parent().map_or(link.clone(), |dir| dir.join(&link))
            }
        }
    } else {
        path.to_path_buf()
    };
    match std::fs::metadata(&target) {
        Ok(m) if m.is_dir() => Err(Error::InvalidInput(format!(
            "{}: is a folder, not a file to write",
            path.display()
        ))),
        Ok(m) if !m.is_file() => {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            if t.is_char_device() || t.is_fifo() {
                Ok(Target::Stream(target))
            } else {
                Err(Error::InvalidInput(format!(
                    "{}: exists and is not a file to write",
                    path.display()
                )))
            }
        }
        _ => {
            // A link into a folder that does not exist (the caller checks `path`'s own folder).
            if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
                return Err(Error::InvalidInput(format!(
                    "{}: the folder it writes into ({}) does not exist",
                    path.display(),
                    dir.display()
                )));
            }
            Ok(Target::File(target))
        }
    }
}

/// The process's file mode creation mask (from /proc/self/status; 022 where unknown).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Checks, before any work, that the write functions here can write `path` (it is not a
/// folder or a socket); the folder it is in is the caller's to check.
pub fn check_output_path(path: &Path) -> Result<()> {
    if path.as_os_str().to_string_lossy().ends_with('/') {
        return Err(Error::InvalidInput(format!(
            "{}: names a folder; give the name of a file to write",
            path.display()
        )));
    }
    match output_target(path)? {
        // Whether the folder takes a new file: the temporary file the atomic write would make
        // (e.g. /proc refuses it), made and removed now, before the work.
        Target::File(target) => {
            let probe = temp_path(&target);
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&probe)
                .map_err(|e| Error::InvalidInput(format!("{}: cannot be written there ({e})", path.display())))?;
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Target::Stream(_) => Ok(()),
    }
}

/// Writes `bytes` into a device or FIFO.
fn write_stream(path: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.flush())
        .map_err(|e| Error::io(path, e))
}

/// Removes the temp files [`write_atomic`] and [`save_safetensors`] leave in `dir` when their
/// process was killed (`.NAME.tmp-PID` whose PID runs no process, last written over a minute
/// ago, so that a write in progress elsewhere on a shared folder is left alone); returns the
/// files removed. Errors are ignored: this is tidying, not the work.
pub fn remove_stale_temp_files(dir: &Path) -> Vec<PathBuf> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp-"))
            .filter(|(stem, _)| !stem.is_empty())
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let running = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        let old = entry
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() >= 60);
        if !running && old && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output paths that fail only when the work is done are refused before it: a folder name
    /// (`-o newdir/`), a file in a folder that takes no new file (`-o /proc/version`).
    #[test]
    fn output_paths_that_cannot_be_written_are_refused_up_front() {
        let dir = std::env::temp_dir().join(format!("pixart-check-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let slash = format!("{}/", dir.join("newdir").display());
        let e = check_output_path(Path::new(&slash)).unwrap_err().to_string();
        assert!(e.contains("names a folder"), "{e}");
        if Path::new("/proc/version").exists() {
            assert!(check_output_path(Path::new("/proc/version")).is_err());
        }
        let fine = dir.join("out.png");
        check_output_path(&fine).unwrap();
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).ok();
    }

    use candle_core::{DType, Device};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pixart-core-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_go_through_links_into_streams_and_never_over_folders() {
        let d = scratch("out");
        // A link is kept; the file it points to receives the bytes.
        std::fs::write(d.join("target.png"), b"old").unwrap();
        std::os::unix::fs::symlink("target.png", d.join("link.png")).unwrap();
        write_atomic(&d.join("link.png"), b"new").unwrap();
        assert!(std::fs::symlink_metadata(d.join("link.png"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(d.join("target.png")).unwrap(), b"new");
        // A dangling link creates its target.
        std::os::unix::fs::symlink("later.png", d.join("dangling.png")).unwrap();
        write_atomic(&d.join("dangling.png"), b"x").unwrap();
        assert_eq!(std::fs::read(d.join("later.png")).unwrap(), b"x");
        // A folder is refused, and left alone.
        std::fs::create_dir(d.join("dir.png")).unwrap();
        let e = write_atomic(&d.join("dir.png"), b"x").unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        assert!(check_output_path(&d.join("dir.png")).is_err());
        assert!(d.join("dir.png").is_dir());
        // A device is written in place, not replaced.
        write_atomic(Path::new("/dev/null"), b"x").unwrap();
        let map = HashMap::from([("t".to_string(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap())]);
        save_safetensors(&map, Path::new("/dev/null")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        // A full device reports the failure.
        if Path::new("/dev/full").exists() {
            let e = write_atomic(Path::new("/dev/full"), b"x").unwrap_err().to_string();
            assert!(e.starts_with("/dev/full: "), "{e}");
        }
        // A link into a missing folder is refused before any write.
        std::os::unix::fs::symlink("no-such-dir/t.png", d.join("into-nowhere.png")).unwrap();
        let e = check_output_path(&d.join("into-nowhere.png")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        // safetensors files get the mode of a plain create, or the replaced file's.
        let st = d.join("w.safetensors");
        save_safetensors(&map, &st).unwrap();
        assert_eq!(
            std::fs::metadata(&st).unwrap().permissions().mode() & 0o777,
            0o666 & !umask()
        );
        std::fs::set_permissions(&st, std::fs::Permissions::from_mode(0o640)).unwrap();
        save_safetensors(&map, &st).unwrap();
        assert_eq!(std::fs::metadata(&st).unwrap().permissions().mode() & 0o777, 0o640);
        // No temp files are left anywhere.
        let left: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn temp_files_of_killed_writers_are_removed() {
        let d = scratch("stale");
        let dead = dead_pid();
        let aged = |name: &str, seconds_ago: u64| {
            let p = d.join(name);
            let f = std::fs::File::create(&p).unwrap();
            f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(seconds_ago))
                .unwrap();
            p
        };
        // Left by a preview write killed with SIGKILL: removed.
        let stale = aged(&format!(".live.png.tmp-{dead}"), 3600);
        // A running process's (ours), a fresh one, and files that only look alike: kept.
        let ours = aged(&format!(".live.png.tmp-{}", std::process::id()), 3600);
        let fresh = aged(&format!(".other.png.tmp-{dead}"), 0);
        let user = aged("notes.tmp-12", 3600);
        let odd = aged(&format!(".x.tmp-{dead}a"), 3600);
        assert_eq!(remove_stale_temp_files(&d), vec![stale.clone()]);
        assert!(!stale.exists());
        for kept in [ours, fresh, user, odd] {
            assert!(kept.exists(), "{}", kept.display());
        }
        std::fs::remove_dir_all(&d).ok();
    }

    /// A PID no process has now.
    fn dead_pid() -> u32 {
        (4_000_000..u32::MAX)
            .find(|p| !Path::new(&format!("/proc/{p}")).exists())
            .unwrap()
    }
}
