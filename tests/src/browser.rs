//! The browser scripts in `tests/browser/` (playwright-core driving Debian's headless
//! Chromium): where they live, where their screenshots go, and how a test runs one.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Debian's Chromium: the scripts never download a browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `tests/browser/`, the scripts and their `node_modules`.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `target/test-artifacts/`, where screenshots are kept for a failed run's reader.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where the scripts keep their screenshots: the test artifacts, or with
/// `PORTCULLIS_UPDATE_SCREENSHOTS=1` the README's walkthrough in `docs/screenshots/`.
pub fn screenshots() -> PathBuf {
    if std::env::var_os("PORTCULLIS_UPDATE_SCREENSHOTS").is_some() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        return dir;
    }
    artifacts()
}

/// Runs `tests/browser/<script>` with `config` as its one argument; its JSON report.
/// A missing Chromium or playwright-core fails the test (never a skip).
pub fn run_script(script: &str, config: &Value) -> Value {
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} missing: run ./scripts/test.sh, which installs chromium");
    assert!(
        scripts_dir().join("node_modules/playwright-core").exists(),
        "playwright-core missing: run ./scripts/test.sh (npm ci --prefix tests/browser)"
    );
    let out = std::process::Command::new("node")
        .arg(script)
        .arg(config.to_string())
        .current_dir(scripts_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|_| panic!("browser script: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
}
