//! Where the workspace's binaries are: next to the test executable's `deps/` directory.

use std::path::PathBuf;

/// `target/{debug,release}/<name>` for the profile this test was built with.
///
/// Panics with a hint when the binary has not been built: integration tests run the
/// real binaries, and `cargo test` / `cargo nextest` do not build other packages' bins.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("cannot find the test executable");
    // …/target/debug/deps/<test-binary> → …/target/debug
    let profile_dir =
        exe.parent().and_then(|deps| deps.parent()).expect("test executable has no grandparent directory");
    let path = profile_dir.join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --bins` first (./scripts/test.sh does)", path.display());
    path
}
