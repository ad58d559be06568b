//! Whole discovery reports: the section splitter, the physical-NIC filter, and refusals.

use portcullis_discovery::*;

const QEMU_T1: &str = "# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 2.8 present.

Handle 0x0100, DMI type 1, 27 bytes
System Information
\tManufacturer: QEMU
\tProduct Name: Standard PC (Q35 + ICH9, 2009)
\tVersion: pc-q35-8.1
\tSerial Number: Not Specified
\tUUID: 6a1f7e0c-94b5-4c7e-9f55-0a1b2c3d4e5f
\tWake-up Type: Power Switch
\tSKU Number: Not Specified
\tFamily: Not Specified
";

const SUPERMICRO_T3: &str = "Handle 0x0003, DMI type 3, 22 bytes
Chassis Information
\tManufacturer: Supermicro
\tType: Rack Mount Chassis
\tLock: Not Present
\tVersion: 0123456789
\tSerial Number: C8270AB12A34567
\tAsset Tag: To be filled by O.E.M.
";

const PVE_LINKS: &str = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
2: eno1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq master vmbr0 state UP mode DEFAULT group default qlen 1000\\    link/ether 24:6e:96:12:34:56 brd ff:ff:ff:ff:ff:ff\\    altname enp24s0f0
3: vmbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 24:6e:96:12:34:56 brd ff:ff:ff:ff:ff:ff
4: tap100i0: <BROADCAST,MULTICAST,PROMISC,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast master vmbr0 state UNKNOWN mode DEFAULT group default qlen 1000\\    link/ether 9e:21:aa:bb:cc:dd brd ff:ff:ff:ff:ff:ff
";

const ETHTOOL_ENO1: &str = "Settings for eno1:
\tSupported ports: [ TP ]
\tSpeed: 1000Mb/s
\tDuplex: Full
\tAuto-negotiation: on
\tLink detected: yes
";

const DRIVER_ENO1: &str = "driver: tg3
version: 6.8.12-4-pve
firmware-version: FFV21.80.8 bc 5720-v1.39
bus-info: 0000:04:00.0
supports-statistics: yes
";

const DRIVER_TAP: &str = "driver: tun
version: 1.6
firmware-version: 
bus-info: tap
";

fn report(sections: &[(&str, &str)]) -> String {
    let mut out = format!("{REPORT_HEADER}\n");
    for (name, body) in sections {
        out.push_str(&format!("@@section {name}\n{body}"));
    }
    out.push_str(REPORT_END);
    out.push('\n');
    out
}

fn full() -> String {
    report(&[
        ("dmidecode-t1", QEMU_T1),
        ("dmidecode-t3", SUPERMICRO_T3),
        ("ip-link", PVE_LINKS),
        ("ethtool eno1", ETHTOOL_ENO1),
        ("ethtool-i eno1", DRIVER_ENO1),
        ("ethtool-i tap100i0", DRIVER_TAP),
        ("ethtool-i vmbr0", ""),
    ])
}

#[test]
fn whole_report_keeps_only_physical_nics() {
    let facts = parse_report(full().as_bytes()).unwrap();
    assert_eq!(facts.system.manufacturer.as_deref(), Some("QEMU"));
    assert_eq!(facts.chassis.serial.as_deref(), Some("C8270AB12A34567"));
    assert_eq!(facts.nics.keys().collect::<Vec<_>>(), vec!["eno1"]);
    let eno1 = &facts.nics["eno1"];
    assert_eq!(eno1.driver.as_ref().unwrap().driver, "tg3");
    assert_eq!(eno1.settings.as_ref().unwrap().speed_mbps, Some(1000));
    // Same bytes twice: no drift.
    assert!(drift(&facts, &parse_report(full().as_bytes()).unwrap()).is_empty());
}

#[test]
fn a_new_guest_interface_is_not_drift() {
    let before = parse_report(full().as_bytes()).unwrap();
    let links = format!(
        "{PVE_LINKS}5: veth101i0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master fwbr101i0 state UP mode DEFAULT group default qlen 1000\\    link/ether fe:5a:11:22:33:44 brd ff:ff:ff:ff:ff:ff link-netnsid 0\n"
    );
    let after = report(&[
        ("dmidecode-t1", QEMU_T1),
        ("dmidecode-t3", SUPERMICRO_T3),
        ("ip-link", &links),
        ("ethtool eno1", ETHTOOL_ENO1),
        ("ethtool-i eno1", DRIVER_ENO1),
        ("ethtool-i veth101i0", "driver: veth\nversion: 1.0\nbus-info: \n"),
    ]);
    assert!(drift(&before, &parse_report(after.as_bytes()).unwrap()).is_empty());
}

#[test]
fn changed_speed_is_drift() {
    let before = parse_report(full().as_bytes()).unwrap();
    let slower = full().replace("Speed: 1000Mb/s", "Speed: 100Mb/s");
    let changes = drift(&before, &parse_report(slower.as_bytes()).unwrap());
    assert_eq!(
        changes,
        vec![Change::Changed { field: "nic.eno1.speed_mbps".into(), old: "1000".into(), new: "100".into() }]
    );
}

#[test]
fn missing_sections_and_markers_are_refused() {
    let no_chassis = report(&[("dmidecode-t1", QEMU_T1), ("ip-link", PVE_LINKS)]);
    assert_eq!(parse_report(no_chassis.as_bytes()), Err(ReportError::MissingSection("dmidecode-t3")));
    let truncated = full().replace("@@end\n", "");
    assert_eq!(parse_report(truncated.as_bytes()), Err(ReportError::Truncated));
    assert_eq!(parse_report(truncated.as_bytes()).unwrap_err().code(), "output_truncated");
    let after_end = format!("{}trailing\n", full());
    assert_eq!(parse_report(after_end.as_bytes()), Err(ReportError::Truncated));
    let no_header = full().replacen(REPORT_HEADER, "", 1);
    assert_eq!(parse_report(no_header.as_bytes()), Err(ReportError::NoHeader));
    let twice = full().replace("@@section ethtool-i vmbr0", "@@section ethtool-i eno1");
    assert!(matches!(parse_report(twice.as_bytes()), Err(ReportError::DuplicateSection { .. })));
    let unknown = full().replace("@@section ethtool-i vmbr0", "@@section reboot now");
    assert!(matches!(parse_report(unknown.as_bytes()), Err(ReportError::UnknownSection { .. })));
    let bad_iface = full().replace("@@section ethtool-i vmbr0", "@@section ethtool-i ../../x");
    assert!(matches!(parse_report(bad_iface.as_bytes()), Err(ReportError::UnknownSection { .. })));
    // ethtool for an interface `ip -o link` never listed.
    let ghost = full().replace("@@section ethtool-i vmbr0", "@@section ethtool-i eno9");
    let ghost = ghost.replace("@@end", &format!("@@section ethtool-i eno7\n{DRIVER_ENO1}@@end"));
    assert!(matches!(parse_report(ghost.as_bytes()), Err(ReportError::Parse(ParseError::UnknownInterface { .. }))));
}

#[test]
fn empty_dmidecode_gives_no_system_facts_but_keeps_the_nics() {
    // `sudo -n` failed, or no SMBIOS: the sections are there but empty.
    let r = report(&[
        ("dmidecode-t1", ""),
        ("dmidecode-t3", "\n"),
        ("ip-link", PVE_LINKS),
        ("ethtool eno1", ETHTOOL_ENO1),
        ("ethtool-i eno1", DRIVER_ENO1),
    ]);
    let facts = parse_report(r.as_bytes()).unwrap();
    assert!(facts.lacks_dmi());
    assert_eq!(facts.nics.keys().collect::<Vec<_>>(), ["eno1"]);
    assert!(!parse_report(full().as_bytes()).unwrap().lacks_dmi());
    // What dmidecode did print is still parsed strictly.
    let r = report(&[("dmidecode-t1", "garbage\n"), ("dmidecode-t3", ""), ("ip-link", PVE_LINKS)]);
    assert!(matches!(parse_report(r.as_bytes()), Err(ReportError::Parse(_))));
}

#[test]
fn garbage_is_refused() {
    for garbage in [&b""[..], b"\xff\xfe\x00", b"hello\n", b"@@portcullis-discovery v1\nrm -rf /\n@@end\n"] {
        let err = parse_report(garbage).unwrap_err();
        assert_eq!(err.code(), "output_invalid", "{err:?}");
    }
    let with_nul = full().replace("Manufacturer: QEMU", "Manufacturer: QE\0MU");
    assert!(parse_report(with_nul.as_bytes()).is_err());
}

#[test]
fn huge_output_is_refused() {
    let huge = full().replace("@@end", &format!("@@section ethtool-i vmbr9\n{}\n@@end", "x".repeat(MAX_REPORT_BYTES)));
    let err = parse_report(huge.as_bytes()).unwrap_err();
    assert!(matches!(err, ReportError::TooLarge { .. }));
    assert_eq!(err.code(), "output_too_large");
}
