//! The daemon's status: per-peer link records ([`PeerBoard`], shared
//! between the link task, which owns the state changes, and the readers),
//! daemon-wide counters ([`Tally`]), and the one function that puts them
//! together with the journal's counters into a [`Status`] snapshot
//! ([`Observed::snapshot`]) for `peerctl status`, systemd's `STATUS=`,
//! `/metrics` and the browser console. Plain mutexes: writes are a few
//! fields, reads rare.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use peerlink::control::{PeerStatus, ReloadReport, Status};

use crate::journal::Journal;
use crate::reload::Settings;

/// The status record of one peer link.
#[derive(Clone)]
pub struct PeerBoard(Arc<Mutex<PeerStatus>>);

impl PeerBoard {
    pub fn new(name: &str, url: &str) -> Self {
        PeerBoard(Arc::new(Mutex::new(PeerStatus::new(name, url))))
    }

    /// Change the record (a poisoned lock is taken over: see journal.rs).
    pub fn update<R>(&self, f: impl FnOnce(&mut PeerStatus) -> R) -> R {
        f(&mut self.lock())
    }

    pub fn snapshot(&self) -> PeerStatus {
        self.lock().clone()
    }

    /// Record an error with the time it happened.
    pub fn error(&self, message: &str) {
        self.update(|s| {
            s.last_error = Some(message.to_string());
            s.last_error_ms = Some(peerlink::now_ms());
        });
    }

    fn lock(&self) -> MutexGuard<'_, PeerStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a send was refused, as `refused_sends` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    UnknownPeer,
    Empty,
    TooLarge,
    PeerMaxMessage,
    OutboxFull,
    ShuttingDown,
    Storage,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::UnknownPeer => "unknown_peer",
            Refused::Empty => "empty",
            Refused::TooLarge => "too_large",
            Refused::PeerMaxMessage => "peer_max_message",
            Refused::OutboxFull => "outbox_full",
            Refused::ShuttingDown => "shutting_down",
            Refused::Storage => "storage",
        }
    }
}

/// Daemon-wide events counted since start that no link or journal owns:
/// refused sends and failed peer authentications.
#[derive(Debug, Default)]
pub struct Tally {
    auth_failures: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    /// A peer handshake failed authentication (either direction).
    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A send (of any number of messages) was refused.
    pub fn refused(&self, why: Refused) {
        let mut r = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *r.entry(why.as_str()).or_default() += 1;
    }
}

/// Everything a status snapshot is read from. [`Observed::snapshot`] is
/// the one place a [`Status`] is made: `peerctl status`, systemd's
/// `STATUS=`, `/metrics` and the browser console all show what it returns,
/// so none of them knows something the others cannot.
pub struct Observed {
    /// The config and the peer links of the moment (see `reload`).
    pub settings: Settings,
    pub journal: Journal,
    pub tally: Arc<Tally>,
    /// What the last reload did.
    pub last_reload: Arc<Mutex<Option<ReloadReport>>>,
    pub started_ms: u64,
    pub listen: String,
    pub http_listen: Option<String>,
    pub socket: String,
    pub state_dir: String,
}

impl Observed {
    /// The daemon, its journal and every link, now.
    pub fn snapshot(&self) -> Status {
        let current = self.settings.borrow().clone();
        let cfg = &current.cfg;
        let peers = current
            .boards
            .iter()
            .map(|b| {
                let mut s = b.snapshot();
                let (msgs, bytes, oldest) = self.journal.queued(&s.name);
                s.queued_msgs = msgs;
                s.queued_bytes = bytes;
                s.oldest_queued_ms = oldest;
                (s.msgs_acked, s.bytes_acked) = self.journal.acked(&s.name);
                // Traffic counters live in the journal, so they survive restarts.
                let c = self.journal.counters(&s.name);
                s.msgs_sent = c.msgs_sent;
                s.bytes_sent = c.bytes_sent;
                s.msgs_received = c.msgs_received;
                s.bytes_received = c.bytes_received;
                s.msgs_lost = c.msgs_lost;
                s
            })
            .collect();
        let refused_sends = self
            .tally
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        Status {
            instance: cfg.instance.clone(),
            node: cfg.node.clone(),
            version: peerlink::VERSION.to_string(),
            pid: std::process::id(),
            started_ms: self.started_ms,
            now_ms: peerlink::now_ms(),
            listen: self.listen.clone(),
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            http_listen: self.http_listen.clone(),
            auth_failures: self.tally.auth_failures.load(Ordering::Relaxed),
            refused_sends,
            journal: self.journal.status(),
            peers,
            last_reload: self
                .last_reload
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
