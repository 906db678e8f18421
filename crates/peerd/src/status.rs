//! Per-peer link status, shared between the link task (which owns the
//! state changes) and the control server (which only reads it for
//! `peerctl status`). A plain mutex: writes are a few fields, reads rare.

use std::sync::{Arc, Mutex, MutexGuard};

use peerlink::control::{LinkState, PeerStatus};

/// The status record of one peer link.
#[derive(Clone)]
pub struct PeerBoard(Arc<Mutex<PeerStatus>>);

impl PeerBoard {
    pub fn new(name: &str, url: &str) -> Self {
        PeerBoard(Arc::new(Mutex::new(PeerStatus {
            name: name.to_string(),
            url: url.to_string(),
            state: LinkState::Connecting,
            direction: None,
            remote_addr: None,
            local_addr: None,
            connected_since_ms: None,
            last_handshake_ms: None,
            rtt_us: None,
            next_attempt_ms: None,
            msgs_sent: 0,
            bytes_sent: 0,
            msgs_received: 0,
            bytes_received: 0,
            queued_msgs: 0,
            queued_bytes: 0,
            oldest_queued_ms: None,
            reconnects: 0,
            last_error: None,
            last_error_ms: None,
        })))
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
