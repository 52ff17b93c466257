//! Tells the tests what this machine lacks, so that a test that cannot run shows as ignored in
//! the summary instead of passing without checking: `no_chromium` (no `chromium` or
//! `chromium-browser` on PATH for tests/serve_browser.rs; tools/ci/install-chromium.sh installs
//! Debian's). Under `CI` it is never set: there the browser test runs, installs Chromium when
//! missing, and fails when it cannot.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-env-changed=PATH");
    // Debian's package installs here: a new install is seen without a PATH change.
    if std::path::Path::new("/usr/bin").is_dir() {
        println!("cargo:rerun-if-changed=/usr/bin/chromium");
    }
    println!("cargo::rustc-check-cfg=cfg(no_chromium)");
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| ["chromium", "chromium-browser"].iter().any(|n| d.join(n).is_file()))
    });
    if !found && std::env::var_os("CI").is_none() {
        println!("cargo:rustc-cfg=no_chromium");
    }
}
