//! Authentication, for both wires: trust (loopback clients only unless
//! `auth.trust_remote`) or passwords checked against the configured users. Every user is
//! kept as a SCRAM-SHA-256 verifier (derived at start from a configured password); an
//! unknown user gets a made-up verifier with a salt stable per name, so that a wrong
//! password and an unknown user fail the same way, at the same step, with the same
//! 28P01 message. The PostgreSQL wire runs the SCRAM exchange with [`Users::scram_keys`];
//! Flight SQL, which receives the password itself, uses [`Users::verify_password`].

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
// pgwire's SCRAM key derivation (SASLprep, then PBKDF2) is a plain function: using it
// keeps the keys identical to the ones its SCRAM exchange checks.
use pgwire::api::auth::sasl::scram::gen_salted_password;
use ring::rand::SecureRandom;
use ring::{digest, hmac};

use crate::config::UserConfig;

/// SCRAM iterations for verifiers derived from configured passwords (PostgreSQL's
/// default).
pub(crate) const SCRAM_ITERATIONS: u32 = 4096;

/// One user's SCRAM-SHA-256 verifier, as PostgreSQL keeps it in `pg_authid`.
#[derive(Clone)]
pub(crate) struct ScramKeys {
    /// The salt the password was salted with.
    pub(crate) salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub(crate) iterations: usize,
    /// `H(HMAC(salted password, "Client Key"))`.
    pub(crate) stored_key: Vec<u8>,
    /// `HMAC(salted password, "Server Key")`.
    pub(crate) server_key: Vec<u8>,
}

/// The configured users as SCRAM verifiers.
pub(crate) struct Users {
    verifiers: HashMap<String, ScramKeys>,
    /// Seeds the made-up salts of unknown users.
    mock_secret: [u8; 32],
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("names", &self.verifiers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_string())?;
    Ok(bytes)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

impl Users {
    /// Derives or parses a verifier for every user.
    pub(crate) fn new(users: &[UserConfig]) -> Result<Users, String> {
        let mut verifiers = HashMap::new();
        for user in users {
            let verifier = match (&user.password, &user.scram_verifier) {
                (Some(password), _) => {
                    let salt = random_bytes::<16>()?.to_vec();
                    derive(password, &salt, SCRAM_ITERATIONS)
                }
                (None, Some(text)) => parse_verifier(text)
                    .ok_or_else(|| format!("user '{}': scram_verifier is not of the form SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", user.name))?,
                (None, None) => return Err(format!("user '{}' has no password", user.name)),
            };
            verifiers.insert(user.name.clone(), verifier);
        }
        Ok(Users {
            verifiers,
            mock_secret: random_bytes::<32>()?,
        })
    }

    /// True when `password` is `user`'s: for protocols that send the password itself
    /// (Flight SQL's Basic authentication, over TLS). The check derives the SCRAM keys
    /// from the password and compares them in constant time; an unknown user costs the
    /// same derivation and fails.
    pub(crate) fn verify_password(&self, user: &str, password: &str) -> bool {
        let (verifier, known) = match self.verifiers.get(user) {
            Some(v) => (v.clone(), true),
            None => (
                ScramKeys {
                    salt: hmac_sha256(&self.mock_secret, user.as_bytes())[..16].to_vec(),
                    iterations: SCRAM_ITERATIONS as usize,
                    stored_key: hmac_sha256(&self.mock_secret, b"stored"),
                    server_key: Vec::new(),
                },
                false,
            ),
        };
        let iterations = u32::try_from(verifier.iterations).unwrap_or(SCRAM_ITERATIONS);
        let derived = derive(password, &verifier.salt, iterations);
        constant_time_eq(&derived.stored_key, &verifier.stored_key) && known
    }

    /// The verifier a SCRAM exchange checks `user` against; an unknown user gets one no
    /// proof can match, so the exchange fails at the same step as a wrong password.
    pub(crate) fn scram_keys(&self, user: &str) -> ScramKeys {
        match self.verifiers.get(user) {
            Some(v) => v.clone(),
            None => {
                // A salt stable per name, keys nobody can match.
                let salt = hmac_sha256(&self.mock_secret, user.as_bytes())[..16].to_vec();
                let stored_key = random_bytes::<32>()
                    .map(|b| b.to_vec())
                    .unwrap_or_else(|_| hmac_sha256(&self.mock_secret, b"stored").to_vec());
                ScramKeys {
                    salt,
                    iterations: SCRAM_ITERATIONS as usize,
                    stored_key,
                    server_key: hmac_sha256(&self.mock_secret, b"server"),
                }
            }
        }
    }
}

/// True for an address on the loopback interface (IPv4, IPv6 or IPv4-mapped): the
/// callers `trust` authentication admits unless `auth.trust_remote` is set.
pub(crate) fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Compares two keys without an early exit that would tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The SCRAM keys of `password`, normalized with SASLprep first as libpq and
/// PostgreSQL normalize it (a decomposed accent or a no-break space would otherwise
/// derive other keys than the client's); a password SASLprep refuses is used as is,
/// as PostgreSQL does.
fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
    let salted = gen_salted_password(password, salt, iterations.max(1) as usize);
    let client_key = hmac_sha256(&salted, b"Client Key");
    ScramKeys {
        salt: salt.to_vec(),
        iterations: iterations as usize,
        stored_key: digest::digest(&digest::SHA256, &client_key)
            .as_ref()
            .to_vec(),
        server_key: hmac_sha256(&salted, b"Server Key"),
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, as PostgreSQL stores.
fn parse_verifier(text: &str) -> Option<ScramKeys> {
    let rest = text.strip_prefix("SCRAM-SHA-256$")?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    Some(ScramKeys {
        salt: STANDARD.decode(salt).ok()?,
        iterations: iterations.parse().ok()?,
        stored_key: STANDARD.decode(stored).ok()?,
        server_key: STANDARD.decode(server).ok()?,
    })
}

/// A PostgreSQL-style verifier for `password` (for docs and tests: what to put in
/// `scram_verifier`).
pub fn scram_verifier(password: &str) -> Result<String, String> {
    let salt = random_bytes::<16>()?;
    let v = derive(password, &salt, SCRAM_ITERATIONS);
    Ok(format!(
        "SCRAM-SHA-256${}:{}${}:{}",
        v.iterations,
        STANDARD.encode(&v.salt),
        STANDARD.encode(&v.stored_key),
        STANDARD.encode(&v.server_key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_parse_back() {
        let text = scram_verifier("pw").unwrap();
        let v = parse_verifier(&text).unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt.len(), 16);
        // The same password and salt derive the same keys.
        let again = derive("pw", &v.salt, 4096);
        assert_eq!(again.stored_key, v.stored_key);
        assert_eq!(again.server_key, v.server_key);
        assert!(parse_verifier("md5abc").is_none());
    }

    /// RFC 4013: SASLprep maps a no-break space to a space and composes decomposed
    /// characters (NFKC), so both spellings derive the same keys, as libpq's do.
    #[test]
    fn passwords_are_saslprepped() {
        let salt = [7u8; 16];
        let composed = derive("caf\u{e9} au\u{a0}lait", &salt, 4096);
        let decomposed = derive("cafe\u{301} au lait", &salt, 4096);
        assert_eq!(composed.stored_key, decomposed.stored_key);
        assert_eq!(composed.server_key, decomposed.server_key);
        // Against a plain PBKDF2 of the normalized bytes, computed another way.
        let mut salted = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(4096).unwrap(),
            &salt,
            "caf\u{e9} au lait".as_bytes(),
            &mut salted,
        );
        assert_eq!(composed.server_key, hmac_sha256(&salted, b"Server Key"));
        let users = Users::new(&[UserConfig {
            name: "zoe".into(),
            password: Some("cafe\u{301}\u{a0}1".into()),
            scram_verifier: None,
        }])
        .unwrap();
        assert!(users.verify_password("zoe", "caf\u{e9} 1"));
    }

    #[test]
    fn only_loopback_addresses_are_loopback() {
        for (addr, expected) in [
            ("127.0.0.1:5432", true),
            ("127.8.9.10:1", true),
            ("[::1]:5432", true),
            ("[::ffff:127.0.0.1]:5432", true),
            ("10.0.0.1:5432", false),
            ("[::ffff:10.0.0.1]:5432", false),
            ("[2001:db8::1]:5432", false),
        ] {
            let parsed: SocketAddr = addr.parse().unwrap();
            assert_eq!(is_loopback(&parsed), expected, "{addr}");
        }
    }

    #[test]
    fn passwords_verify_against_both_kinds_of_user() {
        let users = Users::new(&[
            UserConfig {
                name: "alice".into(),
                password: Some("secret".into()),
                scram_verifier: None,
            },
            UserConfig {
                name: "bob".into(),
                password: None,
                scram_verifier: Some(scram_verifier("hunter2").unwrap()),
            },
        ])
        .unwrap();
        assert!(users.verify_password("alice", "secret"));
        assert!(!users.verify_password("alice", "Secret"));
        assert!(users.verify_password("bob", "hunter2"));
        assert!(!users.verify_password("bob", "secret"));
        assert!(!users.verify_password("carol", "secret"));
    }
}
