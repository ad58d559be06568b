//! [`Krl::parse`] on our own encoder's output and on hand-built hostile KRLs:
//! every refusal rule, the bitmap and range semantics, and a property test
//! that no input makes it panic.

// Tests may panic: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::*;
use portcullis_sshcert::{Krl, KrlBuilder, KrlError, MAX_KRL_LEN};
use proptest::prelude::*;
use ssh_key::PrivateKey;
use ssh_key::encoding::Encode as _;

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s);
}

fn header_with(format_version: u32, comment: &[u8]) -> Vec<u8> {
    let mut h = b"SSHKRL\n\0".to_vec();
    h.extend_from_slice(&format_version.to_be_bytes());
    h.extend_from_slice(&42u64.to_be_bytes()); // krl_version
    h.extend_from_slice(&1_700_000_000u64.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes()); // flags
    string(&mut h, b"");
    string(&mut h, comment);
    h
}

fn header() -> Vec<u8> {
    header_with(1, b"test")
}

fn section(out: &mut Vec<u8>, section_type: u8, data: &[u8]) {
    out.push(section_type);
    string(out, data);
}

/// A certificates section for `ca_blob` (empty: any CA) with `subsections`.
fn certs_section(ca_blob: &[u8], subsections: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut data = Vec::new();
    string(&mut data, ca_blob);
    string(&mut data, b"");
    for (t, sub) in subsections {
        section(&mut data, *t, sub);
    }
    data
}

fn krl_with_certs(ca_blob: &[u8], subsections: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut krl = header();
    section(&mut krl, 1, &certs_section(ca_blob, subsections));
    krl
}

fn u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

fn bitmap(offset: u64, mpint: &[u8]) -> Vec<u8> {
    let mut sub = offset.to_be_bytes().to_vec();
    string(&mut sub, mpint);
    sub
}

fn blob(key: &PrivateKey) -> Vec<u8> {
    key.public_key().key_data().encode_vec().unwrap()
}

fn revoked_serials(krl: &Krl, ca: &PrivateKey, candidates: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let user = ed25519_key();
    candidates.into_iter().filter(|s| krl.is_revoked(&user_cert(ca, &user, *s, "nobody"))).collect()
}

#[test]
fn round_trips_our_encoder() {
    let (ca1, ca2, user, gone) = (ed25519_key(), p256_key(), ed25519_key(), p256_key());
    let mut builder = KrlBuilder::new(9, 1_700_000_123, "round trip");
    builder.revoke_serial(ca1.public_key().key_data(), 5);
    builder.revoke_serial(ca1.public_key().key_data(), u64::MAX);
    builder.revoke_key_id(ca2.public_key().key_data(), "zoe");
    builder.revoke_key_sha256(gone.public_key().key_data());
    let krl = Krl::parse(&builder.encode()).unwrap();

    assert_eq!((krl.krl_version(), krl.generated_date(), krl.comment()), (9, 1_700_000_123, "round trip"));
    assert!(krl.is_revoked(&user_cert(&ca1, &user, 5, "a")));
    assert!(krl.is_revoked(&user_cert(&ca1, &user, u64::MAX, "a")));
    assert!(!krl.is_revoked(&user_cert(&ca1, &user, 6, "a")));
    assert!(!krl.is_revoked(&user_cert(&ca2, &user, 5, "a")), "serial is per CA");
    assert!(krl.is_revoked(&user_cert(&ca2, &user, 0, "zoe")));
    assert!(krl.is_revoked(&user_cert(&ca2, &user, 77, "zoe")));
    assert!(!krl.is_revoked(&user_cert(&ca1, &user, 77, "zoe")), "key ID is per CA");
    assert!(!krl.is_revoked(&user_cert(&ca2, &user, 77, "zoe2")));
    assert!(krl.is_key_revoked(gone.public_key().key_data()));
    assert!(krl.is_revoked(&user_cert(&ca1, &gone, 1, "a")), "a revoked key's certificates are revoked");
    assert!(!krl.is_key_revoked(user.public_key().key_data()));
    // Certificate key data goes through the full certificate check.
    let cert = user_cert(&ca1, &user, 5, "a");
    assert!(krl.is_key_revoked(&ssh_key::public::KeyData::from(cert)));
}

#[test]
fn empty_krl_revokes_nothing() {
    let krl = Krl::parse(&KrlBuilder::new(0, 0, "").encode()).unwrap();
    let (ca, user) = (ed25519_key(), ed25519_key());
    assert!(!krl.is_revoked(&user_cert(&ca, &user, 1, "a")));
    assert!(!krl.is_key_revoked(user.public_key().key_data()));
    assert_eq!(krl, Krl::default());
}

#[test]
fn serial_zero_certificates_never_match_by_serial() {
    let ca = ed25519_key();
    let krl = Krl::parse(&krl_with_certs(&blob(&ca), &[(0x21, u64s(&[1, u64::MAX]))])).unwrap();
    assert_eq!(revoked_serials(&krl, &ca, [0, 1, 2, u64::MAX]), vec![1, 2, u64::MAX]);
}

#[test]
fn ranges_and_lists_overlap_and_merge() {
    let ca = ed25519_key();
    // Overlapping, adjacent, nested (65-70 inside 60-80) and single-serial ranges.
    let subs = [
        (0x21, u64s(&[10, 20])),
        (0x21, u64s(&[15, 30])),
        (0x20, u64s(&[31, 40, 9])),
        (0x21, u64s(&[50, 50])),
        (0x21, u64s(&[60, 80])),
        (0x21, u64s(&[65, 70])),
    ];
    let krl = Krl::parse(&krl_with_certs(&blob(&ca), &subs)).unwrap();
    assert_eq!(
        revoked_serials(&krl, &ca, [8, 9, 10, 25, 30, 31, 32, 39, 40, 41, 49, 50, 51, 59, 60, 75, 80, 81]),
        vec![9, 10, 25, 30, 31, 40, 50, 60, 75, 80]
    );
}

#[test]
fn bitmaps_count_from_the_least_significant_bit() {
    let ca = p256_key();
    // 0x01_a5: bits 0, 2, 5, 7 and 8 from offset 1000; a leading zero byte is allowed.
    let subs = [(0x22, bitmap(1000, &[0x00, 0x01, 0xa5])), (0x22, bitmap(u64::MAX, &[0x01]))];
    let krl = Krl::parse(&krl_with_certs(&blob(&ca), &subs)).unwrap();
    assert_eq!(
        revoked_serials(&krl, &ca, (995..1012).chain([u64::MAX - 1, u64::MAX])),
        vec![1000, 1002, 1005, 1007, 1008, u64::MAX]
    );
}

#[test]
fn many_overlapping_bitmaps_are_all_consulted() {
    let ca = ed25519_key();
    let subs: Vec<_> = (0..40u64).map(|i| (0x22, bitmap(100 + i, &[0x01]))).collect();
    let mut subs = subs;
    let mut largest = vec![0xff; 2048];
    largest[0] = 0x7f; // 16383 bits: serials 1..=16383
    subs.push((0x22, bitmap(1, &largest)));
    let krl = Krl::parse(&krl_with_certs(&blob(&ca), &subs)).unwrap();
    assert_eq!(revoked_serials(&krl, &ca, [1, 16_382, 16_383, 16_384, 16_385]), vec![1, 16_382, 16_383]);
    let no_big = Krl::parse(&krl_with_certs(&blob(&ca), &subs[..40])).unwrap();
    assert_eq!(revoked_serials(&no_big, &ca, [99, 100, 120, 139, 140]), vec![100, 120, 139]);
}

#[test]
fn wildcard_ca_applies_to_every_ca() {
    let (ca1, ca2) = (ed25519_key(), p256_key());
    let mut ids = Vec::new();
    string(&mut ids, b"mallory");
    let krl = Krl::parse(&krl_with_certs(b"", &[(0x23, ids), (0x20, u64s(&[7]))])).unwrap();
    let user = ed25519_key();
    for ca in [&ca1, &ca2] {
        assert!(krl.is_revoked(&user_cert(ca, &user, 0, "mallory")));
        assert!(krl.is_revoked(&user_cert(ca, &user, 7, "alice")));
        assert!(!krl.is_revoked(&user_cert(ca, &user, 8, "alice")));
    }
}

#[test]
fn explicit_keys_and_sha1_hashes_revoke_keys() {
    use sha1::Digest as _;
    let (by_blob, by_sha1, kept, ca) = (ed25519_key(), p256_key(), ed25519_key(), ed25519_key());
    let mut krl = header();
    let mut keys = Vec::new();
    string(&mut keys, &blob(&by_blob));
    section(&mut krl, 2, &keys);
    let mut hashes = Vec::new();
    string(&mut hashes, &sha1::Sha1::digest(blob(&by_sha1)));
    section(&mut krl, 3, &hashes);
    let krl = Krl::parse(&krl).unwrap();
    for key in [&by_blob, &by_sha1] {
        assert!(krl.is_key_revoked(key.public_key().key_data()));
        assert!(krl.is_revoked(&user_cert(&ca, key, 1, "a")));
    }
    assert!(!krl.is_key_revoked(kept.public_key().key_data()));
    assert!(!krl.is_revoked(&user_cert(&ca, &kept, 1, "a")));
    // The CA key revoked as a plain key revokes what it signed.
    assert!(krl.is_revoked(&user_cert(&by_blob, &kept, 1, "a")));
}

#[test]
fn signature_sections_are_parsed_past() {
    let ca = ed25519_key();
    let mut krl = krl_with_certs(&blob(&ca), &[(0x20, u64s(&[3]))]);
    for _ in 0..2 {
        section(&mut krl, 4, &blob(&ca)); // signing key
        string(&mut krl, &[0xab; 64]); // signature (not verified)
    }
    let parsed = Krl::parse(&krl).unwrap();
    assert_eq!(revoked_serials(&parsed, &ca, [2, 3, 4]), vec![3]);

    // A signature section missing its signature string is truncated.
    let mut cut = krl_with_certs(&blob(&ca), &[]);
    section(&mut cut, 4, &blob(&ca));
    assert!(matches!(Krl::parse(&cut), Err(KrlError::Truncated(_))));

    // Nothing but signatures may follow a signature.
    let mut after = krl_with_certs(&blob(&ca), &[]);
    section(&mut after, 4, &blob(&ca));
    string(&mut after, b"sig");
    section(&mut after, 1, &certs_section(&blob(&ca), &[(0x20, u64s(&[9]))]));
    assert_eq!(Krl::parse(&after), Err(KrlError::SectionAfterSignature));
}

#[test]
fn key_ids_and_comments_follow_c_string_rules() {
    let ca = ed25519_key();
    let mut ids = Vec::new();
    string(&mut ids, b"trailing\0");
    let krl = Krl::parse(&krl_with_certs(&blob(&ca), &[(0x23, ids)])).unwrap();
    assert!(krl.is_revoked(&user_cert(&ca, &ed25519_key(), 1, "trailing")));

    let mut ids = Vec::new();
    string(&mut ids, b"in\0side");
    assert_eq!(Krl::parse(&krl_with_certs(&blob(&ca), &[(0x23, ids)])), Err(KrlError::NulInString("key ID")));
    assert_eq!(Krl::parse(&header_with(1, b"a\0b")), Err(KrlError::NulInString("comment")));
    assert_eq!(Krl::parse(&header_with(1, b"ab\0")).unwrap().comment(), "ab");
    assert_eq!(Krl::parse(&header_with(1, b"caf\xc3\xa9 \xff")).unwrap().comment(), "caf\u{e9} \u{fffd}");
}

#[test]
fn each_refusal_rule() {
    let ca = blob(&ed25519_key());
    let err = |bytes: &[u8]| Krl::parse(bytes).unwrap_err();

    assert_eq!(err(&vec![0; MAX_KRL_LEN + 1]), KrlError::TooLarge);
    assert_eq!(err(b""), KrlError::BadMagic);
    assert_eq!(err(b"SSHKRL\n"), KrlError::BadMagic);
    assert_eq!(err(b"SSHKRL\n\x01\0\0\0\x01"), KrlError::BadMagic);
    assert_eq!(err(&header_with(2, b"")), KrlError::UnsupportedFormatVersion(2));
    assert!(matches!(err(b"SSHKRL\n\0\0\0\0\x01"), KrlError::Truncated("header")));

    let mut unknown = header();
    section(&mut unknown, 6, b"");
    assert_eq!(err(&unknown), KrlError::UnknownSection(6));
    assert_eq!(err(&krl_with_certs(&ca, &[(0x24, vec![])])), KrlError::UnknownCertSection(0x24));
    assert_eq!(err(&krl_with_certs(&ca, &[(0x21, u64s(&[1, 2, 3]))])), KrlError::TrailingData("serial range"));
    assert_eq!(
        err(&krl_with_certs(&ca, &[(0x22, [bitmap(1, &[1]), vec![0]].concat())])),
        KrlError::TrailingData("serial bitmap")
    );
    assert!(matches!(err(&krl_with_certs(&ca, &[(0x20, vec![0; 7])])), KrlError::Truncated("serial list")));
    assert!(matches!(err(&krl_with_certs(&ca, &[(0x21, u64s(&[1]))])), KrlError::Truncated("serial range")));

    assert_eq!(err(&krl_with_certs(b"garbage", &[])), KrlError::BadCaKey);
    assert_eq!(err(&krl_with_certs(&[ca.as_slice(), b"x"].concat(), &[])), KrlError::BadCaKey);
    assert_eq!(err(&krl_with_certs(&ca[..ca.len() - 1], &[])), KrlError::BadCaKey);

    assert_eq!(err(&krl_with_certs(&ca, &[(0x20, u64s(&[5, 0]))])), KrlError::ZeroSerial);
    assert_eq!(err(&krl_with_certs(&ca, &[(0x21, u64s(&[0, 5]))])), KrlError::ZeroSerial);
    assert_eq!(err(&krl_with_certs(&ca, &[(0x22, bitmap(0, &[0x03]))])), KrlError::ZeroSerial);
    assert_eq!(err(&krl_with_certs(&ca, &[(0x21, u64s(&[6, 5]))])), KrlError::BadSerialRange);

    assert_eq!(err(&krl_with_certs(&ca, &[(0x22, bitmap(1, &[0x80]))])), KrlError::BadBitmap, "negative");
    assert_eq!(err(&krl_with_certs(&ca, &[(0x22, bitmap(1, &[0x01; 2049]))])), KrlError::BadBitmap, "too long");
    let mut padded = vec![0x00];
    padded.extend_from_slice(&[0xff; 2048]);
    assert_eq!(err(&krl_with_certs(&ca, &[(0x22, bitmap(1, &[0x00; 2050]))])), KrlError::BadBitmap);
    assert!(Krl::parse(&krl_with_certs(&ca, &[(0x22, bitmap(1, &padded))])).is_ok(), "longest allowed, with a zero");
    assert_eq!(err(&krl_with_certs(&ca, &[(0x22, bitmap(u64::MAX, &[0x02]))])), KrlError::BadBitmap, "wraps");
    assert!(Krl::parse(&krl_with_certs(&ca, &[(0x22, bitmap(0, &[0x00, 0x00]))])).is_ok(), "all-zero bitmap");

    for (t, name) in [(3, "SHA1"), (5, "SHA256")] {
        let mut bad = header();
        let mut hashes = Vec::new();
        string(&mut hashes, &[7; 21]);
        section(&mut bad, t, &hashes);
        assert_eq!(err(&bad), KrlError::BadHashLength(name));
    }
    let mut overrun = header();
    overrun.push(1);
    overrun.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(err(&overrun), KrlError::Truncated(_)));
}

#[test]
fn every_truncation_is_refused_or_ends_on_a_section_boundary() {
    let (ca, key) = (ed25519_key(), p256_key());
    let mut builder = KrlBuilder::new(1, 2, "cut me");
    builder.revoke_serial(ca.public_key().key_data(), 77);
    builder.revoke_key_id(ca.public_key().key_data(), "id");
    builder.revoke_key_sha256(key.public_key().key_data());
    let full = builder.encode();
    let boundaries = [header_with(1, b"cut me").len(), full.len() - (1 + 4 + 36), full.len()];
    for len in 0..=full.len() {
        let result = Krl::parse(&full[..len]);
        assert_eq!(result.is_ok(), boundaries.contains(&len), "prefix of {len} bytes: {result:?}");
    }
}

#[test]
fn error_codes_are_distinct() {
    let all = [
        KrlError::TooLarge,
        KrlError::BadMagic,
        KrlError::UnsupportedFormatVersion(0),
        KrlError::Truncated(""),
        KrlError::NulInString(""),
        KrlError::UnknownSection(0),
        KrlError::UnknownCertSection(0),
        KrlError::TrailingData(""),
        KrlError::SectionAfterSignature,
        KrlError::BadCaKey,
        KrlError::ZeroSerial,
        KrlError::BadSerialRange,
        KrlError::BadBitmap,
        KrlError::BadHashLength(""),
    ];
    let mut codes: Vec<_> = all.iter().map(KrlError::reason_code).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len());
}

/// A valid KRL to mutate: every section and subsection type appears.
fn rich_krl() -> Vec<u8> {
    let ca = blob(&ed25519_key());
    let mut ids = Vec::new();
    string(&mut ids, b"bob");
    let subs =
        [(0x20, u64s(&[3, 9])), (0x21, u64s(&[10, 20])), (0x22, bitmap(100, &[0x0f, 0xf0])), (0x23, ids.clone())];
    let mut krl = header();
    section(&mut krl, 1, &certs_section(&ca, &subs));
    section(&mut krl, 1, &certs_section(b"", &[(0x23, ids)]));
    let mut keys = Vec::new();
    string(&mut keys, &ca);
    section(&mut krl, 2, &keys);
    let mut sha1 = Vec::new();
    string(&mut sha1, &[1; 20]);
    section(&mut krl, 3, &sha1);
    let mut sha256 = Vec::new();
    string(&mut sha256, &[2; 32]);
    section(&mut krl, 5, &sha256);
    section(&mut krl, 4, &ca);
    string(&mut krl, b"signature");
    krl
}

#[test]
fn rich_krl_parses() {
    Krl::parse(&rich_krl()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Krl::parse(&bytes);
    }

    #[test]
    fn never_panics_on_arbitrary_sections(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut krl = header();
        krl.extend_from_slice(&body);
        let _ = Krl::parse(&krl);
    }

    #[test]
    fn never_panics_on_mutated_krls(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut krl = rich_krl();
        for (at, byte) in edits {
            let i = at.index(krl.len());
            krl[i] = byte;
        }
        let len = krl.len();
        if let Ok(parsed) = Krl::parse(&krl[..cut.index(len + 1)]) {
            // Whatever loaded must also answer queries without panicking.
            let (ca, user) = (ed25519_key(), ed25519_key());
            let _ = parsed.is_revoked(&user_cert(&ca, &user, 100, "bob"));
        }
    }
}
