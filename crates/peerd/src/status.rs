//! Per-peer link status, shared between the link task (which owns the
//! state changes) and the control server (which only reads it for
//! `peerctl status`). A plain mutex: writes are a few fields, reads rare.

use std::sync::{Arc, Mutex, MutexGuard};

use peerlink::control::PeerStatus;

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
