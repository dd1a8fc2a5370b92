//! Stored credentials: what `userlist.txt` (or a connection string) holds for a user, and the
//! SCRAM verifier format PostgreSQL keeps in `pg_authid.rolpassword`.

use std::fmt;
use std::sync::OnceLock;

use subtle::ConstantTimeEq;

use super::crypto;

/// Iteration count for verifiers we create, PostgreSQL's default (`scram_iterations`).
const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length for verifiers we create, PostgreSQL's default.
const DEFAULT_SALT_LEN: usize = 16;

/// The mechanism prefix of a PostgreSQL SCRAM verifier.
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// A stored credential from `userlist.txt` (or a connection string password).
///
/// PostgreSQL and PgBouncer tell the three kinds apart by their shape alone, so a stored
/// value is classified rather than tagged: an MD5 hash is `md5` plus 32 lowercase hex digits,
/// a SCRAM verifier is a well-formed `SCRAM-SHA-256$...` string, anything else is plaintext.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plaintext password.
    Plain(String),
    /// An MD5 hash: `"md5"` followed by 32 lowercase hex digits of `md5(password ++ user)`.
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramSecret),
}

impl Secret {
    /// Classifies a stored credential the way PostgreSQL does; never fails, because anything
    /// that is neither an MD5 hash nor a valid SCRAM verifier is a plaintext password.
    pub fn parse(stored: &str) -> Secret {
        if is_md5_hash(stored) {
            Secret::Md5(stored.to_owned())
        } else if let Some(scram) = ScramSecret::parse(stored) {
            Secret::Scram(scram)
        } else {
            Secret::Plain(stored.to_owned())
        }
    }

    /// Whether this secret is the empty password, which never logs in with a password:
    /// PostgreSQL refuses empty passwords, so a `"user" ""` line only serves `trust`.
    ///
    /// A SCRAM verifier is never checked: PostgreSQL does not derive one from an empty
    /// password (`PASSWORD ''` clears the password), and checking would cost a key derivation.
    pub fn is_empty_password(&self, user: &str) -> bool {
        match self {
            Secret::Plain(password) => password.is_empty(),
            Secret::Md5(hash) => *hash == super::md5::password_hash(user, ""),
            Secret::Scram(_) => false,
        }
    }
}

// Credentials must not end up in logs through `{:?}`, so only the kind is shown.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Secret::Plain(..)"),
            Secret::Md5(_) => f.write_str("Secret::Md5(..)"),
            Secret::Scram(scram) => write!(f, "Secret::Scram({scram:?})"),
        }
    }
}

/// Whether `stored` has the exact shape PostgreSQL accepts as an MD5 password hash.
fn is_md5_hash(stored: &str) -> bool {
    stored.len() == 35
        && stored.starts_with("md5")
        && stored[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A SCRAM-SHA-256 verifier: what a server needs to check a client's proof without knowing
/// the password.
///
/// Its text form is PostgreSQL's:
/// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count used to derive the salted password.
    pub iterations: u32,
    /// The salt sent to clients in the server-first message.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`: checks a client's proof.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server-final message.
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses PostgreSQL's verifier text; `None` unless every part is present and valid
    /// (iterations at least 1, non-empty salt, both keys exactly 32 bytes).
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(SCRAM_PREFIX)?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        // `u32::from_str` would also take a leading '+', which no verifier contains.
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let iterations: u32 = iterations.parse().ok().filter(|&i| i >= 1)?;
        let salt = crypto::b64_decode(salt).filter(|salt| !salt.is_empty())?;
        Some(ScramSecret {
            iterations,
            salt,
            stored_key: crypto::b64_decode_key(stored_key)?,
            server_key: crypto::b64_decode_key(server_key)?,
        })
    }

    /// Whether `client_key` is the ClientKey behind this verifier (its hash is StoredKey).
    pub fn fits_client_key(&self, client_key: &[u8; 32]) -> bool {
        crypto::sha256(client_key).ct_eq(&self.stored_key).into()
    }

    /// Derives the verifier for `password` with the given salt and iteration count; the
    /// password is SASLprep'd first, exactly as PostgreSQL does when it stores one.
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = crypto::salted_password(password, salt, iterations);
        let (client_key, server_key) = crypto::client_and_server_keys(&salted);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: crypto::sha256(&client_key),
            server_key,
        }
    }

    /// Derives a verifier for `password` with a fresh random 16-byte salt and 4096
    /// iterations, PostgreSQL's defaults.
    pub fn generate(password: &str) -> Self {
        Self::generate_with(password, DEFAULT_ITERATIONS)
    }

    /// Like [`ScramSecret::generate`] with `iterations` rounds (`scram_iterations`).
    pub fn generate_with(password: &str, iterations: u32) -> Self {
        let salt = crypto::random_bytes::<DEFAULT_SALT_LEN>();
        Self::from_password(password, &salt, iterations)
    }

    /// A verifier for a user who has none (unknown, or with an empty password), so that the
    /// exchange looks like a real user's: the same salt and iteration count every time, no
    /// key derivation (a real user's verifier is stored or cached), and no password matches.
    ///
    /// Salt and keys are HMACs of the user name under a key drawn once per process.
    pub fn decoy(user: &str) -> Self {
        static KEY: OnceLock<crypto::Key> = OnceLock::new();
        Self::decoy_with(KEY.get_or_init(crypto::random_bytes), user)
    }

    fn decoy_with(key: &crypto::Key, user: &str) -> Self {
        // A label per value keeps the salt from revealing anything about the keys.
        let derive = |label: &[u8]| crypto::hmac_sha256(key, &[label, user.as_bytes()]);
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: derive(b"salt\0")[..DEFAULT_SALT_LEN].to_vec(),
            stored_key: derive(b"stored key\0"),
            server_key: derive(b"server key\0"),
        }
    }

    /// Constant-time check that `password` derives to this verifier.
    fn matches_password(&self, password: &str) -> bool {
        let candidate = Self::from_password(password, &self.salt, self.iterations);
        let stored = candidate.stored_key.ct_eq(&self.stored_key);
        let server = candidate.server_key.ct_eq(&self.server_key);
        (stored & server).into()
    }
}

impl fmt::Display for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            crypto::b64_encode(&self.salt),
            crypto::b64_encode(self.stored_key),
            crypto::b64_encode(self.server_key),
        )
    }
}

// The keys let anyone log in to the server (see `ScramCredential::Keys`), so keep them out
// of debug output.
impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Checks a cleartext password (from `auth_type = plain`) against any kind of stored secret,
/// in constant time with respect to the secret's contents.
pub fn verify_plain(secret: &Secret, user: &str, password: &str) -> bool {
    match secret {
        Secret::Plain(stored) => password.as_bytes().ct_eq(stored.as_bytes()).into(),
        Secret::Md5(stored) => super::md5::password_hash(user, password)
            .as_bytes()
            .ct_eq(stored.as_bytes())
            .into(),
        Secret::Scram(scram) => scram.matches_password(password),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verifier PostgreSQL would store for password "pencil" with RFC 7677's salt.
    const PENCIL: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
        WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

    #[test]
    fn from_password_matches_known_verifier() {
        let salt = crypto::b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = ScramSecret::from_password("pencil", &salt, 4096);
        assert_eq!(secret.to_string(), PENCIL);
    }

    #[test]
    fn parse_round_trips() {
        let secret = ScramSecret::parse(PENCIL).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.salt.len(), 16);
        assert_eq!(secret.to_string(), PENCIL);
        let generated = ScramSecret::generate("pencil");
        assert_eq!(ScramSecret::parse(&generated.to_string()), Some(generated));
    }

    #[test]
    fn generate_uses_defaults_and_fresh_salt() {
        let a = ScramSecret::generate("pw");
        let b = ScramSecret::generate("pw");
        assert_eq!(ScramSecret::generate_with("pw", 10).iterations, 10);
        assert_eq!(a.iterations, 4096);
        assert_eq!(a.salt.len(), 16);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key);
    }

    #[test]
    fn parse_rejects_malformed_verifiers() {
        let key = crypto::b64_encode([7u8; 32]);
        let short = crypto::b64_encode([7u8; 31]);
        let bad = [
            String::new(),
            "SCRAM-SHA-256$".to_owned(),
            format!("SCRAM-SHA-1$4096:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$+5:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$-1:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$99999999999:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$:c2FsdA==${key}:{key}"),
            format!("SCRAM-SHA-256$4096:${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA=${key}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${short}:{key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{short}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}"),
            format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}$"),
            format!("SCRAM-SHA-256$4096c2FsdA==${key}:{key}"),
        ];
        for text in bad {
            assert_eq!(ScramSecret::parse(&text), None, "{text}");
        }
    }

    #[test]
    fn secret_parse_classifies() {
        assert!(matches!(Secret::parse(PENCIL), Secret::Scram(_)));
        let md5 = "md54a0a68b43b6cd5cf266fa02f196e2371";
        assert_eq!(Secret::parse(md5), Secret::Md5(md5.to_owned()));
        // Uppercase hex, wrong length or a broken verifier are plaintext, as in PostgreSQL.
        for plain in [
            "md54A0A68B43B6CD5CF266FA02F196E2371",
            "md54a0a68b43b6cd5cf266fa02f196e237",
            "SCRAM-SHA-256$4096:broken",
            "hunter2",
            "",
        ] {
            assert_eq!(Secret::parse(plain), Secret::Plain(plain.to_owned()));
        }
    }

    #[test]
    fn verify_plain_against_every_kind() {
        let plain = Secret::Plain("secret".into());
        assert!(verify_plain(&plain, "alice", "secret"));
        assert!(!verify_plain(&plain, "alice", "secret "));
        assert!(!verify_plain(&plain, "alice", ""));

        let md5 = Secret::parse("md54a0a68b43b6cd5cf266fa02f196e2371");
        assert!(verify_plain(&md5, "alice", "secret"));
        assert!(!verify_plain(&md5, "bob", "secret"));
        assert!(!verify_plain(&md5, "alice", "Secret"));

        let scram = Secret::parse(PENCIL);
        assert!(verify_plain(&scram, "anyone", "pencil"));
        assert!(!verify_plain(&scram, "anyone", "pen"));
    }

    #[test]
    fn verify_plain_applies_saslprep_for_scram() {
        // A verifier made from the NFKC form accepts the compatibility form and vice versa.
        let scram = Secret::Scram(ScramSecret::from_password("fi", b"salt", 16));
        assert!(verify_plain(&scram, "u", "\u{fb01}"));
    }

    #[test]
    fn empty_passwords_are_recognised() {
        assert!(Secret::parse("").is_empty_password("alice"));
        assert!(!Secret::parse("x").is_empty_password("alice"));
        let empty_md5 = Secret::parse(&crate::auth::md5::password_hash("alice", ""));
        assert!(empty_md5.is_empty_password("alice"));
        assert!(!empty_md5.is_empty_password("bob"));
        assert!(!Secret::parse("md54a0a68b43b6cd5cf266fa02f196e2371").is_empty_password("alice"));
        assert!(!Secret::parse(PENCIL).is_empty_password("alice"));
    }

    #[test]
    fn decoys_are_stable_per_user_and_look_like_defaults() {
        let a = ScramSecret::decoy("mallory");
        assert_eq!(a, ScramSecret::decoy("mallory"));
        assert_eq!(a.iterations, DEFAULT_ITERATIONS);
        assert_eq!(a.salt.len(), DEFAULT_SALT_LEN);
        assert_ne!(a.salt, ScramSecret::decoy("trudy").salt);
        // Another process (another key) gives the same user another salt.
        let other = ScramSecret::decoy_with(&[9; 32], "mallory");
        assert_ne!(a.salt, other.salt);
        assert_eq!(other, ScramSecret::decoy_with(&[9; 32], "mallory"));
        // Neither the empty password nor the user name derives to it.
        assert!(!a.matches_password(""));
        assert!(!a.matches_password("mallory"));
    }

    #[test]
    fn debug_output_hides_credentials() {
        let shown = format!(
            "{:?} {:?} {:?}",
            Secret::Plain("hunter2".into()),
            Secret::parse("md54a0a68b43b6cd5cf266fa02f196e2371"),
            Secret::parse(PENCIL)
        );
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("4a0a68"));
        assert!(!shown.contains("W22Z"));
        assert!(shown.contains("4096"));
    }
}
