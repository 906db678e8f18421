//! Changing a running daemon (`systemctl reload`, SIGHUP, `peerctl
//! reload`): what it runs with now ([`Current`], swapped whole), and what a
//! new config may change live ([`diff`]).
//!
//! A reload re-reads the config file (and the files it names: secrets, TLS
//! certificates) and then either applies all of it or none of it:
//!
//! - **refused whole**, old config kept: a config with an error (the same
//!   checks as at start), or one that changes what only a restart can
//!   change: `node`, `listen` (the bound socket), `fsync` and
//!   `http_listen`. The state
//!   directory and the control socket come from the command line and the
//!   environment, never from the file, so a reload cannot move them.
//! - **applied live**, each part only where it matters: a peer added gets
//!   a link task, a peer removed loses its own (its session closes with
//!   "going away"); a changed peer URL is dialled next time. Timers and
//!   limits reach the link tasks, the listener and the journal at once
//!   (backoff, handshake timeout, pending handshakes, `max_message` of
//!   control requests, `outbox_limit`, `inbox_retention`) and the live
//!   sessions too (`heartbeat`, `dead_after`); `max_message` is stated in
//!   the Hello, so a session learns a new one when it next starts. Secrets and TLS files are used by every
//!   handshake after the reload; live sessions keep running, except one
//!   authenticated with a secret this node no longer holds: its link makes
//!   a new session with a secret both hold (see `link`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use peerlink::control::ReloadReport;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::{self, KeyId, Secret};
use crate::config::Config;
use crate::handshake::Established;
use crate::status::PeerBoard;
use crate::tls::Tls;

/// What every part of the daemon runs with now. Replaced whole by a
/// reload, never changed in place, so a handshake or a request sees one
/// consistent config from start to end.
pub struct Current {
    pub cfg: Arc<Config>,
    /// What the listener serves and what `wss://` dials trust.
    pub tls: Arc<Tls>,
    /// The link task of each peer, by node name (where the listener hands
    /// the sessions it accepted).
    pub links: HashMap<String, mpsc::Sender<Established>>,
    /// The status record of each peer link, in config order.
    pub boards: Vec<PeerBoard>,
    /// When this node first held each of its secrets (ms since the epoch).
    pub key_ages: HashMap<KeyId, u64>,
}

/// Where each part reads [`Current`] from.
pub type Settings = watch::Receiver<Arc<Current>>;

/// A request to reload, from SIGHUP (no reply wanted) or `peerctl reload`.
pub struct Ask {
    pub reply: Option<oneshot::Sender<ReloadReport>>,
}

/// What changes from `old` to `new`, one line each; or why `new` cannot
/// be applied live.
pub fn diff(old: &Config, new: &Config) -> Result<Vec<String>, String> {
    let mut refused = Vec::new();
    let mut fixed = |name: &str, a: String, b: String| {
        if a != b {
            refused.push(format!("{name} {a} -> {b}"));
        }
    };
    fixed("node", old.node.clone(), new.node.clone());
    fixed("listen", old.listen.to_string(), new.listen.to_string());
    fixed(
        "http_listen",
        format!("{:?}", old.http_listen),
        format!("{:?}", new.http_listen),
    );
    fixed(
        "fsync",
        format!("{:?}", old.fsync),
        format!("{:?}", new.fsync),
    );
    if !refused.is_empty() {
        return Err(format!(
            "cannot change live: {} (restart to apply: systemctl restart peerd@{})",
            refused.join(", "),
            old.instance
        ));
    }
    let mut changes = Vec::new();
    for p in &new.peers {
        match old.peers.iter().find(|o| o.name == p.name) {
            None => changes.push(format!("peer {} added ({})", p.name, p.url)),
            Some(o) if o.url != p.url => {
                changes.push(format!("peer {} url {} -> {}", p.name, o.url, p.url))
            }
            Some(_) => {}
        }
    }
    for o in &old.peers {
        if !new.peers.iter().any(|p| p.name == o.name) {
            changes.push(format!("peer {} removed", o.name));
        }
    }
    let d = |v: std::time::Duration| humantime::format_duration(v).to_string();
    let mut live = |name: &str, a: String, b: String| {
        if a != b {
            changes.push(format!("{name} {a} -> {b}"));
        }
    };
    live("path", old.path.clone(), new.path.clone());
    live(
        "outbox_limit",
        format!("{}B/{}", old.outbox_limit_bytes, old.outbox_limit_messages),
        format!("{}B/{}", new.outbox_limit_bytes, new.outbox_limit_messages),
    );
    live(
        "inbox_retention",
        format!(
            "{:?}/{}B",
            old.inbox_retention_age, old.inbox_retention_bytes
        ),
        format!(
            "{:?}/{}B",
            new.inbox_retention_age, new.inbox_retention_bytes
        ),
    );
    live("heartbeat", d(old.heartbeat), d(new.heartbeat));
    live("dead_after", d(old.dead_after), d(new.dead_after));
    live(
        "handshake_timeout",
        d(old.handshake_timeout),
        d(new.handshake_timeout),
    );
    live("backoff_min", d(old.backoff_min), d(new.backoff_min));
    live("backoff_max", d(old.backoff_max), d(new.backoff_max));
    live(
        "max_message",
        crate::units::Size(old.max_message).to_string(),
        crate::units::Size(new.max_message).to_string(),
    );
    live(
        "max_pending_handshakes",
        old.max_pending_handshakes.to_string(),
        new.max_pending_handshakes.to_string(),
    );
    live(
        "plain_clients",
        old.plain_clients.to_string(),
        new.plain_clients.to_string(),
    );
    live(
        "insecure",
        old.insecure.to_string(),
        new.insecure.to_string(),
    );
    live(
        "allowed_origins",
        format!("{:?}", old.allowed_origins),
        format!("{:?}", new.allowed_origins),
    );
    live(
        "allowed_hosts",
        format!("{:?}", old.allowed_hosts),
        format!("{:?}", new.allowed_hosts),
    );
    live(
        "secrets (ids, preferred first)",
        auth::show_ids(&ids(old)),
        auth::show_ids(&ids(new)),
    );
    live(
        "[tls] files",
        format!("{:?}", old.tls),
        format!("{:?}", new.tls),
    );
    Ok(changes)
}

/// The ids of a config's secrets, preferred first.
pub fn ids(cfg: &Config) -> Vec<KeyId> {
    cfg.secrets.iter().map(Secret::id).collect()
}

/// A digest of the TLS files' contents, so a reload can tell a renewed
/// certificate on the same path (unreadable files digest as empty: loading
/// them has failed already).
pub fn tls_digest(cfg: &Config) -> Vec<u8> {
    let mut h = Sha256::new();
    for p in [&cfg.tls.cert, &cfg.tls.key, &cfg.tls.ca]
        .into_iter()
        .flatten()
    {
        h.update(p.as_os_str().as_encoded_bytes());
        h.update(std::fs::read(p).unwrap_or_default());
    }
    h.finalize().to_vec()
}

/// When this node first held each secret, kept in `<state dir>/secret-ids`
/// (one `id ms` line per secret; never the secret) so a secret's age in
/// `status` survives restarts.
pub struct KeyAges {
    file: PathBuf,
}

impl KeyAges {
    pub fn new(state_dir: &Path) -> KeyAges {
        KeyAges {
            file: state_dir.join("secret-ids"),
        }
    }

    /// The ages of `held`: as recorded, or now for a new one; the file is
    /// rewritten to hold exactly these. A file that cannot be read or
    /// written costs only accuracy (logged at debug).
    pub fn update(&self, held: &[KeyId]) -> HashMap<KeyId, u64> {
        let now = peerlink::now_ms();
        let known: HashMap<String, u64> = std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (id, ms) = l.split_once(' ')?;
                Some((id.to_string(), ms.trim().parse().ok()?))
            })
            .collect();
        let ages: HashMap<KeyId, u64> = held
            .iter()
            .map(|id| (*id, known.get(&id.to_string()).copied().unwrap_or(now)))
            .collect();
        let text: String = held
            .iter()
            .map(|id| format!("{id} {}\n", ages.get(id).copied().unwrap_or(now)))
            .collect();
        let tmp = self.file.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.file))
        {
            tracing::debug!("cannot write {}: {e}", self.file.display());
        }
        ages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse("a", text, "a.toml").unwrap()
    }

    #[test]
    fn live_changes_are_listed() {
        let old = cfg("heartbeat = \"1s\"\n[[peer]]\nname = \"b\"\nurl = \"ws://127.0.0.1:1/ws\"");
        let new = cfg("heartbeat = \"2s\"\n[[peer]]\nname = \"c\"\nurl = \"ws://127.0.0.1:2/ws\"");
        let c = diff(&old, &new).unwrap();
        assert_eq!(
            c,
            [
                "peer c added (ws://127.0.0.1:2/ws)",
                "peer b removed",
                "heartbeat 1s -> 2s"
            ]
        );
        assert!(diff(&old, &old).unwrap().is_empty());
        let s = cfg("secrets = [\"new secret 0123456789\", \"old secret 0123456789\"]");
        let c = diff(&cfg("secret = \"old secret 0123456789\""), &s).unwrap();
        assert_eq!(c.len(), 1);
        assert!(c[0].starts_with("secrets"), "{c:?}");
        assert!(!c[0].contains("0123456789"), "{c:?}");
    }

    #[test]
    fn what_needs_a_restart_is_refused_whole() {
        let old = cfg("");
        for (text, needle) in [
            (
                "listen = \"127.0.0.1:9\"",
                "listen 127.0.0.1:8080 -> 127.0.0.1:9",
            ),
            ("node = \"z\"", "node a -> z"),
            ("fsync = \"never\"", "fsync"),
        ] {
            let e = diff(&old, &cfg(&format!("heartbeat = \"1s\"\n{text}"))).unwrap_err();
            assert!(e.contains(needle) && e.contains("restart"), "{text}: {e}");
        }
        // The journal's limits change live.
        for (text, needle) in [
            ("outbox_limit = { messages = 5 }", "outbox_limit"),
            ("inbox_retention = { bytes = \"1MiB\" }", "inbox_retention"),
        ] {
            let changes = diff(&old, &cfg(&format!("heartbeat = \"1s\"\n{text}"))).unwrap();
            assert!(
                changes.iter().any(|c| c.starts_with(needle)),
                "{text}: {changes:?}"
            );
        }
    }

    #[test]
    fn key_ages_survive_and_forget_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ages = KeyAges::new(dir.path());
        let (a, b) = (KeyId([1; 4]), KeyId([2; 4]));
        std::fs::write(dir.path().join("secret-ids"), "01010101 5\ngarbage\n").unwrap();
        let got = ages.update(&[a, b]);
        assert_eq!(got[&a], 5);
        assert!(got[&b] > 5);
        let got = ages.update(&[b]);
        assert_eq!(got.len(), 1);
        let text = std::fs::read_to_string(dir.path().join("secret-ids")).unwrap();
        assert!(!text.contains("01010101"), "{text}");
    }
}
