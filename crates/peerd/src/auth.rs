//! Peer authentication with a pre-shared secret (SPEC §6): the proofs each
//! side computes and checks during the handshake (the conversation itself
//! is in `wire` and `handshake`).
//!
//! # Proof
//!
//! Each side puts a fresh random [`Nonce`] in its `Hello`. After both
//! Hellos have crossed, each side proves it knows the secret with
//!
//! ```text
//! proof = HMAC-SHA256(secret, label ‖ len(dialler Hello) ‖ dialler Hello
//!                                  ‖ len(listener Hello) ‖ listener Hello)
//! ```
//!
//! where the Hellos are the exact bytes that crossed the wire (so both
//! nonces, both node names, both epochs and resume points are covered),
//! `len` is 8 bytes big-endian, and `label` is [`Role::label`]: different
//! for the dialler's and the listener's proof, so one side's proof can
//! never be reflected back as the other's.
//!
//! # Why this is enough
//!
//! - The secret never crosses the wire; only MACs do.
//! - A recorded handshake replayed to a listener fails: the listener's
//!   nonce is fresh, so the recorded proof covers the wrong transcript.
//! - The listener sends its own proof only after checking the dialler's,
//!   so an unauthenticated dialler never gets a MAC computed for it; a
//!   fake listener cannot produce the proof the dialler expects.
//! - Proofs are compared in constant time (`hmac`'s `verify_slice`).
//!
//! Authentication proves who is at the other end of the handshake; it does
//! not protect the bytes that follow. Across an untrusted network use TLS
//! (`wss://`) as well, which does.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Shortest secret accepted: shorter ones can be guessed offline from a
/// recorded handshake.
pub const MIN_SECRET_LEN: usize = 16;

/// A handshake nonce: random, never reused.
pub type Nonce = [u8; NONCE_LEN];

type HmacSha256 = Hmac<Sha256>;

/// The pre-shared secret, kept as a keyed MAC. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret {
    keyed: HmacSha256,
    len: usize,
}

impl Secret {
    /// A secret from its bytes; at least [`MIN_SECRET_LEN`] of them.
    pub fn new(bytes: &[u8]) -> Result<Secret, String> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret is {} bytes; use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        let keyed = HmacSha256::new_from_slice(bytes).map_err(|e| format!("secret: {e}"))?;
        Ok(Secret {
            keyed,
            len: bytes.len(),
        })
    }

    /// Its length in bytes (what `check-config` may show).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: an empty secret is refused by [`Secret::new`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<masked>, {} bytes)", self.len)
    }
}

/// Which side of the handshake a proof is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialler,
    Listener,
}

impl Role {
    /// The domain-separation label of this side's proof.
    pub fn label(self) -> &'static [u8] {
        match self {
            Role::Dialler => b"peerlink.v1 auth: dialler proof",
            Role::Listener => b"peerlink.v1 auth: listener proof",
        }
    }
}

/// What the proofs cover: both Hellos, exactly as they crossed the wire.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    pub dialler_hello: &'a [u8],
    pub listener_hello: &'a [u8],
}

/// A fresh nonce from the thread-local CSPRNG (seeded by the OS).
pub fn fresh_nonce() -> Nonce {
    rand::random()
}

/// The proof `role` sends.
pub fn proof(secret: &Secret, role: Role, t: &Transcript<'_>) -> Vec<u8> {
    mac(secret, role, t).finalize().into_bytes().to_vec()
}

/// Does `proof` come from someone who knows `secret`? Constant time.
pub fn verify(secret: &Secret, role: Role, t: &Transcript<'_>, proof: &[u8]) -> bool {
    mac(secret, role, t).verify_slice(proof).is_ok()
}

fn mac(secret: &Secret, role: Role, t: &Transcript<'_>) -> HmacSha256 {
    let mut m = secret.keyed.clone();
    m.update(role.label());
    for part in [t.dialler_hello, t.listener_hello] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes()).unwrap()
    }

    const T: Transcript<'static> = Transcript {
        dialler_hello: b"hello from a, nonce 1",
        listener_hello: b"hello from b, nonce 2",
    };

    #[test]
    fn the_right_secret_verifies() {
        let s = secret("0123456789abcdef0123");
        let p = proof(&s, Role::Dialler, &T);
        assert_eq!(p.len(), 32);
        assert!(verify(&s, Role::Dialler, &T, &p));
    }

    #[test]
    fn a_wrong_secret_fails() {
        let p = proof(&secret("0123456789abcdef0123"), Role::Dialler, &T);
        assert!(!verify(
            &secret("0123456789abcdef0124"),
            Role::Dialler,
            &T,
            &p
        ));
    }

    #[test]
    fn proofs_are_bound_to_role_and_transcript() {
        let s = secret("0123456789abcdef0123");
        let p = proof(&s, Role::Dialler, &T);
        // Reflected as the listener's proof.
        assert!(!verify(&s, Role::Listener, &T, &p));
        // Replayed against a fresh listener nonce.
        let fresh = Transcript {
            listener_hello: b"hello from b, nonce 3",
            ..T
        };
        assert!(!verify(&s, Role::Dialler, &fresh, &p));
        // Bytes moved across the boundary between the two Hellos.
        let shifted = Transcript {
            dialler_hello: b"hello from a, nonce 1h",
            listener_hello: b"ello from b, nonce 2",
        };
        assert!(!verify(&s, Role::Dialler, &shifted, &p));
        // Truncated or empty proofs.
        assert!(!verify(&s, Role::Dialler, &T, &p[..31]));
        assert!(!verify(&s, Role::Dialler, &T, &[]));
    }

    #[test]
    fn short_secrets_are_refused_and_never_shown() {
        assert!(Secret::new(b"short").is_err());
        assert!(Secret::new(b"").is_err());
        let s = secret("a very secret value");
        assert!(!format!("{s:?}").contains("secret value"));
        assert_eq!(s.len(), 19);
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(fresh_nonce(), fresh_nonce());
    }
}
