//! SRQL target queries from policy files: parsing and matching must never panic.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use portcullis_policies::{Device, TargetQuery};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(query) = TargetQuery::parse(text) else { return };
    let device = Device {
        name: "pve-01".into(),
        addresses: vec!["10.0.0.5".into(), "fd00::5".into()],
        kind: Some("proxmox_node".into()),
        vendor: Some("Proxmox".into()),
        source: Some("enroll".into()),
        agent: Some("edge-1".into()),
        gateway: None,
        partition: Some("lab".into()),
        tags: BTreeMap::from([("env".into(), "lab".into())]),
        metadata: BTreeMap::from([("cluster".into(), "c1".into())]),
        ssh_port: None,
    };
    let _ = query.matches(&device);
});
