#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
//! Target query properties: no panics, canonical Display round-trips, and matching
//! agrees with an independent reference evaluation.

use portcullis_policies::srql::{Filter, Key};
use portcullis_policies::{Device, TargetQuery};
use proptest::prelude::*;
fn bare_value() -> impl Strategy<Value = String> {
    "[a-z0-9%._:-]{1,6}"
}

fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![bare_value(), "[ a-z\"\\\\%(),!:]{1,6}"]
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        Just(Key::Name),
        Just(Key::Ip),
        Just(Key::Type),
        Just(Key::Vendor),
        Just(Key::Source),
        Just(Key::Agent),
        Just(Key::Gateway),
        Just(Key::Partition),
        "[a-z][a-z0-9_.-]{0,4}".prop_map(Key::Tag),
        "[a-z][a-z0-9_.-]{0,4}".prop_map(Key::Metadata),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    (any::<bool>(), key(), prop::collection::vec(any_value(), 1..4), any::<bool>()).prop_map(
        |(negated, key, values, list)| {
            let list = list || values.len() > 1;
            Filter { negated, key, values, list }
        },
    )
}

fn query_text() -> impl Strategy<Value = String> {
    (filter(), prop::collection::vec(filter(), 0..4)).prop_map(|(mut first, rest)| {
        first.negated = false;
        let mut s = format!("in:devices {first}");
        for f in rest {
            s.push(' ');
            s.push_str(&f.to_string());
        }
        s
    })
}

fn small() -> impl Strategy<Value = String> {
    "[ab%]{0,3}"
}

fn device() -> impl Strategy<Value = Device> {
    let opt = || prop::option::of("[ab]{0,3}");
    (
        small(),
        prop::collection::vec("[ab]{0,3}", 0..3),
        (opt(), opt(), opt(), opt(), opt(), opt()),
        prop::collection::btree_map("[ab]{1,2}", "[ab]{0,3}", 0..3),
        prop::collection::btree_map("[ab]{1,2}", "[ab]{0,3}", 0..3),
    )
        .prop_map(|(name, addresses, (kind, vendor, source, agent, gateway, partition), tags, metadata)| Device {
            name: name.replace('%', ""),
            addresses,
            kind,
            vendor,
            source,
            agent,
            gateway,
            partition,
            tags,
            metadata,
            ssh_port: None,
        })
}

/// Reference matcher: `%` via a regex-free dynamic programme over chars.
fn like(p: &str, v: &str) -> bool {
    let p: Vec<char> = p.chars().collect();
    let v: Vec<char> = v.chars().collect();
    let mut dp = vec![vec![false; v.len() + 1]; p.len() + 1];
    dp[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=v.len() {
            dp[i][j] = if p[i - 1] == '%' {
                dp[i - 1][j] || (j > 0 && dp[i][j - 1])
            } else {
                j > 0 && dp[i - 1][j - 1] && p[i - 1] == v[j - 1]
            };
        }
    }
    dp[p.len()][v.len()]
}

fn reference(f: &Filter, d: &Device) -> bool {
    let attrs: Vec<&str> = match &f.key {
        Key::Name => vec![d.name.as_str()],
        Key::Ip => d.addresses.iter().map(String::as_str).collect(),
        Key::Type => d.kind.iter().map(String::as_str).collect(),
        Key::Vendor => d.vendor.iter().map(String::as_str).collect(),
        Key::Source => d.source.iter().map(String::as_str).collect(),
        Key::Agent => d.agent.iter().map(String::as_str).collect(),
        Key::Gateway => d.gateway.iter().map(String::as_str).collect(),
        Key::Partition => d.partition.iter().map(String::as_str).collect(),
        Key::Tag(k) => d.tags.get(k).map(String::as_str).into_iter().collect(),
        Key::Metadata(k) => d.metadata.get(k).map(String::as_str).into_iter().collect(),
    };
    let hit = attrs.iter().any(|a| f.values.iter().any(|p| like(p, a)));
    hit != f.negated
}

fn matching_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        Just(Key::Name),
        Just(Key::Ip),
        Just(Key::Type),
        Just(Key::Vendor),
        Just(Key::Source),
        Just(Key::Agent),
        Just(Key::Gateway),
        Just(Key::Partition),
        "[ab]{1,2}".prop_map(Key::Tag),
        "[ab]{1,2}".prop_map(Key::Metadata),
    ]
}

fn matching_filter() -> impl Strategy<Value = Filter> {
    (any::<bool>(), matching_key(), prop::collection::vec("[ab%]{1,3}", 1..3))
        .prop_map(|(negated, key, values)| Filter { negated, key, list: values.len() > 1, values })
}

fn matching_query() -> impl Strategy<Value = String> {
    (matching_filter(), prop::collection::vec(matching_filter(), 0..3)).prop_map(|(mut first, rest)| {
        first.negated = false;
        std::iter::once(first).chain(rest).fold("in:devices".to_string(), |s, f| format!("{s} {f}"))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parser_never_panics(s in "\\PC{0,40}") {
        let _ = TargetQuery::parse(&s);
    }

    #[test]
    fn parser_never_panics_near_valid(s in "(in:devices)?[ !a-z.:%\"\\\\(),\t]{0,30}") {
        if let Ok(q) = TargetQuery::parse(&s) {
            prop_assert_eq!(TargetQuery::parse(&q.to_string()), Ok(q));
        }
    }

    #[test]
    fn display_roundtrips(s in query_text()) {
        let parsed = TargetQuery::parse(&s).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        let text = parsed.to_string();
        prop_assert_eq!(&text, &s);
        prop_assert_eq!(TargetQuery::parse(&text), Ok(parsed));
    }

    #[test]
    fn matches_equals_reference(s in matching_query(), d in device()) {
        let parsed = TargetQuery::parse(&s).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        let expected = parsed.filters().iter().all(|f| reference(f, &d));
        prop_assert_eq!(parsed.matches(&d), expected);
    }
}
