//! The few cryptographic building blocks SCRAM-SHA-256 is made of (RFC 5802 section 2.2),
//! plus password preparation and nonce generation, so the message code reads like the RFC.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length in bytes of every SCRAM-SHA-256 key, signature and proof.
pub(crate) const KEY_LEN: usize = 32;

/// Random bytes behind each nonce; 18 bytes encode to 24 base64 characters, as libpq does.
const NONCE_RAW_LEN: usize = 18;

/// A SHA-256 sized key or signature.
pub(crate) type Key = [u8; KEY_LEN];

/// `H(data)`: SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> Key {
    Sha256::digest(data).into()
}

/// `HMAC(key, part1 ++ part2 ++ ...)` with SHA-256.
///
/// Every HMAC key in SCRAM is itself a 32-byte hash, so the key is zero-padded to the
/// 64-byte block size up front; RFC 2104 pads short keys exactly this way, which keeps the
/// result identical while leaving no "invalid key length" case to handle.
pub(crate) fn hmac_sha256(key: &Key, parts: &[&[u8]]) -> Key {
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    let mut mac = <Hmac<Sha256> as Mac>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `Hi(Normalize(password), salt, i)`: PBKDF2-HMAC-SHA-256 over the SASLprep'd password.
pub(crate) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> Key {
    let prepared = saslprep_password(password);
    pbkdf2::pbkdf2_hmac_array::<Sha256, KEY_LEN>(prepared.as_bytes(), salt, iterations)
}

/// `ClientKey` and `ServerKey` derived from a salted password.
pub(crate) fn client_and_server_keys(salted: &Key) -> (Key, Key) {
    (
        hmac_sha256(salted, &[b"Client Key"]),
        hmac_sha256(salted, &[b"Server Key"]),
    )
}

/// Normalizes a password with SASLprep the way PostgreSQL does.
///
/// PostgreSQL leaves pure-ASCII passwords untouched and falls back to the raw password
/// whenever SASLprep rejects it or maps it to nothing, so that any password that can be set
/// can also be used; matching that keeps our verifiers interchangeable with the server's.
pub(crate) fn saslprep_password(password: &str) -> Cow<'_, str> {
    if password.is_ascii() {
        return Cow::Borrowed(password);
    }
    match stringprep::saslprep(password) {
        Ok(prepared) if !prepared.is_empty() => prepared,
        _ => Cow::Borrowed(password),
    }
}

/// Element-wise XOR, used to form and to undo a `ClientProof`.
pub(crate) fn xor(a: &Key, b: &Key) -> Key {
    let mut out = [0u8; KEY_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// `N` bytes from the thread-local CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    rand::thread_rng().fill_bytes(&mut buf);
    buf
}

/// A fresh nonce: random bytes in base64, which only uses characters SCRAM allows in a nonce.
pub(crate) fn random_nonce() -> String {
    b64_encode(random_bytes::<NONCE_RAW_LEN>())
}

/// Standard, padded base64 as SCRAM and PostgreSQL verifiers use it.
pub(crate) fn b64_encode(data: impl AsRef<[u8]>) -> String {
    STANDARD.encode(data)
}

/// Strict standard base64 decoding (padding required, no whitespace, no stray bits).
pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// Decodes base64 that must hold exactly one 32-byte key.
pub(crate) fn b64_decode_key(text: &str) -> Option<Key> {
    b64_decode(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        // RFC 4231 test case 2 uses a 4-byte key; zero-padding it to 32 bytes must not
        // change the MAC, which is exactly the property `hmac_sha256` relies on.
        let mut key = [0u8; KEY_LEN];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn saslprep_maps_and_normalizes_non_ascii() {
        // U+00A0 (no-break space) maps to a plain space; U+00AD (soft hyphen) maps to nothing.
        assert_eq!(saslprep_password("a\u{a0}b\u{ad}c"), "a bc");
        // NFKC: the "fi" ligature becomes two letters, full-width A becomes A.
        assert_eq!(saslprep_password("\u{fb01}\u{ff21}"), "fiA");
    }

    #[test]
    fn saslprep_keeps_ascii_even_when_prohibited() {
        // A control character is prohibited by SASLprep, but PostgreSQL uses ASCII as is.
        assert_eq!(saslprep_password("pass\u{7}word"), "pass\u{7}word");
        assert_eq!(saslprep_password(""), "");
    }

    #[test]
    fn saslprep_falls_back_to_raw_on_failure() {
        // Prohibited non-ASCII (a private-use code point) and a password that maps to
        // nothing both fall back to the raw string, as PostgreSQL does.
        assert_eq!(saslprep_password("x\u{e000}"), "x\u{e000}");
        assert_eq!(saslprep_password("\u{ad}"), "\u{ad}");
        // Mixed right-to-left and left-to-right text fails the bidi rule.
        assert_eq!(saslprep_password("\u{5d0}a"), "\u{5d0}a");
    }

    #[test]
    fn nonces_are_random_base64() {
        let a = random_nonce();
        let b = random_nonce();
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(b64_decode(&a).is_some());
    }

    #[test]
    fn strict_base64() {
        assert_eq!(b64_decode("cGVuY2ls"), Some(b"pencil".to_vec()));
        assert!(b64_decode("cGVuY2l").is_none());
        assert!(b64_decode("cGVu Y2ls").is_none());
        assert!(b64_decode_key("cGVuY2ls").is_none());
    }
}
