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
//!
//! # Several secrets at once (the keyring)
//!
//! A node may hold several secrets, in order of preference (the first is
//! the newest), so a secret can be rotated one host at a time with the link
//! up throughout. Each secret has a [`KeyId`]: the first 4 bytes of
//! `SHA-256("peerlink secret id v1" ‖ secret)`, shown as 8 hex digits. Both
//! Hellos list the ids their sender holds, in its order; the secret used is
//! [`agree`]'s pick: **the first id in the dialler's list that the listener
//! also holds**, which both sides compute alike from the two Hellos. No
//! shared id: refused before any proof, with both lists in the reason.
//!
//! An id is a 32-bit hash of the secret, sent before authentication. With
//! a random secret (`openssl rand -hex 32`, as the README says) it tells
//! nothing usable; a guessable secret could already be tried offline
//! against a recorded handshake's proofs.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Shortest secret accepted: shorter ones can be guessed offline from a
/// recorded handshake.
pub const MIN_SECRET_LEN: usize = 16;

/// A handshake nonce: random, never reused.
pub type Nonce = [u8; NONCE_LEN];

type HmacSha256 = Hmac<Sha256>;

/// The short public name of a secret (module doc): never the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Domain separation of [`KeyId`]s: an id is no MAC of anything else.
const KEY_ID_LABEL: &[u8] = b"peerlink secret id v1";

/// The pre-shared secret, kept as a keyed MAC. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret {
    keyed: HmacSha256,
    len: usize,
    id: KeyId,
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
        let digest = Sha256::new()
            .chain_update(KEY_ID_LABEL)
            .chain_update(bytes)
            .finalize();
        let id = KeyId([digest[0], digest[1], digest[2], digest[3]]);
        Ok(Secret {
            keyed,
            len: bytes.len(),
            id,
        })
    }

    /// Its public short name.
    pub fn id(&self) -> KeyId {
        self.id
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
        write!(f, "Secret(<masked>, {} bytes, id {})", self.len, self.id)
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

/// The secret both sides use: the first of the dialler's ids (its order of
/// preference) that the listener holds too. Pure, so both sides agree.
pub fn agree(dialler: &[KeyId], listener: &[KeyId]) -> Option<KeyId> {
    dialler.iter().copied().find(|id| listener.contains(id))
}

/// Ids as `status` and the log show them: `1a2b3c4d, 5e6f7a8b`.
pub fn show_ids(ids: &[KeyId]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
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
    fn ids_are_short_stable_and_never_the_secret() {
        let s = secret("0123456789abcdef0123");
        assert_eq!(s.id(), secret("0123456789abcdef0123").id());
        assert_ne!(s.id(), secret("0123456789abcdef0124").id());
        let shown = s.id().to_string();
        assert_eq!(shown.len(), 8);
        assert!(shown.bytes().all(|b| b.is_ascii_hexdigit()));
        // Not a prefix of the plain SHA-256 of the secret (labelled).
        let plain = Sha256::digest(b"0123456789abcdef0123");
        assert_ne!(&plain[..4], &s.id().0);
        assert!(format!("{s:?}").contains(&shown));
    }

    #[test]
    fn agreement_is_the_dialler_first_shared() {
        let (old, new, other) = (KeyId([1; 4]), KeyId([2; 4]), KeyId([3; 4]));
        assert_eq!(agree(&[new, old], &[old, new]), Some(new));
        assert_eq!(agree(&[old, new], &[new]), Some(new));
        assert_eq!(agree(&[old], &[new, old]), Some(old));
        assert_eq!(agree(&[old], &[new, other]), None);
        assert_eq!(agree(&[], &[new]), None);
        assert_eq!(show_ids(&[old, new]), "01010101, 02020202");
        assert_eq!(show_ids(&[]), "none");
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(fresh_nonce(), fresh_nonce());
    }
}
