#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Target query syntax, rejections and semantics.

use std::collections::BTreeMap;

use portcullis_policies::srql::{Filter, Key};
use portcullis_policies::{Device, TargetQuery};

fn q(s: &str) -> TargetQuery {
    TargetQuery::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

fn reject(s: &str) -> (usize, String) {
    match TargetQuery::parse(s) {
        Ok(q) => panic!("{s:?} should be rejected, parsed as {q}"),
        Err(e) => (e.offset, e.message),
    }
}

fn dev() -> Device {
    Device {
        name: "pve01.fra".into(),
        addresses: vec!["10.0.0.5".into(), "fe80::1".into()],
        kind: Some("hypervisor".into()),
        vendor: Some("Dell Inc.".into()),
        source: Some("proxmox".into()),
        agent: Some("agent-fra-1".into()),
        gateway: Some("gw-1".into()),
        partition: Some("default".into()),
        tags: BTreeMap::from([("cluster".into(), "prod".into()), ("env".into(), "prod eu".into())]),
        metadata: BTreeMap::from([("rack".into(), "r12".into())]),
        ssh_port: None,
    }
}

#[test]
fn every_key_and_value_form() {
    let d = dev();
    for s in [
        "in:devices name:pve01.fra",
        "in:devices ip:10.0.0.5",
        "in:devices ip:fe80::1",
        "in:devices type:hypervisor",
        "in:devices vendor:\"Dell Inc.\"",
        "in:devices source:proxmox",
        "in:devices agent:agent-fra-1",
        "in:devices gateway:gw-1",
        "in:devices partition:default",
        "in:devices tags.cluster:prod",
        "in:devices tags.env:\"prod eu\"",
        "in:devices metadata.rack:r12",
        "in:devices name:(a,pve01.fra)",
        "in:devices name:(\"x y\",pve%)",
        "in:devices name:(pve01.fra)",
        "  in:devices   name:pve%   ",
        "in:devices\tname:pve01.fra\ntags.cluster:prod",
        "in:devices name:pve% !tags.cluster:staging",
    ] {
        assert!(q(s).matches(&d), "{s} should match");
    }
    for s in [
        "in:devices name:pve01",
        "in:devices name:PVE01.FRA",
        "in:devices ip:10.0.0.%6",
        "in:devices vendor:Dell",
        "in:devices name:pve01.fra !tags.cluster:prod",
        "in:devices name:pve% tags.cluster:staging",
        "in:devices name:(a,b)",
        "in:devices metadata.missing:%",
    ] {
        assert!(!q(s).matches(&d), "{s} should not match");
    }
}

#[test]
fn filter_structure() {
    let query = q(r#"in:devices !name:("a\"b",c) tags.x.y:z"#);
    assert_eq!(
        query.filters(),
        &[
            Filter { negated: true, key: Key::Name, values: vec!["a\"b".into(), "c".into()], list: true },
            Filter { negated: false, key: Key::Tag("x.y".into()), values: vec!["z".into()], list: false },
        ]
    );
    assert_eq!(query.to_string(), r#"in:devices !name:("a\"b",c) tags.x.y:z"#);
    assert_eq!(q(r#"in:devices name:"a\\b""#).filters()[0].values, vec!["a\\b".to_string()]);
    assert_eq!(q(r#"in:devices name:"plain""#).to_string(), "in:devices name:plain");
}

#[test]
fn rejections() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 0, "must start with `in:devices`"),
        ("name:x", 0, "must start with `in:devices`"),
        ("in:devices", 10, "positive filter"),
        ("in:devices   ", 13, "positive filter"),
        ("in:devices !name:x", 18, "positive filter"),
        ("in:devices !name:x !tags.a:b", 28, "positive filter"),
        ("in:services name:x", 3, "only `in:devices`"),
        ("in:devicesx name:x", 3, "only `in:devices`"),
        ("in:devices in:devices name:x", 11, "only once"),
        ("in:devices hostname:x", 11, "unknown key `hostname`"),
        ("in:devices tags.:x", 11, "unknown key"),
        ("in:devices metadata:x", 11, "unknown key"),
        ("in:devices Name:x", 11, "unknown key"),
        ("in:devices name:", 16, "empty value"),
        ("in:devices name: tags.a:b", 16, "empty value"),
        ("in:devices name:\"\"", 16, "empty value"),
        ("in:devices name:()", 16, "empty list"),
        ("in:devices name:(a,)", 19, "empty list element"),
        ("in:devices name:(,a)", 17, "empty list element"),
        ("in:devices name:(a,,b)", 19, "empty list element"),
        ("in:devices name:(a", 16, "unterminated list"),
        ("in:devices name:(a, b)", 19, "whitespace"),
        ("in:devices name:(a ,b)", 18, "whitespace"),
        ("in:devices name:\"abc", 16, "unterminated quoted"),
        ("in:devices name:\"abc\\", 16, "unterminated quoted"),
        ("in:devices name:\"a\\nb\"", 18, "unsupported escape"),
        ("in:devices name:\"a\"b", 19, "after value"),
        ("in:devices name:(a)b", 19, "after value"),
        ("in:devices name:a\"b", 17, "not allowed in an unquoted value"),
        ("in:devices name:a,b", 17, "not allowed"),
        ("in:devices name:a(b", 17, "not allowed"),
        ("in:devices name:a)", 17, "not allowed"),
        ("in:devices name x", 11, "expected `key:value`"),
        ("in:devices name", 11, "expected `key:value`"),
        ("in:devices :x", 11, "missing key"),
        ("in:devices !:x", 12, "missing key"),
        ("in:devices na/me:x", 13, "invalid character"),
        ("in:devices name:(a\"b\")", 18, "not allowed"),
        ("in:devices name:\"a\u{1}\"", 18, "control"),
        ("in:devices name:a\u{7f}", 17, "not allowed"),
    ];
    for (s, offset, needle) in cases {
        let (o, m) = reject(s);
        assert!(m.contains(needle), "{s:?}: message {m:?} lacks {needle:?}");
        assert_eq!(o, *offset, "{s:?}: offset ({m})");
    }
}

#[test]
fn missing_attributes_and_negation() {
    let bare = Device { name: "n1".into(), ..Device::default() };
    for key in ["ip", "type", "vendor", "source", "agent", "gateway", "partition", "tags.k", "metadata.k"] {
        let pos = q(&format!("in:devices {key}:%"));
        let neg = q(&format!("in:devices name:n1 !{key}:%"));
        assert!(!pos.matches(&bare), "{key}: positive filter on a missing attribute must be false");
        assert!(neg.matches(&bare), "{key}: negated filter on a missing attribute must be true");
    }
    // ip: negation means "no address matches".
    let d = dev();
    assert!(!q("in:devices name:% !ip:10.%").matches(&d));
    assert!(q("in:devices name:% !ip:192.%").matches(&d));
    // Negated list: none of the alternatives.
    assert!(!q("in:devices name:% !tags.cluster:(dev,prod)").matches(&d));
    assert!(q("in:devices name:% !tags.cluster:(dev,stage)").matches(&d));
}

#[test]
fn wildcards() {
    let d = Device { name: "pve-01".into(), ..Device::default() };
    for (p, hit) in [
        ("%", true),
        ("pve%", true),
        ("%01", true),
        ("p%-%1", true),
        ("pve-01%", true),
        ("%pve-01%", true),
        ("pve", false),
        ("%02", false),
        ("pve%%x", false),
        ("p%e%v", false),
    ] {
        assert_eq!(q(&format!("in:devices name:{p}")).matches(&d), hit, "{p}");
    }
}

#[test]
fn serde_uses_canonical_text_and_validates() {
    #[derive(serde::Deserialize)]
    struct W {
        #[allow(dead_code)]
        t: TargetQuery,
    }
    assert!(toml::from_str::<W>("t = 'in:devices'").is_err());
    assert!(toml::from_str::<W>("t = 'in:devices name:a'").is_ok());
}

// ---- property tests ----
