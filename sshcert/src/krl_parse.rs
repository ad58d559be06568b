//! Decoder for OpenSSH Key Revocation Lists, and the revocation check itself.
//!
//! [`Krl::parse`] reads the binary format of OpenSSH's `PROTOCOL.krl` (what
//! `ssh-keygen -k` and [`crate::KrlBuilder`] write) and [`Krl::is_revoked`] /
//! [`Krl::is_key_revoked`] answer what sshd's `RevokedKeys` would.
//!
//! Guarantees, whatever the bytes (a KRL comes from a file or the network):
//! parsing never panics; input longer than [`MAX_KRL_LEN`] is refused before
//! any work; what is kept is a small constant multiple of the input size
//! (serial bitmaps are kept as bitmaps, never expanded into serials); and a
//! KRL OpenSSH would refuse to load is refused with a [`KrlError`] naming the
//! rule, never quoting the input. A caller that cannot load its KRL must fail
//! closed (refuse every certificate), as sshd does.
//!
//! Signature sections (a legacy feature OpenSSH has since removed) are parsed
//! past but not verified: trust in a KRL comes from where it was read, and an
//! unverified signature can only make us *load* a KRL, which only ever adds
//! revocations.

use std::collections::{BTreeMap, BTreeSet};

use sha1::{Digest as _, Sha1};
use ssh_key::encoding::{Decode as _, Encode as _};
use ssh_key::public::KeyData;
use ssh_key::{Certificate, HashAlg};

/// Largest KRL accepted. In the plain serial-list form our encoder writes this
/// is two million revoked certificates; `ssh-keygen` packs dense serials far
/// tighter still.
pub const MAX_KRL_LEN: usize = 16 * 1024 * 1024;

const KRL_MAGIC: &[u8; 8] = b"SSHKRL\n\0";
const KRL_FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;

/// OpenSSH's `SSHBUF_MAX_BIGNUM`: the longest bitmap it will load, in bytes
/// (plus one optional leading zero byte).
const MAX_BITMAP_BYTES: usize = 16384 / 8;
const MAX_BITMAP_BITS: u64 = (MAX_BITMAP_BYTES * 8) as u64;

/// Why a KRL was refused. Messages name the rule broken, never the content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrlError {
    #[error("the KRL is larger than {MAX_KRL_LEN} bytes")]
    TooLarge,
    #[error("not a KRL (bad magic)")]
    BadMagic,
    #[error("unsupported KRL format version {0}")]
    UnsupportedFormatVersion(u32),
    #[error("the KRL is truncated or a length field overruns its data (in {0})")]
    Truncated(&'static str),
    #[error("a KRL {0} contains a NUL byte")]
    NulInString(&'static str),
    #[error("unknown KRL section type {0:#04x}")]
    UnknownSection(u8),
    #[error("unknown KRL certificate subsection type {0:#04x}")]
    UnknownCertSection(u8),
    #[error("a KRL {0} has data left over after its last entry")]
    TrailingData(&'static str),
    #[error("the KRL has a non-signature section after a signature section")]
    SectionAfterSignature,
    #[error("a certificates section names a CA key that is not a valid public key")]
    BadCaKey,
    #[error("a KRL revokes serial 0, which OpenSSH refuses")]
    ZeroSerial,
    #[error("a KRL serial range has its start above its end")]
    BadSerialRange,
    #[error("a KRL serial bitmap is negative, too large, or runs past serial 2^64-1")]
    BadBitmap,
    #[error("a KRL {0} hash has the wrong length")]
    BadHashLength(&'static str),
}

impl KrlError {
    /// Stable machine-readable code for logs and audit events.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::TooLarge => "krl_too_large",
            Self::BadMagic => "krl_bad_magic",
            Self::UnsupportedFormatVersion(_) => "krl_unsupported_version",
            Self::Truncated(_) => "krl_truncated",
            Self::NulInString(_) => "krl_nul_in_string",
            Self::UnknownSection(_) => "krl_unknown_section",
            Self::UnknownCertSection(_) => "krl_unknown_cert_section",
            Self::TrailingData(_) => "krl_trailing_data",
            Self::SectionAfterSignature => "krl_section_after_signature",
            Self::BadCaKey => "krl_bad_ca_key",
            Self::ZeroSerial => "krl_zero_serial",
            Self::BadSerialRange => "krl_bad_serial_range",
            Self::BadBitmap => "krl_bad_bitmap",
            Self::BadHashLength(_) => "krl_bad_hash_length",
        }
    }
}

/// A loaded Key Revocation List.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Krl {
    krl_version: u64,
    generated_date: u64,
    comment: String,
    /// Keyed by the CA's canonical public key blob; the empty blob is
    /// OpenSSH's wildcard "any CA" entry.
    certs: BTreeMap<Vec<u8>, CertRevocations>,
    /// Plain public key blobs.
    explicit_keys: BTreeSet<Vec<u8>>,
    sha1: BTreeSet<[u8; 20]>,
    sha256: BTreeSet<[u8; 32]>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CertRevocations {
    /// Inclusive ranges, sorted, non-overlapping and non-adjacent once parsed.
    ranges: Vec<(u64, u64)>,
    /// Sorted by offset; may overlap each other.
    bitmaps: Vec<Bitmap>,
    key_ids: BTreeSet<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Bitmap {
    offset: u64,
    /// Big-endian, no leading zero bytes: bit 0 of the last byte is `offset`.
    bits: Vec<u8>,
}

impl Krl {
    /// Load a KRL from its binary form.
    pub fn parse(bytes: &[u8]) -> Result<Self, KrlError> {
        if bytes.len() > MAX_KRL_LEN {
            return Err(KrlError::TooLarge);
        }
        let rest = bytes.strip_prefix(KRL_MAGIC.as_slice()).ok_or(KrlError::BadMagic)?;
        let mut r = Reader::new(rest, "header");
        let format_version = r.u32()?;
        if format_version != KRL_FORMAT_VERSION {
            return Err(KrlError::UnsupportedFormatVersion(format_version));
        }
        let mut krl = Self { krl_version: r.u64()?, generated_date: r.u64()?, ..Self::default() };
        let _flags = r.u64()?;
        let _reserved = r.string()?;
        let comment = c_string(r.string()?, "comment")?;
        krl.comment = String::from_utf8_lossy(comment).into_owned();

        let mut seen_signature = false;
        while !r.is_empty() {
            r.context = "section header";
            let section_type = r.u8()?;
            let data = r.string()?;
            if section_type == SECTION_SIGNATURE {
                // byte type, string signing key, string signature.
                r.context = "signature section";
                let _signature = r.string()?;
                seen_signature = true;
                continue;
            }
            if seen_signature {
                return Err(KrlError::SectionAfterSignature);
            }
            match section_type {
                SECTION_CERTIFICATES => krl.parse_certificates(data)?,
                SECTION_EXPLICIT_KEY => {
                    let mut s = Reader::new(data, "explicit key section");
                    while !s.is_empty() {
                        krl.explicit_keys.insert(s.string()?.to_vec());
                    }
                }
                SECTION_FINGERPRINT_SHA1 => {
                    let mut s = Reader::new(data, "SHA1 section");
                    while !s.is_empty() {
                        let hash = s.string()?.try_into().map_err(|_| KrlError::BadHashLength("SHA1"))?;
                        krl.sha1.insert(hash);
                    }
                }
                SECTION_FINGERPRINT_SHA256 => {
                    let mut s = Reader::new(data, "SHA256 section");
                    while !s.is_empty() {
                        let hash = s.string()?.try_into().map_err(|_| KrlError::BadHashLength("SHA256"))?;
                        krl.sha256.insert(hash);
                    }
                }
                other => return Err(KrlError::UnknownSection(other)),
            }
        }
        for entry in krl.certs.values_mut() {
            entry.finish();
        }
        Ok(krl)
    }

    fn parse_certificates(&mut self, data: &[u8]) -> Result<(), KrlError> {
        let mut s = Reader::new(data, "certificates section");
        let ca_blob = s.string()?;
        let _reserved = s.string()?;
        let ca_key = if ca_blob.is_empty() { Vec::new() } else { canonical_key_blob(ca_blob)? };
        let entry = self.certs.entry(ca_key).or_default();
        while !s.is_empty() {
            s.context = "certificate subsection header";
            let sub_type = s.u8()?;
            let sub = s.string()?;
            match sub_type {
                CERT_SERIAL_LIST => {
                    let mut l = Reader::new(sub, "serial list");
                    while !l.is_empty() {
                        let serial = l.u64()?;
                        if serial == 0 {
                            return Err(KrlError::ZeroSerial);
                        }
                        entry.ranges.push((serial, serial));
                    }
                }
                CERT_SERIAL_RANGE => {
                    let mut l = Reader::new(sub, "serial range");
                    let (lo, hi) = (l.u64()?, l.u64()?);
                    if lo == 0 {
                        return Err(KrlError::ZeroSerial);
                    }
                    if lo > hi {
                        return Err(KrlError::BadSerialRange);
                    }
                    entry.ranges.push((lo, hi));
                    l.finish()?;
                }
                CERT_SERIAL_BITMAP => {
                    let mut l = Reader::new(sub, "serial bitmap");
                    let offset = l.u64()?;
                    let bits = bitmap_bytes(l.string()?)?;
                    check_bitmap(offset, bits)?;
                    if !bits.is_empty() {
                        entry.bitmaps.push(Bitmap { offset, bits: bits.to_vec() });
                    }
                    l.finish()?;
                }
                CERT_KEY_ID => {
                    let mut l = Reader::new(sub, "key ID list");
                    while !l.is_empty() {
                        entry.key_ids.insert(c_string(l.string()?, "key ID")?.to_vec());
                    }
                }
                other => return Err(KrlError::UnknownCertSection(other)),
            }
        }
        Ok(())
    }

    /// The KRL's own version number (grows with each published KRL).
    pub fn krl_version(&self) -> u64 {
        self.krl_version
    }

    /// When the KRL was generated, in seconds since the epoch.
    pub fn generated_date(&self) -> u64 {
        self.generated_date
    }

    /// The free-text comment (invalid UTF-8 replaced), for operators only.
    pub fn comment(&self) -> &str {
        &self.comment
    }

    /// Whether OpenSSH would refuse this certificate under this KRL: its
    /// serial (if not 0) or key ID is listed under the CA that signed it or
    /// under "any CA", or the certified key itself is revoked, or the CA key
    /// is revoked as a plain key.
    pub fn is_revoked(&self, cert: &Certificate) -> bool {
        self.plain_key_revoked(cert.public_key())
            || self.listed_certificate(cert)
            || self.plain_key_revoked(plain(cert.signature_key()))
    }

    /// Whether this key is revoked: by SHA-1 or SHA-256 hash of its plain
    /// blob or as an explicit key. Given certificate key data, the full
    /// [`Krl::is_revoked`] check applies.
    pub fn is_key_revoked(&self, key: &KeyData) -> bool {
        match key.certificate() {
            Some(cert) => self.is_revoked(cert),
            None => self.plain_key_revoked(key),
        }
    }

    fn plain_key_revoked(&self, key: &KeyData) -> bool {
        let Ok(blob) = key.encode_vec() else {
            // Only a key past 4 GiB fails to encode; fail closed.
            return true;
        };
        if self.explicit_keys.contains(&blob) {
            return true;
        }
        let sha1: [u8; 20] = Sha1::digest(&blob).into();
        if self.sha1.contains(&sha1) {
            return true;
        }
        key.fingerprint(HashAlg::Sha256).sha256().is_some_and(|digest| self.sha256.contains(&digest))
    }

    /// At most how many certificate serials this KRL revokes for certificates signed by
    /// `ca`: its own section's and the wildcard's ranges and bitmap bits, counted
    /// apart (overlaps count twice). A CA revokes what it issued one serial at a time;
    /// billions at once revoke every certificate it signs without naming it.
    pub fn serials_revoked_for(&self, ca: &KeyData) -> u128 {
        let own = plain(ca).encode_vec().ok();
        [own.and_then(|blob| self.certs.get(&blob)), self.certs.get(&Vec::new())]
            .into_iter()
            .flatten()
            .map(|entry| {
                let ranges: u128 = entry.ranges.iter().map(|&(lo, hi)| u128::from(hi.saturating_sub(lo)) + 1).sum();
                let bits: u128 =
                    entry.bitmaps.iter().flat_map(|b| &b.bits).map(|byte| u128::from(byte.count_ones())).sum();
                ranges + bits
            })
            .sum()
    }

    fn listed_certificate(&self, cert: &Certificate) -> bool {
        let Ok(ca_blob) = cert.signature_key().encode_vec() else {
            return true;
        };
        [self.certs.get(&ca_blob), self.certs.get(&Vec::new())]
            .into_iter()
            .flatten()
            .any(|entry| entry.key_ids.contains(cert.key_id().as_bytes()) || entry.serial_revoked(cert.serial()))
    }
}

impl CertRevocations {
    fn finish(&mut self) {
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(lo, hi) in &self.ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.ranges = merged;
        self.bitmaps.sort_by_key(|b| b.offset);
    }

    fn serial_revoked(&self, serial: u64) -> bool {
        // Serial 0 means "none assigned" and never matches (as in OpenSSH).
        // `parse` already refuses any KRL that lists 0; this keeps the rule
        // true should another way of building a `Krl` ever be added.
        if serial == 0 {
            return false;
        }
        let after = self.ranges.partition_point(|&(lo, _)| lo <= serial);
        if after.checked_sub(1).and_then(|i| self.ranges.get(i)).is_some_and(|&(_, hi)| serial <= hi) {
            return true;
        }
        let after = self.bitmaps.partition_point(|b| b.offset <= serial);
        self.bitmaps
            .get(..after)
            .unwrap_or_default()
            .iter()
            .rev()
            .take_while(|b| serial - b.offset < MAX_BITMAP_BITS)
            .any(|b| b.contains(serial))
    }
}

impl Bitmap {
    fn contains(&self, serial: u64) -> bool {
        let Some(index) = serial.checked_sub(self.offset) else {
            return false;
        };
        let Ok(byte_from_end) = usize::try_from(index / 8) else {
            return false;
        };
        let byte = self.bits.len().checked_sub(1 + byte_from_end).and_then(|i| self.bits.get(i));
        byte.is_some_and(|b| (b >> (index % 8)) & 1 == 1)
    }
}

/// The plain key inside certificate key data, or the key itself.
fn plain(key: &KeyData) -> &KeyData {
    key.certificate().map_or(key, |cert| cert.public_key())
}

/// Parse a CA key blob and re-encode it, so that comparison with a
/// certificate's signing key does not depend on encoding details.
fn canonical_key_blob(blob: &[u8]) -> Result<Vec<u8>, KrlError> {
    let mut reader = blob;
    let key = KeyData::decode(&mut reader).map_err(|_| KrlError::BadCaKey)?;
    if !reader.is_empty() {
        return Err(KrlError::BadCaKey);
    }
    key.encode_vec().map_err(|_| KrlError::BadCaKey)
}

/// OpenSSH `sshbuf_get_cstring`: a NUL is allowed only as the last byte (and
/// is then not part of the string).
fn c_string<'a>(raw: &'a [u8], what: &'static str) -> Result<&'a [u8], KrlError> {
    let value = raw.strip_suffix(b"\0").unwrap_or(raw);
    if value.contains(&0) {
        return Err(KrlError::NulInString(what));
    }
    Ok(value)
}

/// OpenSSH `sshbuf_get_bignum2_bytes_direct`: a non-negative mpint of at most
/// 16384 bits; returns the magnitude without leading zero bytes.
fn bitmap_bytes(mpint: &[u8]) -> Result<&[u8], KrlError> {
    if mpint.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(KrlError::BadBitmap);
    }
    let too_long = mpint.len() > MAX_BITMAP_BYTES + 1;
    let long_without_zero = mpint.len() == MAX_BITMAP_BYTES + 1 && mpint.first() != Some(&0);
    if too_long || long_without_zero {
        return Err(KrlError::BadBitmap);
    }
    let first = mpint.iter().position(|b| *b != 0).unwrap_or(mpint.len());
    Ok(mpint.get(first..).unwrap_or_default())
}

/// Refuses what OpenSSH refuses: a set bit for serial 0, and a bitmap whose
/// highest bit lies beyond serial 2^64-1.
fn check_bitmap(offset: u64, bits: &[u8]) -> Result<(), KrlError> {
    let Some(top) = bits.first() else {
        return Ok(());
    };
    let byte_bits = u64::try_from(bits.len()).map_err(|_| KrlError::BadBitmap)?.saturating_mul(8);
    let nbits = byte_bits - u64::from(top.leading_zeros());
    offset.checked_add(nbits - 1).ok_or(KrlError::BadBitmap)?;
    let lowest_set = bits.last().is_some_and(|b| b & 1 == 1);
    if offset == 0 && lowest_set {
        return Err(KrlError::ZeroSerial);
    }
    Ok(())
}

/// Bounds-checked big-endian reader for the SSH wire encoding.
struct Reader<'a> {
    buf: &'a [u8],
    context: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], context: &'static str) -> Self {
        Self { buf, context }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], KrlError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(KrlError::Truncated(self.context))?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], KrlError> {
        self.take(N)?.try_into().map_err(|_| KrlError::Truncated(self.context))
    }

    fn u8(&mut self) -> Result<u8, KrlError> {
        let [byte] = self.array::<1>()?;
        Ok(byte)
    }

    fn u32(&mut self) -> Result<u32, KrlError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, KrlError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<&'a [u8], KrlError> {
        let len = usize::try_from(self.u32()?).map_err(|_| KrlError::Truncated(self.context))?;
        self.take(len)
    }

    fn finish(&self) -> Result<(), KrlError> {
        if self.buf.is_empty() { Ok(()) } else { Err(KrlError::TrailingData(self.context)) }
    }
}
