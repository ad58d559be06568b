//! The shipped systemd units (`deploy/`): each passes `systemd-analyze verify` (with its
//! binary pointed at the one just built) and scores an exposure of at most 2.0 in
//! `systemd-analyze security` — the hardening is checked, not just written down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

use portcullis_tests::bin;

const UNITS: [&str; 5] = [
    "portcullisd.service",
    "portcullisd-ca.service",
    "portcullisd-bastion.service",
    "portcullisd-agent.service",
    "portcullis-enroll-refresh.service",
];

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `Overall exposure level for NAME: 1.1 OK` → 1.1
fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd) is missing");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{out:?}"));
    let value = line.rsplit(':').next().unwrap().split_whitespace().next().unwrap();
    value.parse().unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn every_shipped_unit_verifies_and_scores_at_most_2_0() {
    let dir = tempfile::tempdir().unwrap();
    for name in UNITS.iter().chain(&["portcullis-enroll-refresh.timer"]) {
        let text = std::fs::read_to_string(deploy().join(name)).unwrap();
        // The units name the installed paths; verify against the binaries just built.
        let text = text
            .replace("/usr/bin/portcullisd", &bin("portcullisd").display().to_string())
            .replace("ExecStart=portcullis-enroll", &format!("ExecStart={}", bin("portcullis-enroll").display()));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    for name in UNITS {
        let unit = dir.path().join(name);
        let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && !said.contains(name), "{name}: systemd-analyze verify:\n{said}");
        let score = exposure(&unit);
        eprintln!("{name}: exposure {score}");
        assert!(score <= 2.0, "{name}: exposure {score} > 2.0");
    }
}
