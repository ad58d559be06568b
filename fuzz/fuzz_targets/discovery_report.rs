//! Hardware-discovery output as a node's discovery command prints it: the node is the
//! peer here, and a compromised node must not crash the bastion or the CA.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_discovery::{drift, parse_report};

fuzz_target!(|data: &[u8]| {
    if let Ok(facts) = parse_report(data) {
        // Facts compared with themselves never drift.
        assert!(drift(&facts, &facts).is_empty());
    }
});
