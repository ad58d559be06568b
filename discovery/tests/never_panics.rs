//! The parsers take bytes from a node that may be hostile: whatever arrives, they return
//! `Ok` or `Err`, never panic.

use portcullis_discovery::*;
use proptest::prelude::*;

fn all_parsers(input: &[u8]) {
    let _ = parse_dmi_system(input);
    let _ = parse_dmi_chassis(input);
    let _ = parse_ip_link(input);
    let _ = parse_ethtool("eno1", input);
    let _ = parse_ethtool_driver(input);
}

/// Lines that look like real output, so the search reaches deep into the parsers instead
/// of stopping at the first malformed byte.
fn plausible_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("System Information".to_owned()),
        Just("Chassis Information".to_owned()),
        Just("Settings for eno1:".to_owned()),
        "\t(Manufacturer|Serial Number|UUID|Type|Asset Tag|Speed|Duplex|Link detected): [ -~]{0,40}",
        "\t\t[ -~]{0,20}",
        "(driver|firmware-version|bus-info): [ -~]{0,20}",
        "[0-9]{1,3}: [a-z0-9.@]{1,18}: <[A-Z_,]{0,20}>( (mtu|state|master|link/ether|permaddr|altname|link/none) [ -~]{0,20}){0,6}",
        "[ -~\t]{0,60}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        all_parsers(&input);
    }

    #[test]
    fn arbitrary_text_never_panics(input in "\\PC{0,512}") {
        all_parsers(input.as_bytes());
    }

    #[test]
    fn plausible_output_never_panics(lines in proptest::collection::vec(plausible_line(), 0..30)) {
        let text = lines.join("\n");
        all_parsers(text.as_bytes());
        // Whatever parses must also drift against itself as "no change".
        if let (Ok(sys), Ok(links)) = (parse_dmi_system(text.as_bytes()), parse_ip_link(text.as_bytes())) {
            let facts = HardwareFacts::new(sys, ChassisInfo::default(), links);
            prop_assert!(drift(&facts, &facts.clone()).is_empty());
        }
    }
}
