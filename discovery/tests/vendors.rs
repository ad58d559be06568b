//! Parser tests on real-world output shapes from several vendors, written inline.

use portcullis_discovery::*;

const DELL_T1: &str = "# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 3.2.0 present.

Handle 0x0100, DMI type 1, 27 bytes
System Information
\tManufacturer: Dell Inc.
\tProduct Name: PowerEdge R640
\tVersion: Not Specified
\tSerial Number: 7XYZ123
\tUUID: 4C4C4544-0058-5910-8033-B7C04F313233
\tWake-up Type: Power Switch
\tSKU Number: SKU=NotProvided;ModelName=PowerEdge R640
\tFamily: PowerEdge

Handle 0x0C00, DMI type 12, 5 bytes
System Configuration Options
\tOption 1: NVRAM_CLR:  Clear user settable NVRAM areas and set defaults
";

const DELL_T3: &str = "# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 3.2.0 present.

Handle 0x0300, DMI type 3, 22 bytes
Chassis Information
\tManufacturer: Dell Inc.
\tType: Rack Mount Chassis
\tLock: Present
\tVersion: Not Specified
\tSerial Number: 7XYZ123
\tAsset Tag: IT-000412
\tBoot-up State: Safe
\tPower Supply State: Safe
\tThermal State: Safe
\tSecurity Status: Unknown
\tOEM Information: 0x00000000
\tHeight: 1 U
\tNumber Of Power Cords: Unspecified
\tContained Elements: 0
\tSKU Number: Not Specified
";

const HPE_T1: &str = "# dmidecode 3.3
Getting SMBIOS data from sysfs.
SMBIOS 3.2 present.
# SMBIOS implementations newer than version 3.2.0 are not
# fully supported by this version of dmidecode.

Handle 0x0001, DMI type 1, 27 bytes
System Information
\tManufacturer: HPE
\tProduct Name: ProLiant DL380 Gen10
\tVersion: Not Specified
\tSerial Number: CZ2D1F0ABC
\tUUID: 38333537-3934-5a43-3244-314630414243
\tWake-up Type: Power Switch
\tSKU Number: 868703-B21
\tFamily: ProLiant
";

const HPE_T3: &str = "Handle 0x0003, DMI type 3, 21 bytes
Chassis Information
\tManufacturer: HPE
\tType: Rack Mount Chassis
\tLock: Not Present
\tVersion: Not Specified
\tSerial Number: CZ2D1F0ABC
\tAsset Tag:                                 
\tBoot-up State: Safe
\tContained Elements: 2
\t\t<OUT OF SPEC> (0)
\t\t<OUT OF SPEC> (0)
";

const SUPERMICRO_T1: &str = "# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 3.3.0 present.

Handle 0x0001, DMI type 1, 27 bytes
System Information
\tManufacturer: Supermicro
\tProduct Name: SYS-1029P-WTR
\tVersion: 0123456789
\tSerial Number: S123456X9A01234
\tUUID: 00000000-0000-0000-0000-AC1F6B123456
\tWake-up Type: Power Switch
\tSKU Number: To be filled by O.E.M.
\tFamily: To be filled by O.E.M.
";

const SUPERMICRO_T3: &str = "Handle 0x0003, DMI type 3, 22 bytes
Chassis Information
\tManufacturer: Supermicro
\tType: Other
\tLock: Not Present
\tVersion: 0123456789
\tSerial Number: C8170KH12A34567
\tAsset Tag: To be filled by O.E.M.
\tBoot-up State: Safe
";

const QEMU_T1: &str = "# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 2.8 present.

Handle 0x0100, DMI type 1, 27 bytes
System Information
\tManufacturer: QEMU
\tProduct Name: Standard PC (i440FX + PIIX, 1996)
\tVersion: pc-i440fx-8.1
\tSerial Number: Not Specified
\tUUID: 7d3b6c1e-2f4a-4b8e-9c0d-1e2f3a4b5c6d
\tWake-up Type: Power Switch
\tSKU Number: Not Specified
\tFamily: Not Specified
";

const QEMU_T3: &str = "Handle 0x0300, DMI type 3, 22 bytes
Chassis Information
\tManufacturer: QEMU
\tType: Other
\tLock: Not Present
\tVersion: pc-i440fx-8.1
\tSerial Number: Not Specified
\tAsset Tag: Not Specified
";

const CONSUMER_T1: &str = "# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 3.3.0 present.

Handle 0x0001, DMI type 1, 27 bytes
System Information
\tManufacturer: System manufacturer
\tProduct Name: System Product Name
\tVersion: System Version
\tSerial Number: System Serial Number
\tUUID: 03000200-0400-0500-0006-000700080009
\tWake-up Type: Power Switch
\tSKU Number: SKU
\tFamily: To Be Filled By O.E.M.
";

const CONSUMER_T3: &str = "Handle 0x0003, DMI type 3, 22 bytes
Chassis Information
\tManufacturer: Default string
\tType: Desktop
\tLock: Not Present
\tVersion: Default string
\tSerial Number: Default string
\tAsset Tag: Default string
";

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[test]
fn dell_poweredge() {
    let sys = parse_dmi_system(DELL_T1.as_bytes()).unwrap();
    assert_eq!(
        sys,
        SystemInfo {
            manufacturer: some("Dell Inc."),
            product: some("PowerEdge R640"),
            version: None,
            serial: some("7XYZ123"),
            uuid: some("4c4c4544-0058-5910-8033-b7c04f313233"),
            sku: some("SKU=NotProvided;ModelName=PowerEdge R640"),
            family: some("PowerEdge"),
        }
    );
    let chassis = parse_dmi_chassis(DELL_T3.as_bytes()).unwrap();
    assert_eq!(
        chassis,
        ChassisInfo {
            manufacturer: some("Dell Inc."),
            chassis_type: some("Rack Mount Chassis"),
            serial: some("7XYZ123"),
            asset_tag: some("IT-000412"),
        }
    );
}

#[test]
fn hpe_proliant() {
    let sys = parse_dmi_system(HPE_T1.as_bytes()).unwrap();
    assert_eq!(sys.manufacturer, some("HPE"));
    assert_eq!(sys.product, some("ProLiant DL380 Gen10"));
    assert_eq!(sys.serial, some("CZ2D1F0ABC"));
    assert_eq!(sys.sku, some("868703-B21"));
    let chassis = parse_dmi_chassis(HPE_T3.as_bytes()).unwrap();
    // A blank-padded asset tag is unset; list items under "Contained Elements" are skipped.
    assert_eq!(chassis.asset_tag, None);
    assert_eq!(chassis.serial, some("CZ2D1F0ABC"));
}

#[test]
fn supermicro_placeholders() {
    let sys = parse_dmi_system(SUPERMICRO_T1.as_bytes()).unwrap();
    assert_eq!(sys.version, None, "0123456789 is a placeholder");
    assert_eq!(sys.sku, None);
    assert_eq!(sys.family, None);
    // Partly-zero UUIDs are real (Supermicro embeds the BMC MAC); only all-zero is unset.
    assert_eq!(sys.uuid, some("00000000-0000-0000-0000-ac1f6b123456"));
    let chassis = parse_dmi_chassis(SUPERMICRO_T3.as_bytes()).unwrap();
    assert_eq!(chassis.chassis_type, some("Other"));
    assert_eq!(chassis.asset_tag, None);
    assert_eq!(chassis.serial, some("C8170KH12A34567"));
}

#[test]
fn qemu_vm() {
    let sys = parse_dmi_system(QEMU_T1.as_bytes()).unwrap();
    assert_eq!(sys.manufacturer, some("QEMU"));
    assert_eq!(sys.product, some("Standard PC (i440FX + PIIX, 1996)"));
    assert_eq!((sys.serial, sys.sku, sys.family), (None, None, None));
    let chassis = parse_dmi_chassis(QEMU_T3.as_bytes()).unwrap();
    assert_eq!((chassis.serial, chassis.asset_tag), (None, None));
}

#[test]
fn consumer_board_is_all_placeholders() {
    let sys = parse_dmi_system(CONSUMER_T1.as_bytes()).unwrap();
    assert_eq!(sys, SystemInfo { uuid: some("03000200-0400-0500-0006-000700080009"), ..SystemInfo::default() });
    let chassis = parse_dmi_chassis(CONSUMER_T3.as_bytes()).unwrap();
    assert_eq!(chassis, ChassisInfo { chassis_type: some("Desktop"), ..ChassisInfo::default() });
}

#[test]
fn missing_fields_and_sections() {
    let partial = "System Information\n\tManufacturer: Dell Inc.\n";
    let sys = parse_dmi_system(partial.as_bytes()).unwrap();
    assert_eq!(sys, SystemInfo { manufacturer: some("Dell Inc."), ..SystemInfo::default() });

    // dmidecode without privileges prints no section at all.
    let denied = "# dmidecode 3.4\n/sys/firmware/dmi/tables/smbios_entry_point: Permission denied\n\
                  Scanning /dev/mem for entry point.\n/dev/mem: Permission denied\n";
    assert_eq!(
        parse_dmi_system(denied.as_bytes()),
        Err(ParseError::MissingSection { command: Command::DmiSystem, header: "System Information" })
    );
    // Type 3 output handed to the type 1 parser is refused, not misread.
    assert!(matches!(parse_dmi_system(DELL_T3.as_bytes()), Err(ParseError::MissingSection { .. })));
    // A header with no known fields is not a usable section.
    assert!(matches!(
        parse_dmi_chassis(b"Chassis Information\n\tLock: Present\n"),
        Err(ParseError::MissingField { .. })
    ));
}

const PVE_IP_LINK: &str = r"1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
2: eno1: <BROADCAST,MULTICAST,SLAVE,UP,LOWER_UP> mtu 9000 qdisc mq master bond0 state UP mode DEFAULT group default qlen 1000\    link/ether 24:6E:96:12:34:56 brd ff:ff:ff:ff:ff:ff\    altname enp24s0f0
3: eno2: <BROADCAST,MULTICAST,SLAVE,UP,LOWER_UP> mtu 9000 qdisc mq master bond0 state UP mode DEFAULT group default qlen 1000\    link/ether 24:6e:96:12:34:56 brd ff:ff:ff:ff:ff:ff permaddr 24:6e:96:12:34:57\    altname enp24s0f1
4: eno3: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc mq state DOWN mode DEFAULT group default qlen 1000\    link/ether 24:6e:96:12:34:58 brd ff:ff:ff:ff:ff:ff\    altname enp25s0f0\    altname ens1f0
5: bond0: <BROADCAST,MULTICAST,MASTER,UP,LOWER_UP> mtu 9000 qdisc noqueue master vmbr0 state UP mode DEFAULT group default qlen 1000\    link/ether 24:6e:96:12:34:56 brd ff:ff:ff:ff:ff:ff
6: vmbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 9000 qdisc noqueue state UP mode DEFAULT group default qlen 1000\    link/ether 24:6e:96:12:34:56 brd ff:ff:ff:ff:ff:ff
7: vmbr0.100@vmbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\    link/ether 24:6e:96:12:34:56 brd ff:ff:ff:ff:ff:ff
8: tap100i0: <BROADCAST,MULTICAST,PROMISC,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast master vmbr0 state UNKNOWN mode DEFAULT group default qlen 1000\    link/ether 9e:21:aa:bb:cc:dd brd ff:ff:ff:ff:ff:ff
9: veth101i0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master fwbr101i0 state UP mode DEFAULT group default qlen 1000\    link/ether fe:5a:11:22:33:44 brd ff:ff:ff:ff:ff:ff link-netnsid 0
10: wg0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1420 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\    link/none 
11: ip6tnl0@NONE: <NOARP> mtu 1452 qdisc noop state DOWN mode DEFAULT group default qlen 1000\    link/tunnel6 :: brd :: permaddr 5e3a:4f1c::
";

#[test]
fn proxmox_host_links() {
    let links = parse_ip_link(PVE_IP_LINK.as_bytes()).unwrap();
    let names: Vec<&str> = links.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["bond0", "eno1", "eno2", "eno3", "ip6tnl0", "tap100i0", "veth101i0", "vmbr0", "vmbr0.100", "wg0"]
    );
    let eno1 = &links["eno1"];
    assert_eq!(eno1.mac.as_deref(), Some("24:6e:96:12:34:56"));
    assert_eq!((eno1.mtu, eno1.state, eno1.master.as_deref()), (9000, LinkState::Up, Some("bond0")));
    assert_eq!(eno1.altnames.iter().collect::<Vec<_>>(), ["enp24s0f0"]);
    assert_eq!(links["eno2"].permaddr.as_deref(), Some("24:6e:96:12:34:57"));
    assert_eq!(links["eno3"].state, LinkState::Down);
    assert_eq!(links["eno3"].altnames.len(), 2);
    assert_eq!(links["vmbr0.100"].parent.as_deref(), Some("vmbr0"));
    assert_eq!(links["veth101i0"].parent.as_deref(), Some("if2"));
    assert_eq!((links["wg0"].mac.as_ref(), links["wg0"].state), (None, LinkState::Unknown));
    // `@NONE` means no parent; a tunnel's permaddr is an IPv6 address, not a MAC, and is not kept.
    assert_eq!((links["ip6tnl0"].parent.as_ref(), links["ip6tnl0"].permaddr.as_ref()), (None, None));
}

#[test]
fn ip_link_garbage_is_refused() {
    assert!(matches!(parse_ip_link(b"hello world\n"), Err(ParseError::Malformed { line: 1, .. })));
    assert!(matches!(parse_ip_link(b"Device \"eth9\" does not exist.\n"), Err(ParseError::Malformed { line: 1, .. })));
    assert!(matches!(
        parse_ip_link(b"2: eth0: BROADCAST mtu 1500 state UP\n"),
        Err(ParseError::Malformed { line: 1, .. })
    ));
    let dup = "2: eth0: <UP> mtu 1500 state UP\n3: eth0: <UP> mtu 1500 state UP\n";
    assert_eq!(
        parse_ip_link(dup.as_bytes()),
        Err(ParseError::DuplicateInterface { command: Command::IpLink, line: 2, name: "eth0".into() })
    );
    let bad_mac = "2: eth0: <UP> mtu 1500 state UP\\    link/ether 24:6e:96:12:34 brd ff:ff:ff:ff:ff:ff\n";
    assert!(matches!(parse_ip_link(bad_mac.as_bytes()), Err(ParseError::InvalidValue { field: "link/ether", .. })));
    // Only the loopback: valid, and no interfaces.
    let lo = r"1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00";
    assert_eq!(parse_ip_link(lo.as_bytes()), Ok(Links::new()));
}

const ETHTOOL_ENO1: &str = "Settings for eno1:
\tSupported ports: [ FIBRE ]
\tSupported link modes:   10000baseSR/Full
\t                        25000baseSR/Full
\tSupported pause frame use: Symmetric Receive-only
\tSupports auto-negotiation: Yes
\tSupported FEC modes: None\t RS\t BASER
\tAdvertised link modes:  10000baseSR/Full
\t                        25000baseSR/Full
\tAdvertised pause frame use: No
\tAdvertised auto-negotiation: Yes
\tAdvertised FEC modes: None\t RS\t BASER
\tSpeed: 25000Mb/s
\tLanes: 1
\tDuplex: Full
\tAuto-negotiation: on
\tPort: FIBRE
\tPHYAD: 0
\tTransceiver: internal
\tSupports Wake-on: g
\tWake-on: d
\tCurrent message level: 0x00000007 (7)
\t\t\t       drv probe link
\tLink detected: yes
";

const ETHTOOL_VIRTIO: &str = "Settings for ens18:
\tSupported ports: [  ]
\tSupported link modes:   Not reported
\tSupported pause frame use: No
\tSupports auto-negotiation: No
\tSupported FEC modes: Not reported
\tAdvertised link modes:  Not reported
\tAdvertised pause frame use: No
\tAdvertised auto-negotiation: No
\tAdvertised FEC modes: Not reported
\tSpeed: Unknown!
\tDuplex: Unknown! (255)
\tAuto-negotiation: off
\tPort: Other
\tPHYAD: 0
\tTransceiver: internal
\tLink detected: yes
";

const ETHTOOL_DOWN_UNPRIVILEGED: &str = "Settings for eno3:
\tSupported ports: [ TP ]
\tSupported link modes:   10baseT/Half 10baseT/Full
\t                        100baseT/Half 100baseT/Full
\t                        1000baseT/Full
\tSpeed: Unknown!
\tDuplex: Unknown! (255)
\tPort: Twisted Pair
\tLink detected: no
";

#[test]
fn ethtool_settings() {
    let eno1 = parse_ethtool("eno1", ETHTOOL_ENO1.as_bytes()).unwrap();
    assert_eq!(eno1, LinkSettings { speed_mbps: Some(25000), duplex: Some(Duplex::Full), link_detected: Some(true) });
    let virtio = parse_ethtool("ens18", ETHTOOL_VIRTIO.as_bytes()).unwrap();
    assert_eq!(virtio, LinkSettings { speed_mbps: None, duplex: None, link_detected: Some(true) });
    let down = parse_ethtool("eno3", ETHTOOL_DOWN_UNPRIVILEGED.as_bytes()).unwrap();
    assert_eq!(down, LinkSettings { speed_mbps: None, duplex: None, link_detected: Some(false) });
    // Header only: valid, nothing known.
    assert_eq!(parse_ethtool("eno1", b"Settings for eno1:\n"), Ok(LinkSettings::default()));
    assert!(matches!(
        parse_ethtool("eno1", b"Settings for eno1:\n\tDuplex: Sideways\n"),
        Err(ParseError::InvalidValue { field: "Duplex", line: 2, .. })
    ));
    assert!(matches!(
        parse_ethtool("eno1", b"Settings for eno1:\nnetlink error: no device matches name\n"),
        Err(ParseError::Malformed { line: 2, .. })
    ));
}

#[test]
fn ethtool_driver_info() {
    let ixgbe = "driver: ixgbe
version: 6.8.12-4-pve
firmware-version: 0x800008a4, 1.2902.0
expansion-rom-version: 
bus-info: 0000:18:00.0
supports-statistics: yes
supports-test: yes
supports-eeprom-access: yes
supports-register-dump: yes
supports-priv-flags: yes
";
    assert_eq!(
        parse_ethtool_driver(ixgbe.as_bytes()),
        Ok(DriverInfo {
            driver: "ixgbe".into(),
            firmware_version: some("0x800008a4, 1.2902.0"),
            bus_info: some("0000:18:00.0")
        })
    );
    let bond = "driver: bonding\nversion: 6.8.12-4-pve\nfirmware-version: 2\nexpansion-rom-version: \nbus-info: \n\
                supports-statistics: no\nsupports-test: no\n";
    let bond = parse_ethtool_driver(bond.as_bytes()).unwrap();
    assert_eq!((bond.driver.as_str(), bond.bus_info), ("bonding", None));
    let virtio =
        "driver: virtio_net\nversion: 1.0.0\nfirmware-version: \nexpansion-rom-version: \nbus-info: 0000:00:12.0\n";
    let virtio = parse_ethtool_driver(virtio.as_bytes()).unwrap();
    assert_eq!((virtio.firmware_version, virtio.bus_info), (None, some("0000:00:12.0")));
}

#[test]
fn huge_input_is_refused_by_every_parser() {
    let mut big = DELL_T1.as_bytes().to_vec();
    big.resize(2 * 1024 * 1024, b'\n');
    let too_large = |e: Result<(), ParseError>| matches!(e, Err(ParseError::TooLarge { len, max, .. }) if len == 2 << 20 && max == 1 << 20);
    assert!(too_large(parse_dmi_system(&big).map(drop)));
    assert!(too_large(parse_dmi_chassis(&big).map(drop)));
    assert!(too_large(parse_ip_link(&big).map(drop)));
    assert!(too_large(parse_ethtool("eno1", &big).map(drop)));
    assert!(too_large(parse_ethtool_driver(&big).map(drop)));
}

#[test]
fn binary_and_non_utf8_are_refused() {
    let latin1 = b"System Information\n\tManufacturer: Soci\xe9t\xe9\n";
    assert_eq!(parse_dmi_system(latin1), Err(ParseError::NotUtf8 { command: Command::DmiSystem, offset: 38 }));
    let elf = b"\x7fELF\x02\x01\x01\x00\x00\x00";
    assert!(matches!(parse_ip_link(elf), Err(ParseError::ControlCharacter { line: 1, .. })));
    let escape = b"driver: ixgbe\x1b[31m\n";
    assert!(matches!(parse_ethtool_driver(escape), Err(ParseError::ControlCharacter { .. })));
    assert!(matches!(parse_dmi_chassis(b""), Err(ParseError::Empty { .. })));
}

#[test]
fn over_long_field_is_refused() {
    let long = format!("System Information\n\tManufacturer: {}\n", "A".repeat(MAX_FIELD_BYTES + 1));
    assert!(matches!(
        parse_dmi_system(long.as_bytes()),
        Err(ParseError::FieldTooLong { field: "Manufacturer", line: 2, .. })
    ));
}

// A fixture helper, not a #[test], so clippy's test allowances do not reach it.
#[allow(clippy::unwrap_used)]
fn dell_facts() -> HardwareFacts {
    let mut facts = HardwareFacts::new(
        parse_dmi_system(DELL_T1.as_bytes()).unwrap(),
        parse_dmi_chassis(DELL_T3.as_bytes()).unwrap(),
        parse_ip_link(PVE_IP_LINK.as_bytes()).unwrap(),
    );
    facts.set_link_settings("eno1", parse_ethtool("eno1", ETHTOOL_ENO1.as_bytes()).unwrap()).unwrap();
    facts.set_link_settings("eno3", parse_ethtool("eno3", ETHTOOL_DOWN_UNPRIVILEGED.as_bytes()).unwrap()).unwrap();
    let ixgbe = "driver: ixgbe\nfirmware-version: 0x800008a4\nbus-info: 0000:18:00.0\n";
    facts.set_driver("eno1", parse_ethtool_driver(ixgbe.as_bytes()).unwrap()).unwrap();
    facts
}

#[test]
fn second_run_with_same_output_has_no_drift() {
    assert_eq!(drift(&dell_facts(), &dell_facts()), []);
    // Facts survive storage as JSON unchanged, so stored-vs-fresh comparison is also empty.
    let json = serde_json::to_string(&dell_facts()).unwrap();
    let stored: HardwareFacts = serde_json::from_str(&json).unwrap();
    assert_eq!(drift(&stored, &dell_facts()), []);
    // Deterministic serialisation.
    assert_eq!(json, serde_json::to_string(&stored).unwrap());
}

#[test]
fn drift_reports_added_removed_and_changed_fields() {
    let old = dell_facts();
    let mut new = dell_facts();
    new.system.serial = Some("8ABC456".into());
    new.chassis.asset_tag = None;
    new.nics.remove("tap100i0");
    new.nics.get_mut("eno1").unwrap().link.mac = Some("24:6e:96:aa:bb:cc".into());
    new.set_link_settings("eno2", LinkSettings { speed_mbps: Some(25000), ..LinkSettings::default() }).unwrap();

    let changes = drift(&old, &new);
    let fields: Vec<&str> = changes.iter().map(Change::field).collect();
    assert_eq!(
        fields,
        [
            "chassis.asset_tag",
            "nic.eno1.mac",
            "nic.eno2.speed_mbps",
            "nic.tap100i0.mac",
            "nic.tap100i0.master",
            "nic.tap100i0.mtu",
            "nic.tap100i0.state",
            "system.serial",
        ]
    );
    assert_eq!(changes[0], Change::Removed { field: "chassis.asset_tag".into(), value: "IT-000412".into() });
    assert_eq!(
        changes[1],
        Change::Changed {
            field: "nic.eno1.mac".into(),
            old: "24:6e:96:12:34:56".into(),
            new: "24:6e:96:aa:bb:cc".into()
        }
    );
    assert_eq!(changes[2], Change::Added { field: "nic.eno2.speed_mbps".into(), value: "25000".into() });
    assert_eq!(
        changes[7],
        Change::Changed { field: "system.serial".into(), old: "7XYZ123".into(), new: "8ABC456".into() }
    );
}

#[test]
fn ethtool_for_unlisted_interface_is_refused() {
    let mut facts = dell_facts();
    assert!(matches!(
        facts.set_link_settings("eth9", LinkSettings::default()),
        Err(ParseError::UnknownInterface { command: Command::Ethtool, .. })
    ));
}
