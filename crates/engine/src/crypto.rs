//! Client-side encryption of backups (off by default): AES-256-GCM of every
//! stored chunk and delta pack, and an HMAC-SHA256 that authenticates each
//! manifest.
//!
//! One 32-byte master key (from `--encryption-key-file` or
//! `MAILSAFE_ENCRYPTION_KEY`; raw, 64 hex digits or base64) is never used
//! directly: HMAC-SHA256 derives an encryption key, a MAC key and a public
//! key id from it, so the id in a manifest says which key was used without
//! revealing anything about it.
//!
//! An encrypted object is `MSENC1\0\0`, a random 96-bit nonce, then the GCM
//! ciphertext and tag; the object's key (e.g. `chunks/<sha>`) is the
//! associated data, so objects cannot be swapped for one another. Manifests
//! stay plaintext JSON (ids, sizes and hashes only) but carry
//! [`Encryption`](crate::format::Encryption): the algorithm, the key id and
//! a MAC over the manifest with the MAC field empty. Because a manifest lists
//! the sha256 of every stored object, authenticating it authenticates the
//! whole snapshot; GCM authenticates each object again on its own.
//!
//! Content digests (chunk names, manifest chunk hashes, the image digest's
//! inputs) are keyed with a fourth sub-key when encrypting
//! ([`content_digest`]), so the plaintext manifests and object names cannot
//! be used to confirm a guess about the content.
//!
//! Nothing here ever formats key material: [`Key`]'s `Debug` shows the id.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Error;
use crate::format::{Encryption, Manifest};

/// Value of [`Encryption::alg`].
pub const ALG: &str = "aes-256-gcm";
/// Magic bytes at the start of every encrypted object.
pub const MAGIC: &[u8; 8] = b"MSENC1\0\0";
/// Environment variable holding the key itself.
pub const KEY_ENV: &str = "MAILSAFE_ENCRYPTION_KEY";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// A backup encryption key, with its derived sub-keys and public id.
#[derive(Clone)]
pub struct Key {
    cipher: Aes256Gcm,
    mac_key: [u8; 32],
    /// Keys the content digests that name chunks (see [`content_digest`]).
    digest_key: [u8; 32],
    id: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key {{ id: {:?} }}", self.id)
    }
}

fn derive(master: &[u8; 32], label: &str) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(master).expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(master: &[u8; 32]) -> Self {
        let enc = derive(master, "mailsafe/v1/aes-256-gcm");
        let mac_key = derive(master, "mailsafe/v1/manifest-mac");
        let digest_key = derive(master, "mailsafe/v1/content-digest");
        let id = hex::encode(&derive(master, "mailsafe/v1/key-id")[..8]);
        Key {
            cipher: Aes256Gcm::new(&enc.into()),
            mac_key,
            digest_key,
            id,
        }
    }

    /// Parses a key given as 32 raw bytes, 64 hex digits or base64 of 32
    /// bytes (surrounding whitespace ignored). `source` names where it came
    /// from, for the error; the error never contains the key.
    pub fn parse(raw: &[u8], source: &str) -> Result<Self, Error> {
        // Text forms first: 64 hex digits or 44 base64 characters can never
        // be confused with exactly 32 raw bytes.
        let text = std::str::from_utf8(raw).unwrap_or("").trim();
        let mut out = [0u8; 32];
        if text.len() == 64 && hex::decode_to_slice(text, &mut out).is_ok() {
            return Ok(Self::from_bytes(&out));
        }
        use base64::Engine;
        if let Ok(v) = base64::engine::general_purpose::STANDARD.decode(text) {
            if let Ok(bytes) = <[u8; 32]>::try_from(v.as_slice()) {
                return Ok(Self::from_bytes(&bytes));
            }
        }
        if let Ok(bytes) = <[u8; 32]>::try_from(raw) {
            return Ok(Self::from_bytes(&bytes));
        }
        Err(Error::Usage(format!(
            "the encryption key from {source} is not 32 bytes (give 32 raw bytes, 64 hex digits or base64 of 32 bytes)"
        )))
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&raw, &path.display().to_string())
    }

    /// The key configured by `file` (a `--encryption-key-file`) or else the
    /// [`KEY_ENV`] variable; `None` when neither is set (no encryption).
    pub fn from_sources(file: Option<&Path>) -> Result<Option<Self>, Error> {
        if let Some(path) = file {
            return Self::from_file(path).map(Some);
        }
        match std::env::var_os(KEY_ENV) {
            Some(v) if !v.is_empty() => {
                Self::parse(v.as_encoded_bytes(), &format!("${KEY_ENV}")).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The public key id stored in manifests (16 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts the bytes to be stored at `key` (relative object key).
    pub fn seal(&self, key: &str, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: key.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts and authenticates the object stored at `key`. A wrong key and
    /// a tampered object are indistinguishable by design: both fail here.
    pub fn open(&self, key: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
        let head = MAGIC.len() + NONCE_LEN;
        if sealed.len() < head + TAG_LEN || &sealed[..MAGIC.len()] != MAGIC {
            return Err(Error::Verification(format!(
                "{key}: not an encrypted mailsafe object"
            )));
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed[MAGIC.len()..head]),
                Payload { msg: &sealed[head..], aad: key.as_bytes() },
            )
            .map_err(|_| {
                Error::Verification(format!(
                    "{key}: decryption failed (wrong encryption key, or the object was tampered with)"
                ))
            })
    }

    fn manifest_mac(&self, m: &Manifest) -> HmacSha256 {
        let mut unsigned = m.clone();
        if let Some(e) = unsigned.encryption.as_mut() {
            e.mac.clear();
        }
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.mac_key).expect("any key length");
        mac.update(&serde_json::to_vec(&unsigned).expect("a manifest always serialises"));
        mac
    }

    /// Marks `m` as encrypted with this key and authenticates it. Call last,
    /// after every other field is final.
    pub fn sign_manifest(&self, m: &mut Manifest) {
        m.encryption = Some(Encryption {
            alg: ALG.into(),
            key_id: self.id.clone(),
            mac: String::new(),
        });
        let tag = self.manifest_mac(m).finalize().into_bytes();
        if let Some(e) = m.encryption.as_mut() {
            e.mac = hex::encode(tag);
        }
    }
}

/// The digest that names chunk content `data` and feeds `db.image_sha256`:
/// plain SHA-256 without a key; with one, HMAC-SHA256 under a sub-key of it.
/// Manifests and object names are readable by anyone with bucket access, so
/// a plain hash of encrypted content would let them confirm a guess about it
/// (e.g. "does this backup hold a page with this exact row?"); the keyed
/// digest reveals only equality between chunks of the same key.
pub fn content_digest(key: Option<&Key>, data: &[u8]) -> [u8; 32] {
    match key {
        None => crate::format::sha256(data),
        Some(k) => {
            let mut mac =
                <HmacSha256 as Mac>::new_from_slice(&k.digest_key).expect("any key length");
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
    }
}

/// Checks that manifest `m` (stored at `key`) matches the configured
/// encryption: a plaintext manifest needs no key and is refused when a key
/// is given (it could be a forgery); an encrypted one needs the right key and
/// a valid MAC. All failures are verification failures (exit 4).
pub fn check_manifest(m: &Manifest, key: &str, enc_key: Option<&Key>) -> Result<(), Error> {
    let fail = |why: String| Err(Error::Verification(format!("{key}: {why}")));
    match (&m.encryption, enc_key) {
        (None, None) => Ok(()),
        (None, Some(_)) => fail(
            "snapshot is not encrypted but an encryption key was given; refusing an unauthenticated manifest (unset the key to restore it)".into(),
        ),
        (Some(e), None) => fail(format!(
            "snapshot is encrypted ({}, key id {}); give the key with --encryption-key-file or ${KEY_ENV}",
            e.alg, e.key_id
        )),
        (Some(e), Some(k)) => {
            if e.alg != ALG {
                return fail(format!("unknown encryption algorithm {:?}", e.alg));
            }
            if e.key_id != k.id {
                return fail(format!(
                    "snapshot is encrypted with key id {}, the given key has id {} (wrong encryption key)",
                    e.key_id, k.id
                ));
            }
            let tag = hex::decode(&e.mac).unwrap_or_default();
            if k.manifest_mac(m).verify_slice(&tag).is_err() {
                return fail("manifest authentication failed (it was modified after it was written)".into());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_raw_hex_and_base64_and_never_echoes_the_key() {
        let raw = [7u8; 32];
        let a = Key::parse(&raw, "x").unwrap();
        let b = Key::parse(format!(" {}\n", hex::encode(raw)).as_bytes(), "x").unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let c = Key::parse(b64.as_bytes(), "x").unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(a.id(), c.id());
        assert_eq!(a.id().len(), 16);
        assert!(!format!("{a:?}").contains(&hex::encode(raw)));
        let err = Key::parse(b"hunter2-is-my-key", "keyfile").unwrap_err();
        assert!(err.to_string().contains("keyfile"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn seal_open_binds_the_object_key_and_rejects_a_wrong_key() {
        let k = Key::from_bytes(&[1u8; 32]);
        let sealed = k.seal("chunks/ab", b"pages");
        assert_eq!(k.open("chunks/ab", &sealed).unwrap(), b"pages");
        assert!(k.open("chunks/cd", &sealed).is_err(), "swapped object");
        let other = Key::from_bytes(&[2u8; 32]);
        assert_eq!(other.open("chunks/ab", &sealed).unwrap_err().exit_code(), 4);
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(k.open("chunks/ab", &flipped).is_err());
    }

    #[test]
    fn content_digest_is_keyed_only_with_a_key() {
        let data = b"a page that an attacker might guess";
        assert_eq!(content_digest(None, data), crate::format::sha256(data));
        let a = Key::from_bytes(&[1u8; 32]);
        let b = Key::from_bytes(&[2u8; 32]);
        let da = content_digest(Some(&a), data);
        assert_ne!(da, crate::format::sha256(data));
        assert_ne!(da, content_digest(Some(&b), data));
        assert_eq!(da, content_digest(Some(&a), data));
    }
}
