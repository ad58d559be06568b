//! Encoder for OpenSSH Key Revocation Lists (`ssh-keygen -k`, sshd's `RevokedKeys`).
//!
//! The binary format is OpenSSH's `PROTOCOL.krl`. Guarantees: [`KrlBuilder::encode`]
//! is deterministic (the same revocations give the same bytes whatever order they
//! were added in, so a KRL can be compared and cached by hash), every list is
//! sorted and free of duplicates, and an empty builder still produces a valid KRL
//! that revokes nothing. Only sections OpenSSH's parser accepts are emitted:
//! certificate serial lists and key IDs per CA, plain keys, and SHA-256 hashes of plain
//! keys. [`KrlBuilder::revoke_key`] (whole keys) is what every OpenSSH with KRLs (6.2 on)
//! loads; revocation by SHA-256 hash needs 7.9, and an older sshd that meets a section it
//! does not know refuses the whole KRL — and with it every public key.

use std::collections::{BTreeMap, BTreeSet};

use ssh_key::HashAlg;
use ssh_key::encoding::Encode as _;
use ssh_key::public::KeyData;

const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const KRL_FORMAT_VERSION: u32 = 1;

const KRL_SECTION_CERTIFICATES: u8 = 1;
const KRL_SECTION_EXPLICIT_KEY: u8 = 2;
const KRL_SECTION_FINGERPRINT_SHA256: u8 = 5;
const KRL_SECTION_CERT_SERIAL_LIST: u8 = 0x20;
const KRL_SECTION_CERT_KEY_ID: u8 = 0x23;

/// Collects revocations and encodes them as one KRL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KrlBuilder {
    krl_version: u64,
    generated_date: u64,
    comment: String,
    /// Keyed by the CA's public key blob; an empty blob is OpenSSH's "any CA".
    certs: BTreeMap<Vec<u8>, CaRevocations>,
    /// Raw SHA-256 digests of plain public key blobs. `Vec<u8>` ordering is
    /// byte-wise, i.e. the big-endian numeric order `PROTOCOL.krl` requires.
    key_sha256: BTreeSet<Vec<u8>>,
    /// Plain public key blobs, in byte order (a prefix first), as OpenSSH writes them.
    keys: BTreeSet<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CaRevocations {
    serials: BTreeSet<u64>,
    /// `String` orders by bytes, which is OpenSSH's `strcmp` order.
    key_ids: BTreeSet<String>,
}

impl KrlBuilder {
    /// Start an empty KRL. `krl_version` should grow with every published KRL;
    /// `generated_date_unix` is seconds since the epoch (injected, not read from
    /// the clock, so output stays reproducible). NUL bytes are removed from the
    /// comment because OpenSSH refuses to load a KRL whose comment has one.
    pub fn new(krl_version: u64, generated_date_unix: u64, comment: &str) -> Self {
        Self { krl_version, generated_date: generated_date_unix, comment: comment.replace('\0', ""), ..Self::default() }
    }

    /// Revoke the certificate with `serial` issued by `ca`.
    ///
    /// Serial 0 is ignored: OpenSSH never matches serial-0 certificates by
    /// serial and refuses to load a KRL that lists 0. Revoke those by key ID
    /// (or use [`KrlBuilder::revoke_certificate`], which does so).
    pub fn revoke_serial(&mut self, ca: &KeyData, serial: u64) {
        if serial == 0 {
            return;
        }
        self.ca_entry(ca).serials.insert(serial);
    }

    /// Revoke every certificate issued by `ca` whose key ID is exactly `key_id`.
    ///
    /// A key ID containing a NUL byte is ignored: OpenSSH cannot load a KRL
    /// holding one, and no certificate OpenSSH accepts can carry one either.
    pub fn revoke_key_id(&mut self, ca: &KeyData, key_id: &str) {
        if key_id.contains('\0') {
            return;
        }
        self.ca_entry(ca).key_ids.insert(key_id.to_owned());
    }

    /// Revoke a plain public key (and so every certificate for it, from any CA) by
    /// listing it whole, which every OpenSSH that reads KRLs understands. Passing a
    /// certificate revokes the key it certifies, which is also what OpenSSH compares.
    pub fn revoke_key(&mut self, key: &KeyData) {
        let plain = key.certificate().map_or(key, |cert| cert.public_key());
        // Only a key past 4 GiB fails to encode: the empty blob then matches nothing,
        // which cannot happen for a key that was parsed.
        self.keys.insert(plain.encode_vec().unwrap_or_default());
    }

    /// Revoke a plain public key (and so every certificate for it, from any CA)
    /// by the SHA-256 hash of its blob (OpenSSH 7.9 on: see the module's doc). Passing a certificate revokes the key
    /// it certifies, which is also what OpenSSH compares.
    pub fn revoke_key_sha256(&mut self, key: &KeyData) {
        let plain = key.certificate().map_or(key, |cert| cert.public_key());
        let digest = plain.fingerprint(HashAlg::Sha256);
        self.key_sha256.insert(digest.as_bytes().to_vec());
    }

    /// Revoke one issued certificate the way `ssh-keygen -k` does: by serial,
    /// or by key ID when its serial is 0 and so cannot be listed.
    pub fn revoke_certificate(&mut self, cert: &ssh_key::Certificate) {
        let ca = cert.signature_key();
        match cert.serial() {
            0 => self.revoke_key_id(ca, cert.key_id()),
            serial => self.revoke_serial(ca, serial),
        }
    }

    /// True when nothing has been revoked (the KRL would still be valid).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty() && self.key_sha256.is_empty() && self.keys.is_empty()
    }

    /// The KRL file contents.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(KRL_MAGIC);
        put_u32(&mut out, KRL_FORMAT_VERSION);
        put_u64(&mut out, self.krl_version);
        put_u64(&mut out, self.generated_date);
        put_u64(&mut out, 0); // flags: none are defined
        put_string(&mut out, b""); // reserved
        put_string(&mut out, self.comment.as_bytes());

        for (ca_blob, revoked) in &self.certs {
            let section = encode_certificates_section(ca_blob, revoked);
            put_section(&mut out, KRL_SECTION_CERTIFICATES, &section);
        }
        if !self.keys.is_empty() {
            let mut section = Vec::new();
            for blob in &self.keys {
                put_string(&mut section, blob);
            }
            put_section(&mut out, KRL_SECTION_EXPLICIT_KEY, &section);
        }
        if !self.key_sha256.is_empty() {
            let mut section = Vec::new();
            for digest in &self.key_sha256 {
                put_string(&mut section, digest);
            }
            put_section(&mut out, KRL_SECTION_FINGERPRINT_SHA256, &section);
        }
        out
    }

    fn ca_entry(&mut self, ca: &KeyData) -> &mut CaRevocations {
        // Encoding an in-memory key only fails past 4 GiB. Should it ever fail,
        // the empty blob (OpenSSH's "any CA") over-revokes rather than silently
        // dropping a revocation: a revocation list must fail closed.
        let blob = ca.encode_vec().unwrap_or_default();
        self.certs.entry(blob).or_default()
    }
}

fn encode_certificates_section(ca_blob: &[u8], revoked: &CaRevocations) -> Vec<u8> {
    let mut section = Vec::new();
    put_string(&mut section, ca_blob);
    put_string(&mut section, b""); // reserved
    // Plain lists only: our serials are random, so ranges and bitmaps (which
    // OpenSSH also understands) would rarely be smaller.
    if !revoked.serials.is_empty() {
        let mut list = Vec::with_capacity(revoked.serials.len().saturating_mul(8));
        for serial in &revoked.serials {
            put_u64(&mut list, *serial);
        }
        put_section(&mut section, KRL_SECTION_CERT_SERIAL_LIST, &list);
    }
    if !revoked.key_ids.is_empty() {
        let mut list = Vec::new();
        for key_id in &revoked.key_ids {
            put_string(&mut list, key_id.as_bytes());
        }
        put_section(&mut section, KRL_SECTION_CERT_KEY_ID, &list);
    }
    section
}

fn put_section(out: &mut Vec<u8>, section_type: u8, data: &[u8]) {
    out.push(section_type);
    put_string(out, data);
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// SSH `string`: u32 length then bytes. The format cannot express 4 GiB or
/// more; such data (far beyond what sshd will load anyway) is cut at the
/// length written, so the file stays self-consistent and sshd rejects it whole.
fn put_string(out: &mut Vec<u8>, data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    put_u32(out, len);
    let kept = usize::try_from(len).unwrap_or(usize::MAX);
    out.extend_from_slice(data.get(..kept).unwrap_or(data));
}

// Tests may panic: a failed unwrap is a failed test.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::public::Ed25519PublicKey;

    fn ed25519(byte: u8) -> KeyData {
        KeyData::Ed25519(Ed25519PublicKey([byte; 32]))
    }

    fn header(comment: &[u8]) -> Vec<u8> {
        let mut h = b"SSHKRL\n\0".to_vec();
        h.extend_from_slice(&1u32.to_be_bytes());
        h.extend_from_slice(&7u64.to_be_bytes());
        h.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        h.extend_from_slice(&0u64.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&u32::try_from(comment.len()).unwrap().to_be_bytes());
        h.extend_from_slice(comment);
        h
    }

    #[test]
    fn empty_builder_is_just_the_header() {
        let krl = KrlBuilder::new(7, 1_700_000_000, "nightly");
        assert!(krl.is_empty());
        assert_eq!(krl.encode(), header(b"nightly"));
    }

    #[test]
    fn nul_bytes_are_stripped_from_the_comment() {
        let krl = KrlBuilder::new(7, 1_700_000_000, "a\0b");
        assert_eq!(krl.encode(), header(b"ab"));
    }

    #[test]
    fn serial_list_is_sorted_and_deduplicated() {
        let ca = ed25519(1);
        let mut krl = KrlBuilder::new(7, 1_700_000_000, "");
        for serial in [30, 10, 20, 10, 0] {
            krl.revoke_serial(&ca, serial);
        }
        let mut expected = header(b"");
        let ca_blob = ca.encode_vec().unwrap();
        let mut section = Vec::new();
        put_string(&mut section, &ca_blob);
        put_string(&mut section, b"");
        section.push(0x20);
        section.extend_from_slice(&24u32.to_be_bytes());
        for s in [10u64, 20, 30] {
            section.extend_from_slice(&s.to_be_bytes());
        }
        expected.push(1);
        put_string(&mut expected, &section);
        assert_eq!(krl.encode(), expected);
    }

    #[test]
    fn serial_zero_alone_records_nothing() {
        let mut krl = KrlBuilder::new(7, 1_700_000_000, "");
        krl.revoke_serial(&ed25519(1), 0);
        krl.revoke_key_id(&ed25519(1), "nul\0inside");
        assert!(krl.is_empty());
        assert_eq!(krl.encode(), header(b""));
    }

    #[test]
    fn output_does_not_depend_on_insertion_order() {
        let (a, b) = (ed25519(1), ed25519(2));
        let mut one = KrlBuilder::new(7, 1_700_000_000, "c");
        one.revoke_serial(&a, 5);
        one.revoke_key_id(&b, "bob");
        one.revoke_key_id(&b, "alice");
        one.revoke_key_sha256(&ed25519(9));
        one.revoke_key_sha256(&ed25519(3));
        let mut two = KrlBuilder::new(7, 1_700_000_000, "c");
        two.revoke_key_sha256(&ed25519(3));
        two.revoke_key_id(&b, "alice");
        two.revoke_key_sha256(&ed25519(9));
        two.revoke_key_id(&b, "bob");
        two.revoke_serial(&a, 5);
        two.revoke_serial(&a, 5);
        assert_eq!(one.encode(), two.encode());
    }

    #[test]
    fn sha256_hashes_are_in_byte_order() {
        let mut krl = KrlBuilder::new(7, 1_700_000_000, "");
        for byte in 0..20u8 {
            krl.revoke_key_sha256(&ed25519(byte));
        }
        let encoded = krl.encode();
        let body = &encoded[header(b"").len()..];
        assert_eq!(body[0], KRL_SECTION_FINGERPRINT_SHA256);
        let data = &body[5..];
        assert_eq!(data.len(), 20 * 36);
        let hashes: Vec<&[u8]> = data.chunks(36).map(|c| &c[4..]).collect();
        assert!(hashes.windows(2).all(|w| w[0] < w[1]));
    }
}
