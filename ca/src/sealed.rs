//! Stored API secrets, sealed at rest (e.g. a Proxmox VE API token).
//!
//! A secret is encrypted with AES-256-GCM under a key that argon2id derives from the CA
//! passphrase and a random per-secret salt, like the CA keys are encrypted with it: a copy
//! of the database without the passphrase holds no usable token. The secret's name and
//! kind are the associated data, so a sealed value moved to another row does not open.
//! The sealed form is `v1.<salt>.<nonce>.<ciphertext>` (base64url); nothing else about
//! the value is stored except a keyed fingerprint that identifies it without revealing it.

use argon2::Argon2;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portcullis_proto::recording::MAX_CHUNK_TEXT;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::CaError;

const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// A sealed recording chunk: where the encrypted part starts (after the version and the
/// nonce), and the compressed text within it (after its length).
const CHUNK_SECRET_AT: usize = 1 + NONCE_LEN;
const CHUNK_BODY_AT: usize = CHUNK_SECRET_AT + 4;

/// AES-256-GCM (ring's, the implementation rustls and russh already use here: see
/// ARCHITECTURE.md, "Dependencies"), with a 96-bit nonce and the 16-byte tag after the
/// ciphertext.
struct Aes256Gcm(LessSafeKey);

impl Aes256Gcm {
    fn new(key: &[u8; 32]) -> Result<Self, CaError> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| CaError::Internal("AES-256-GCM key".into()))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Encrypts `in_out` in place; the tag is returned (the caller puts it after).
    fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> Result<[u8; TAG_LEN], ()> {
        let tag = self.0.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out);
        tag.map_err(drop).and_then(|tag| <[u8; TAG_LEN]>::try_from(tag.as_ref()).map_err(drop))
    }

    /// Decrypts ciphertext-then-tag in place: the plaintext is the slice returned.
    fn open<'a>(&self, nonce: [u8; NONCE_LEN], aad: &[u8], in_out: &'a mut [u8]) -> Result<&'a mut [u8], ()> {
        self.0.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out).map_err(drop)
    }
}

fn cipher(passphrase: &SecretString, salt: &[u8]) -> Result<Aes256Gcm, CaError> {
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::default()
        .hash_password_into(passphrase.expose_secret().as_bytes(), salt, key.as_mut())
        .map_err(|_| CaError::Internal("secret key derivation".into()))?;
    Aes256Gcm::new(&key)
}

fn aad(name: &str, kind: &str) -> Vec<u8> {
    format!("portcullis-secret-v1\0{name}\0{kind}").into_bytes()
}

/// Encrypts `value` for the row `(name, kind)`.
pub fn seal(passphrase: &SecretString, name: &str, kind: &str, value: &SecretString) -> Result<String, CaError> {
    let salt = portcullis_sshcert::random_bytes::<SALT_LEN>();
    let nonce = portcullis_sshcert::random_bytes::<NONCE_LEN>();
    // Zeroized if sealing fails with the plaintext still in it.
    let mut sealed = Zeroizing::new(value.expose_secret().as_bytes().to_vec());
    let tag = cipher(passphrase, &salt)?
        .seal(nonce, &aad(name, kind), &mut sealed)
        .map_err(|_| CaError::Internal("secret encryption".into()))?;
    sealed.extend_from_slice(&tag);
    Ok(format!("v1.{}.{}.{}", B64.encode(salt), B64.encode(nonce), B64.encode(&*sealed)))
}

/// Decrypts a sealed value of the row `(name, kind)`. A wrong passphrase, a tampered
/// value or a value moved from another row are all the same error, which names none.
pub fn open(passphrase: &SecretString, name: &str, kind: &str, sealed: &str) -> Result<SecretString, CaError> {
    let refused = || CaError::Config(format!("the stored secret {name:?} does not decrypt with the CA passphrase"));
    let mut parts = sealed.split('.');
    let (Some("v1"), Some(salt), Some(nonce), Some(body), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused());
    };
    let (salt, nonce, body) = match (B64.decode(salt), B64.decode(nonce), B64.decode(body)) {
        (Ok(s), Ok(n), Ok(b)) if s.len() == SALT_LEN && n.len() == NONCE_LEN => (s, n, b),
        _ => return Err(refused()),
    };
    let nonce = <[u8; NONCE_LEN]>::try_from(nonce.as_slice()).map_err(|_| refused())?;
    let mut body = Zeroizing::new(body);
    let plain = cipher(passphrase, &salt)?.open(nonce, &aad(name, kind), &mut body).map_err(|_| refused())?;
    let text = std::str::from_utf8(plain).map_err(|_| refused())?;
    Ok(SecretString::from(text.to_owned()))
}

/// The sealing key of one session recording. One master key per deployment is argon2id
/// of the CA passphrase and a random salt kept in the database (derived once per
/// process: argon2id costs tens of milliseconds, too much for every recorded session);
/// each recording's key is HKDF-SHA256 of it with the recording's own random salt and its
/// session id. Each chunk is AES-256-GCM with a random nonce and the session id and chunk
/// number as associated data, so a chunk moved to another place in this or another
/// recording does not open. Sealed form (bytes): the version ([`ChunkFormat`]), the
/// nonce, then encrypted: the chunk's length (u32, little-endian) and its LZ4 block; then
/// the tag. The version is in the associated data too, so a chunk does not open as the
/// other format.
pub struct RecordingSeal {
    cipher: Aes256Gcm,
}

/// What a recording chunk holds; its number is the sealed chunk's version byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFormat {
    /// asciicast v2 event lines, as bastions older than frames send them.
    EventLines = 1,
    /// Frames ([`portcullis_proto::frames`]).
    Frames = 2,
}

/// An opened recording chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenedChunk {
    Lines(String),
    Frames(Vec<u8>),
}

/// The master key recording keys are derived from.
pub struct RecordingMaster(Zeroizing<[u8; 32]>);

impl RecordingSeal {
    /// A fresh salt (for the master key, or for a new recording), base64url.
    pub fn new_salt() -> String {
        B64.encode(portcullis_sshcert::random_bytes::<SALT_LEN>())
    }

    /// argon2id of the passphrase and the deployment's salt (slow: once per process).
    pub fn master(passphrase: &SecretString, salt: &str) -> Result<RecordingMaster, CaError> {
        let salt = decode_salt(salt)?;
        let mut key = Zeroizing::new([0u8; 32]);
        Argon2::default()
            .hash_password_into(passphrase.expose_secret().as_bytes(), &salt, key.as_mut())
            .map_err(|_| CaError::Internal("recording key derivation".into()))?;
        Ok(RecordingMaster(key))
    }

    /// The key of the recording of `session_id` whose salt is `salt` (HKDF-SHA256, RFC 5869).
    pub fn new(master: &RecordingMaster, salt: &str, session_id: &str) -> Result<RecordingSeal, CaError> {
        let salt = decode_salt(salt)?;
        let prk = hmac_sha256(&salt, master.0.as_ref())?;
        let mut info = format!("portcullis-recording-key-v1\0{session_id}").into_bytes();
        info.push(1);
        let key = Zeroizing::new(hmac_sha256(prk.as_ref(), &info)?);
        Ok(RecordingSeal { cipher: Aes256Gcm::new(&key)? })
    }

    fn aad(format: ChunkFormat, session_id: &str, seq: u64) -> Vec<u8> {
        let version = format as u8;
        format!("portcullis-recording-v{version}\0{session_id}\0{seq}").into_bytes()
    }

    /// `plain` compressed (LZ4: terminal text shrinks a few times) and encrypted in the
    /// same buffer. A chunk whose start does not compress (random or already compressed
    /// bytes, as a bulk copy sends) is stored as one LZ4 literal run: the same block format,
    /// without searching a megabyte for matches that are not there.
    pub fn seal(&self, session_id: &str, seq: u64, format: ChunkFormat, plain: &[u8]) -> Result<Vec<u8>, CaError> {
        let failed = || CaError::Internal("recording encryption".into());
        let len = u32::try_from(plain.len()).map_err(|_| failed())?;
        let nonce = portcullis_sshcert::random_bytes::<NONCE_LEN>();
        let room = lz4_flex::block::get_maximum_output_size(plain.len());
        let mut out = Vec::with_capacity(CHUNK_BODY_AT + room + TAG_LEN);
        out.push(format as u8);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&len.to_le_bytes());
        if compresses(plain).map_err(|_| failed())? {
            out.resize(CHUNK_BODY_AT + room, 0);
            let (_, body) = out.split_at_mut(CHUNK_BODY_AT);
            let compressed = lz4_flex::block::compress_into(plain, body).map_err(|_| failed())?;
            out.truncate(CHUNK_BODY_AT + compressed);
        } else {
            push_literal_block(&mut out, plain);
        }
        let (_, secret) = out.split_at_mut(CHUNK_SECRET_AT);
        let tag = self.cipher.seal(nonce, &Self::aad(format, session_id, seq), secret).map_err(|_| failed())?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// A wrong passphrase, a tampered or moved chunk: one error, naming none of it.
    pub fn open(&self, session_id: &str, seq: u64, sealed: &[u8]) -> Result<OpenedChunk, CaError> {
        let refused = || CaError::Config(format!("recording {session_id} does not decrypt with the CA passphrase"));
        let (version, rest) = sealed.split_at_checked(1).ok_or_else(refused)?;
        let (nonce, secret_and_tag) = rest.split_at_checked(NONCE_LEN).ok_or_else(refused)?;
        let format = match version {
            [1] => ChunkFormat::EventLines,
            [2] => ChunkFormat::Frames,
            _ => return Err(refused()),
        };
        if secret_and_tag.len() < TAG_LEN {
            return Err(refused());
        }
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| refused())?;
        let mut buffer = secret_and_tag.to_vec();
        let secret =
            self.cipher.open(nonce, &Self::aad(format, session_id, seq), &mut buffer).map_err(|_| refused())?;
        let (len, block) = secret.split_at_checked(4).ok_or_else(refused)?;
        let len = <[u8; 4]>::try_from(len).map_err(|_| refused())?;
        // Authenticated, so written by this CA; the bound keeps a bug from allocating much.
        let len = usize::try_from(u32::from_le_bytes(len)).ok().filter(|&n| n <= MAX_CHUNK_TEXT).ok_or_else(refused)?;
        let mut plain = vec![0; len];
        match lz4_flex::block::decompress_into(block, &mut plain) {
            Ok(n) if n == len => match format {
                ChunkFormat::EventLines => String::from_utf8(plain).map(OpenedChunk::Lines).map_err(|_| refused()),
                ChunkFormat::Frames => Ok(OpenedChunk::Frames(plain)),
            },
            _ => Err(refused()),
        }
    }
}

/// How much of a chunk is tried before compressing all of it.
const PROBE: usize = 64 * 1024;

/// Whether compressing `plain` is worth it: its first [`PROBE`] bytes shrink by at least
/// a sixteenth. A chunk no longer than the probe is simply compressed.
fn compresses(plain: &[u8]) -> Result<bool, lz4_flex::block::CompressError> {
    let probe = match plain.get(..PROBE) {
        Some(probe) if plain.len() > PROBE => probe,
        _ => return Ok(true),
    };
    let mut scratch = vec![0; lz4_flex::block::get_maximum_output_size(PROBE)];
    let compressed = lz4_flex::block::compress_into(probe, &mut scratch)?;
    Ok(compressed * 16 < PROBE * 15)
}

/// `literals` as an LZ4 block of one sequence without a match (the LZ4 block format: a
/// token whose high nibble is the literal length, 15 meaning that bytes of 255 and a last
/// byte below it add to the length; then the literals).
fn push_literal_block(out: &mut Vec<u8>, literals: &[u8]) {
    let len = literals.len();
    out.reserve(1 + len / 255 + 1 + len);
    if len < 15 {
        out.push((len as u8) << 4);
    } else {
        out.push(0xF0);
        let rest = len - 15;
        out.resize(out.len() + rest / 255, 255);
        out.push((rest % 255) as u8);
    }
    out.extend_from_slice(literals);
}

fn decode_salt(salt: &str) -> Result<Vec<u8>, CaError> {
    B64.decode(salt).ok().filter(|s| s.len() == SALT_LEN).ok_or(CaError::Internal("recording salt".into()))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Result<Zeroizing<[u8; 32]>, CaError> {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<Sha256>::new_from_slice(key).map_err(|_| CaError::Internal("recording key derivation".into()))?;
    mac.update(message);
    Ok(Zeroizing::new(mac.finalize().into_bytes().into()))
}

/// 16 hex digits identifying a value without revealing it: a SHA-256 keyed by the name,
/// so equal values under two names do not look equal, and a rotation changes it. (The
/// values it is used for are random tokens; it is no oracle for a guessable password.)
pub fn fingerprint(name: &str, value: &SecretString) -> String {
    let mut h = Sha256::new();
    h.update(b"portcullis-secret-fingerprint-v1\0");
    h.update(name.as_bytes());
    h.update(b"\0");
    h.update(value.expose_secret().as_bytes());
    let digest = h.finalize();
    hex::encode(digest.get(..8).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cipher_is_standard_aes_256_gcm() {
        // Test case 16 of McGrew and Viega's GCM specification (AES-256, 96-bit nonce,
        // associated data): values sealed before 2026-12, with the `aes-gcm` crate, open.
        let key: [u8; 32] = hex::decode("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
            .unwrap()
            .try_into()
            .unwrap();
        let nonce: [u8; NONCE_LEN] = hex::decode("cafebabefacedbaddecaf888").unwrap().try_into().unwrap();
        let aad = hex::decode("feedfacedeadbeeffeedfacedeadbeefabaddad2").unwrap();
        let plain = hex::decode(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        )
        .unwrap();
        let sealed = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
        let tag = "76fc6ece0f4e1768cddf8853bb2d551b";
        let cipher = Aes256Gcm::new(&key).unwrap();
        let mut buffer = plain.clone();
        assert_eq!(hex::encode(cipher.seal(nonce, &aad, &mut buffer).unwrap()), tag);
        assert_eq!(hex::encode(&buffer), sealed);
        let mut buffer = hex::decode(format!("{sealed}{tag}")).unwrap();
        assert_eq!(cipher.open(nonce, &aad, &mut buffer).unwrap(), plain.as_slice());
        let mut tampered = hex::decode(format!("{sealed}{tag}")).unwrap();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(cipher.open(nonce, &aad, &mut tampered).is_err());
        assert!(cipher.open(nonce, b"other", &mut hex::decode(format!("{sealed}{tag}")).unwrap()).is_err());
    }

    fn pass(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn recording_chunks_open_only_in_their_place_and_with_the_passphrase() {
        let (deployment, salt) = (RecordingSeal::new_salt(), RecordingSeal::new_salt());
        let master = RecordingSeal::master(&pass("p1"), &deployment).unwrap();
        let seal = RecordingSeal::new(&master, &salt, "s1").unwrap();
        let sealed = seal.seal("s1", 3, ChunkFormat::EventLines, b"[0.5, \"o\", \"secret output\"]\n").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(seal.open("s1", 3, &sealed).unwrap(), lines("[0.5, \"o\", \"secret output\"]\n"));
        assert!(seal.open("s1", 4, &sealed).is_err(), "moved within the recording");
        assert!(seal.open("s2", 3, &sealed).is_err(), "moved to another recording");
        // Another passphrase, deployment salt, recording salt or session: another key.
        let again = |passphrase: &str, deployment: &str, salt: &str, session: &str| {
            let master = RecordingSeal::master(&pass(passphrase), deployment).unwrap();
            RecordingSeal::new(&master, salt, session).unwrap().open("s1", 3, &sealed).is_ok()
        };
        assert!(again("p1", &deployment, &salt, "s1"), "the same inputs give the same key");
        assert!(!again("p2", &deployment, &salt, "s1"));
        assert!(!again("p1", &RecordingSeal::new_salt(), &salt, "s1"));
        assert!(!again("p1", &deployment, &RecordingSeal::new_salt(), "s1"));
        assert!(!again("p1", &deployment, &salt, "s2"));
        for at in [0, 1, 14, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[at] ^= 1;
            assert!(seal.open("s1", 3, &tampered).is_err(), "byte {at} changed");
        }
        for cut in [0, 1, 13, 16, sealed.len() - 1] {
            assert!(seal.open("s1", 3, &sealed[..cut]).is_err(), "cut at {cut}");
        }
        assert!(RecordingSeal::master(&pass("p1"), "short").is_err());
        // Its version byte says how to read it, and is bound to it: a chunk of lines
        // relabelled as frames (or the reverse) does not open.
        let frames = seal.seal("s1", 3, ChunkFormat::Frames, b"frames").unwrap();
        for (chunk, other) in [(&sealed, 2), (&frames, 1)] {
            let mut relabelled = chunk.clone();
            relabelled[0] = other;
            assert!(seal.open("s1", 3, &relabelled).is_err(), "relabelled as version {other}");
        }
        assert_eq!(seal.open("s1", 3, &frames).unwrap(), OpenedChunk::Frames(b"frames".to_vec()));
    }

    fn lines(text: &str) -> OpenedChunk {
        OpenedChunk::Lines(text.to_owned())
    }

    #[test]
    fn recording_chunks_are_compressed_before_sealing() {
        let master = RecordingSeal::master(&pass("p1"), &RecordingSeal::new_salt()).unwrap();
        let seal = RecordingSeal::new(&master, &RecordingSeal::new_salt(), "s1").unwrap();
        let text = "[0.5, \"o\", \"drwxr-xr-x 2 root root 4096 Dec  4 10:06 /var/log\\r\\n\"]\n".repeat(2000);
        let sealed = seal.seal("s1", 0, ChunkFormat::EventLines, text.as_bytes()).unwrap();
        assert!(sealed.len() * 5 < text.len(), "{} of {}", sealed.len(), text.len());
        assert_eq!(seal.open("s1", 0, &sealed).unwrap(), lines(&text));
        // Bytes that do not compress cost a few bytes more, not a failure.
        let noise: String =
            (0..4096u32).map(|i| char::from(b'!' + (i.wrapping_mul(2_654_435_761) >> 27) as u8)).collect();
        let sealed = seal.seal("s1", 1, ChunkFormat::Frames, noise.as_bytes()).unwrap();
        assert_eq!(seal.open("s1", 1, &sealed).unwrap(), OpenedChunk::Frames(noise.into_bytes()));
        assert_eq!(seal.open("s1", 0, &seal.seal("s1", 0, ChunkFormat::EventLines, b"").unwrap()).unwrap(), lines(""));
    }

    #[test]
    fn bytes_that_do_not_compress_are_one_literal_run_that_lz4_reads() {
        // Every length around the token's and the 255-byte steps' edges.
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let noise: Vec<u8> = (0..3 * PROBE)
            .map(|_| {
                // xorshift64: bytes with nothing for LZ4 to match.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        for len in (0..=600).chain([PROBE - 1, PROBE, PROBE + 1, noise.len()]) {
            let mut block = Vec::new();
            push_literal_block(&mut block, &noise[..len]);
            assert_eq!(lz4_flex::block::decompress(&block, len).unwrap(), &noise[..len], "{len} bytes");
        }
        assert!(!compresses(&noise).unwrap(), "noise is stored as it is");
        assert!(compresses(&noise[..PROBE]).unwrap(), "a chunk no longer than the probe is compressed");
        let text = b"drwxr-xr-x 2 root root 4096 Dec  4 10:06 /var/log\r\n".repeat(3000);
        assert!(compresses(&text).unwrap());
        // Sealed, noise is its length and a little more, and opens as it was.
        let master = RecordingSeal::master(&pass("p1"), &RecordingSeal::new_salt()).unwrap();
        let seal = RecordingSeal::new(&master, &RecordingSeal::new_salt(), "s1").unwrap();
        let sealed = seal.seal("s1", 0, ChunkFormat::Frames, &noise).unwrap();
        assert!(sealed.len() < noise.len() + noise.len() / 200 + 64, "{} of {}", sealed.len(), noise.len());
        assert_eq!(seal.open("s1", 0, &sealed).unwrap(), OpenedChunk::Frames(noise));
    }

    #[test]
    fn seals_and_opens_only_for_its_row_and_passphrase() {
        let token = pass("3f2a4b6c-0000-4e1d-9a7b-1234567890ab");
        let sealed = seal(&pass("ca-pass"), "pve-a", "proxmox_api_token", &token).unwrap();
        assert!(!sealed.contains("3f2a4b6c"), "the value is not readable in the sealed form");
        let back = open(&pass("ca-pass"), "pve-a", "proxmox_api_token", &sealed).unwrap();
        assert_eq!(back.expose_secret(), token.expose_secret());
        // Another passphrase, another row, a flipped byte: refused, and the error names
        // neither the value nor the passphrase.
        for (p, n) in [("other", "pve-a"), ("ca-pass", "pve-b")] {
            let e = open(&pass(p), n, "proxmox_api_token", &sealed).unwrap_err().to_string();
            assert!(!e.contains("3f2a") && !e.contains("ca-pass"), "{e}");
        }
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(open(&pass("ca-pass"), "pve-a", "proxmox_api_token", &String::from_utf8(tampered).unwrap()).is_err());
        assert!(open(&pass("ca-pass"), "pve-a", "proxmox_api_token", "v1.x.y").is_err());
        // Two seals of one value differ (fresh salt and nonce).
        assert_ne!(sealed, seal(&pass("ca-pass"), "pve-a", "proxmox_api_token", &token).unwrap());
    }

    #[test]
    fn fingerprints_differ_by_name_and_value() {
        let v = pass("value");
        assert_eq!(fingerprint("a", &v), fingerprint("a", &v));
        assert_ne!(fingerprint("a", &v), fingerprint("b", &v));
        assert_ne!(fingerprint("a", &v), fingerprint("a", &pass("value2")));
        assert_eq!(fingerprint("a", &v).len(), 16);
    }
}
