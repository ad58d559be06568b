//! sshd_config text as `portcullis-enroll` reads a node's files before changing them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = portcullis_enroll::sshd_config::parse(text, Path::new("/etc/ssh/sshd_config"));
});
