//! The node-side discovery script (`discovery/node/portcullis-discovery.sh`) and the
//! parser agree: the script runs here with stub `sudo`, `dmidecode`, `ip` and `ethtool`
//! and a fake sysfs, and its output parses into the expected facts. The sudoers drop-in
//! is checked with `visudo -cf` when visudo is installed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use portcullis_discovery::parse_report;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const SCRIPT: &str = include_str!("../node/portcullis-discovery.sh");
const SUDOERS: &str = include_str!("../node/sudoers");

fn executable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Replaces the one line that starts with `var=`.
fn set_var(script: &str, var: &str, value: &Path) -> String {
    let prefix = format!("{var}=");
    assert_eq!(script.lines().filter(|l| l.starts_with(&prefix)).count(), 1, "{var}");
    script
        .lines()
        .map(|l| if l.starts_with(&prefix) { format!("{prefix}{}", value.display()) } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn script_output_parses_into_physical_nics_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bin = d.join("bin");
    std::fs::create_dir(&bin).unwrap();
    // sudo must be asked non-interactively, for exactly the sudoers' commands.
    executable(
        &d.join("sudo"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = -n ] || exit 9\nshift\n[ \"$1\" = {dmi} ] || exit 9\nexec \"$@\"\n",
            dmi = d.join("dmidecode").display()
        ),
    );
    executable(
        &d.join("dmidecode"),
        "#!/bin/sh\ncase \"$2\" in\n\
         1) printf 'Handle 0x0100, DMI type 1, 27 bytes\\nSystem Information\\n\\tManufacturer: HPE\\n\\tProduct Name: ProLiant DL360 Gen10\\n\\tSerial Number: CZJ1234567\\n' ;;\n\
         3) printf 'Handle 0x0300, DMI type 3, 21 bytes\\nChassis Information\\n\\tManufacturer: HPE\\n\\tType: Rack Mount Chassis\\n\\tSerial Number: CZJ1234567\\n' ;;\n\
         *) exit 2 ;;\nesac\n",
    );
    executable(
        &bin.join("ip"),
        "#!/bin/sh\n[ \"$*\" = '-o link show' ] || exit 2\n\
         echo '1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00'\n\
         echo '2: eno1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq master vmbr0 state UP mode DEFAULT group default qlen 1000\\    link/ether 94:40:c9:aa:bb:cc brd ff:ff:ff:ff:ff:ff'\n\
         echo '3: vmbr0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 94:40:c9:aa:bb:cc brd ff:ff:ff:ff:ff:ff'\n\
         echo '4: tap100i0: <BROADCAST,MULTICAST,PROMISC,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast master vmbr0 state UNKNOWN mode DEFAULT group default qlen 1000\\    link/ether 9e:21:aa:bb:cc:dd brd ff:ff:ff:ff:ff:ff'\n",
    );
    executable(
        &bin.join("ethtool"),
        "#!/bin/sh\nif [ \"$1\" = -i ]; then\n  printf 'driver: bnxt_en\\nfirmware-version: 218.0.219.13\\nbus-info: 0000:5d:00.0\\n'\n\
         else\n  printf 'Settings for %s:\\n\\tSpeed: 25000Mb/s\\n\\tDuplex: Full\\n\\tLink detected: yes\\n' \"$1\"\n  \
         echo 'Cannot get wake-on-lan settings: Operation not permitted' >&2\nfi\n",
    );
    let sysfs = d.join("net");
    for iface in ["eno1", "vmbr0", "tap100i0", "lo"] {
        std::fs::create_dir_all(sysfs.join(iface)).unwrap();
    }
    std::fs::write(sysfs.join("eno1").join("device"), "").unwrap();

    let mut script = set_var(SCRIPT, "PATH", &bin);
    script = set_var(&script, "SUDO", &d.join("sudo"));
    script = set_var(&script, "DMIDECODE", &d.join("dmidecode"));
    script = set_var(&script, "SYSFS_NET", &sysfs);
    executable(&d.join("discover"), &script);
    let out = Command::new(d.join("discover")).env_clear().output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("ethtool vmbr0") && !text.contains("tap100i0\n"), "{text}");

    let facts = parse_report(text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(facts.system.manufacturer.as_deref(), Some("HPE"));
    assert_eq!(facts.system.serial.as_deref(), Some("CZJ1234567"));
    assert_eq!(facts.nics.keys().collect::<Vec<_>>(), ["eno1"]);
    assert_eq!(facts.nics["eno1"].settings.as_ref().unwrap().speed_mbps, Some(25000));
    assert_eq!(facts.nics["eno1"].driver.as_ref().unwrap().driver, "bnxt_en");

    // sudo refused (no sudoers entry): the dmidecode sections are empty, which is no
    // system facts (the CA keeps the ones it knew and warns), and the NICs still count.
    executable(&d.join("sudo"), "#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n");
    let out = Command::new(d.join("discover")).env_clear().output().unwrap();
    let facts = parse_report(&out.stdout).unwrap();
    assert!(facts.lacks_dmi());
    assert_eq!(facts.nics.keys().collect::<Vec<_>>(), ["eno1"]);
}

#[test]
fn sudoers_drop_in_is_valid_and_exact() {
    let rules: Vec<&str> = SUDOERS.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(
        rules,
        [
            "Defaults:portcullis-discovery !requiretty",
            "portcullis-discovery ALL=(root) NOPASSWD: /usr/sbin/dmidecode -t 1, /usr/sbin/dmidecode -t 3",
        ]
    );
    let visudo = ["/usr/sbin/visudo", "/usr/bin/visudo"].into_iter().find(|p| Path::new(p).exists());
    let Some(visudo) = visudo else {
        eprintln!("visudo not installed: syntax not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis-discovery");
    std::fs::write(&file, SUDOERS).unwrap();
    let out = Command::new(visudo).arg("-cf").arg(&file).output().unwrap();
    assert!(out.status.success(), "visudo: {}", String::from_utf8_lossy(&out.stderr));
}
