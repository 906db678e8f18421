//! One link task per peer: it owns that peer's sessions. It dials with
//! backoff while no session is up, takes sessions the listener accepted,
//! applies the collision rule when two are up at once, and records the
//! link's state for `status`.
//!
//! # Collision rule (SPEC §3)
//!
//! Both nodes listen and both dial, so two sessions between the same pair
//! can be up at once. Both sides keep the one **dialled by the node with
//! the smaller name** and close the other with "duplicate link", the same
//! idea as BGP's collision resolution (RFC 4271 §6.8): each side decides
//! from facts both know (the two node names), never from timing, so they
//! always agree without talking. Two sessions dialled by the same node can
//! only mean that node gave up on the old one (a node never dials while a
//! session is up), so the newer wins.
//!
//! # Reloads
//!
//! The link reads its settings ([`Current`]) afresh for every dial and
//! every session, and watches them: new backoff bounds apply at once, a
//! new URL at the next dial, and the live session is left alone, unless it
//! was authenticated with a secret this node no longer holds, or the
//! reload made another secret this node's first choice (a rotation). Then the link
//! re-keys **before** it lets go: it dials a new session while the old one
//! runs, when the collision rule lets that new session win on both sides
//! (we dialled the live one, or our name is the smaller); the old session
//! then closes as a duplicate and delivery carries on from the acks, so
//! nothing is lost or stored twice. Otherwise the peer will re-key when it
//! reloads; only a removed secret that cannot be re-keyed this way ends
//! the session (closed, and dialled again at once).

use std::sync::Arc;
use std::time::Duration;

use peerlink::control::LinkState;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::KeyId;
use crate::backoff::Backoff;
use crate::config::{Config, Peer};
use crate::dial;
use crate::handshake::{self, Established, HandshakeError, LinkError};
use crate::journal::Journal;
use crate::reload::{Current, Settings};
use crate::session::{self, CloseReason};
use crate::status::PeerBoard;
use crate::status::Tally;
use crate::wire::CLOSE_DUPLICATE;

/// Should a new session dialled by `new_dialler` replace the live one
/// dialled by `live_dialler`? Pure, so both nodes compute the same answer.
pub fn new_session_wins(live_dialler: &str, new_dialler: &str) -> bool {
    live_dialler == new_dialler || new_dialler < live_dialler
}

/// The link task of one peer.
pub struct Link {
    /// The peer's node name (its URL is read from the settings).
    pub name: String,
    /// The config, TLS and secrets of the moment (see `reload`).
    pub settings: Settings,
    pub journal: Journal,
    pub board: PeerBoard,
    /// Counts failed authentications of our dials.
    pub tally: Arc<Tally>,
    /// Sessions the listener accepted from this peer.
    pub offers: mpsc::Receiver<Established>,
    /// Fires on shutdown, or when a reload removes this peer.
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

struct Live {
    id: u64,
    dialled_by: String,
    close: oneshot::Sender<CloseReason>,
    since: Instant,
    /// The secret it was authenticated with.
    key: Option<KeyId>,
}

/// Why the link dials while a session is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rekey {
    /// A handshake now would pick another secret (both still work).
    Preferred,
    /// This node no longer holds the live session's secret.
    Removed,
}

impl Link {
    fn current(&self) -> Arc<Current> {
        self.settings.borrow().clone()
    }

    fn cfg(&self) -> Arc<Config> {
        self.current().cfg.clone()
    }

    /// This peer in the current config (none: just removed, and the link
    /// is about to stop).
    fn peer(&self) -> Option<Peer> {
        self.cfg()
            .peers
            .iter()
            .find(|p| p.name == self.name)
            .cloned()
    }

    /// Would a session we dial now replace the live one on both sides?
    fn our_dial_wins(&self, cfg: &Config, live: &Live) -> bool {
        new_session_wins(&live.dialled_by, &cfg.node)
    }

    pub async fn run(mut self) {
        let cfg = self.cfg();
        let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
        let mut bounds = (cfg.backoff_min, cfg.backoff_max);
        let mut held = crate::reload::ids(&cfg);
        drop(cfg);
        // Dialling while a session is up, to re-key it (module doc).
        let mut rekey: Option<Rekey> = None;
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(u64, session::Ended)>();
        let (dialled_tx, mut dialled_rx) = mpsc::channel::<Result<Established, LinkError>>(1);
        let mut live: Option<Live> = None;
        let mut dialling = false;
        let mut next_dial = Instant::now();
        let mut next_id = 0u64;
        let mut sessions = 0u64;
        // The last session ended as the loser of a collision (not a
        // reconnect when the kept one arrives).
        let mut after_collision = false;
        // Why the last session ended: the reason of the next reconnect.
        let mut down_reason = "connection";
        // The last dial error logged at warn: a new kind of failure (wrong
        // secret, bad certificate) is logged once, not at every retry.
        let mut last_warned: Option<String> = None;
        loop {
            let may_dial = (live.is_none() || rekey.is_some()) && !dialling;
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                Ok(()) = self.settings.changed() => {
                    let cfg = self.cfg();
                    if bounds != (cfg.backoff_min, cfg.backoff_max) {
                        bounds = (cfg.backoff_min, cfg.backoff_max);
                        backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
                    }
                    if let Some(p) = self.peer() {
                        self.board.update(|s| s.url = p.url.clone());
                    }
                    let before = std::mem::replace(&mut held, crate::reload::ids(&cfg));
                    let Some(l) = live.as_ref() else { continue };
                    match rekey_needed(&held, &before, l.key) {
                        Some(why) if self.our_dial_wins(&cfg, l) => {
                            tracing::info!(peer = %self.name, "re-keying the live session (secret {}): dialling a new one before closing it", show_key(l.key));
                            rekey = Some(why);
                            next_dial = Instant::now();
                        }
                        Some(Rekey::Removed) => {
                            tracing::warn!(peer = %self.name, "the live session's secret {} was removed; closing it and dialling again", show_key(l.key));
                            if let Some(l) = live.take() {
                                let _ = l.close.send(CloseReason::GoingAway);
                            }
                            next_dial = Instant::now();
                        }
                        Some(Rekey::Preferred) => {
                            tracing::info!(peer = %self.name, "a newer secret is shared with the peer; it re-keys the session when it reloads");
                        }
                        None => {}
                    }
                }
                Some(est) = self.offers.recv() => {
                    self.offer(est, &mut live, &mut next_id, &mut sessions, (std::mem::take(&mut after_collision), down_reason), &ended_tx);
                }
                Some(result) = dialled_rx.recv() => {
                    dialling = false;
                    // (Logged and shown in `status` as one line.)
                    let result = result.map_err(|e| e.to_string());
                    let rekeying = rekey.take();
                    match result {
                        Ok(est) => {
                            let replacing = rekeying.is_some() || std::mem::take(&mut after_collision);
                            self.offer(est, &mut live, &mut next_id, &mut sessions, (replacing, down_reason), &ended_tx)
                        }
                        Err(e) if rekeying.is_some() && live.is_some() => {
                            tracing::warn!(peer = %self.name, "re-keying failed: {e}");
                            if rekeying == Some(Rekey::Removed) {
                                if let Some(l) = live.take() {
                                    tracing::warn!(peer = %self.name, "closing the session that uses removed secret {}", show_key(l.key));
                                    let _ = l.close.send(CloseReason::GoingAway);
                                }
                                next_dial = self.schedule(&mut backoff, &e);
                            }
                        }
                        Err(e) => {
                            if last_warned.as_deref() != Some(e.as_str()) {
                                tracing::warn!(peer = %self.name, "cannot connect: {e} (retrying with backoff)");
                                last_warned = Some(e.clone());
                            }
                            if live.is_none() {
                                next_dial = self.schedule(&mut backoff, &e);
                            }
                        }
                    }
                }
                Some((id, ended)) = ended_rx.recv() => {
                    if live.as_ref().is_some_and(|l| l.id == id) {
                        let Some(l) = live.take() else { continue };
                        if l.since.elapsed() >= self.cfg().dead_after {
                            backoff.reset();
                            last_warned = None;
                        }
                        if ended.duplicate {
                            // The peer kept the other session of a
                            // collision; it is on its way here. Dial only
                            // if it does not come (after the usual backoff).
                            tracing::debug!(peer = %self.name, "the peer kept the other session of a collision");
                            after_collision = true;
                            let delay = backoff.next_delay();
                            self.board.update(|s| s.state = LinkState::Connecting);
                            next_dial = Instant::now() + delay;
                        } else {
                            // Once per kind of failure: a peer whose disk is
                            // full ends every session the same way.
                            if last_warned.as_deref() != Some(ended.why.as_str()) {
                                tracing::warn!(peer = %self.name, "link down: {} (retrying with backoff)", ended.why);
                                last_warned = Some(ended.why.clone());
                            } else {
                                tracing::debug!(peer = %self.name, "link down again: {}", ended.why);
                            }
                            after_collision = false;
                            down_reason = reconnect_reason(&ended.why);
                            next_dial = self.schedule(&mut backoff, &ended.why);
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_dial), if may_dial => {
                    let Some(peer) = self.peer() else {
                        // Removed by a reload: the stop is on its way.
                        next_dial = Instant::now() + Duration::from_secs(3600);
                        continue;
                    };
                    dialling = true;
                    self.board.update(|s| {
                        if s.state != LinkState::Connected {
                            s.state = LinkState::Connecting;
                            s.next_attempt_ms = None;
                        }
                    });
                    let (current, journal, tx, tally) = (
                        self.current(),
                        self.journal.clone(),
                        dialled_tx.clone(),
                        self.tally.clone(),
                    );
                    let shutdown = self.shutdown.clone();
                    self.tracker.spawn(async move {
                        let (cfg, tls) = (&current.cfg, &current.tls);
                        let timeout = cfg.handshake_timeout;
                        let r = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            r = tokio::time::timeout(timeout, dial::dial(cfg, &journal, tls, &peer)) => r,
                        };
                        let r = r.unwrap_or(Err(LinkError::Timeout(timeout)));
                        if matches!(r, Err(LinkError::Handshake(HandshakeError::Auth(_)))) {
                            tally.auth_failed();
                        }
                        let _ = tx.send(r).await;
                    });
                }
            }
        }
        if let Some(l) = live.take() {
            let _ = l.close.send(CloseReason::GoingAway);
        }
    }

    /// Record a failure and pick when to dial next.
    fn schedule(&self, backoff: &mut Backoff, error: &str) -> Instant {
        let delay = backoff.next_delay();
        tracing::debug!(peer = %self.name, "{error}; next attempt in {}", humantime::format_duration(round_ms(delay)));
        self.board.error(error);
        self.board.update(|s| {
            s.state = LinkState::Backoff;
            s.direction = None;
            s.remote_addr = None;
            s.local_addr = None;
            s.connected_since_ms = None;
            s.rtt_us = None;
            s.next_attempt_ms = Some(peerlink::now_ms() + delay.as_millis() as u64);
        });
        Instant::now() + delay
    }

    /// A session finished its handshake: keep it or refuse it.
    fn offer(
        &self,
        est: Established,
        live: &mut Option<Live>,
        next_id: &mut u64,
        sessions: &mut u64,
        (after_collision, reason): (bool, &'static str),
        ended: &mpsc::UnboundedSender<(u64, session::Ended)>,
    ) {
        // Winning a collision against the other side's session is not a
        // reconnect: the link never went down.
        let mut collision = after_collision;
        if let Some(l) = live.as_ref() {
            if !new_session_wins(&l.dialled_by, &est.dialled_by) {
                tracing::debug!(peer = %self.name, "duplicate link dialled by {}: closing it", est.dialled_by);
                self.tracker
                    .spawn(handshake::refuse(est.ws, CLOSE_DUPLICATE, "duplicate link"));
                return;
            }
            if let Some(old) = live.take() {
                collision = collision || old.dialled_by != est.dialled_by;
                tracing::debug!(peer = %self.name, "duplicate link dialled by {}: replacing it", old.dialled_by);
                let _ = old.close.send(CloseReason::Duplicate);
            }
        }
        *next_id += 1;
        let id = *next_id;
        let (close_tx, close_rx) = oneshot::channel();
        tracing::info!(
            peer = %self.name,
            remote = %est.remote,
            "link up ({:?}, dialled by {})",
            est.direction,
            est.dialled_by
        );
        let now = peerlink::now_ms();
        let current = self.current();
        let key_added = est.key.and_then(|k| current.key_ages.get(&k).copied());
        self.board.update(|s| {
            s.key_id = est.key.map(|k| k.to_string());
            s.key_added_ms = key_added;
            s.state = LinkState::Connected;
            s.direction = Some(est.direction);
            s.remote_addr = Some(est.remote.to_string());
            s.local_addr = Some(est.local.to_string());
            s.connected_since_ms = Some(now);
            s.last_handshake_ms = Some(now);
            s.next_attempt_ms = None;
            if *sessions > 0 && !collision {
                s.reconnects += 1;
                *s.reconnect_reasons.entry(reason.to_string()).or_default() += 1;
            }
        });
        *sessions += 1;
        *live = Some(Live {
            id,
            dialled_by: est.dialled_by.clone(),
            close: close_tx,
            since: Instant::now(),
            key: est.key,
        });
        let ctx = session::Session {
            settings: self.settings.clone(),
            peer: self.name.clone(),
            journal: self.journal.clone(),
            board: self.board.clone(),
        };
        let ended = ended.clone();
        self.tracker.spawn(async move {
            let why = ctx.run(est, close_rx).await;
            let _ = ended.send((id, why));
        });
    }
}

/// Does a live session authenticated with `key` need a new one with
/// another secret, now that this node holds `mine` (it held `before`)?
fn rekey_needed(mine: &[KeyId], before: &[KeyId], key: Option<KeyId>) -> Option<Rekey> {
    let key = key?;
    if !mine.contains(&key) {
        return Some(Rekey::Removed);
    }
    // Our keyring changed and now prefers another secret: the peer may
    // hold it too (it may have added it after our session began), and a
    // handshake would pick it if so. If not, the new session simply uses
    // the same secret again.
    (mine != before && mine.first() != Some(&key)).then_some(Rekey::Preferred)
}

fn show_key(k: Option<KeyId>) -> String {
    k.map(|k| k.to_string()).unwrap_or_else(|| "none".into())
}

/// The `reason` label of a reconnect, from why the session before it
/// ended (the one-line reasons of [`session`]).
pub fn reconnect_reason(why: &str) -> &'static str {
    if why.starts_with("nothing received for") {
        "timeout"
    } else if why.starts_with("peer closed the link") {
        "peer_closed"
    } else if why.starts_with("paused:") {
        "storage"
    } else if why.starts_with("bad ")
        || why.starts_with("unexpected ")
        || why.starts_with("data of epoch")
        || why.starts_with("text frame")
    {
        "protocol"
    } else {
        "connection"
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::new_session_wins;

    #[test]
    fn reconnect_reasons_are_a_few_labels() {
        use super::reconnect_reason as r;
        assert_eq!(r("nothing received for 15s"), "timeout");
        assert_eq!(r("peer closed the link: going away"), "peer_closed");
        assert_eq!(r("paused: b's disk full"), "storage");
        assert_eq!(r("bad frame from peer: x"), "protocol");
        assert_eq!(r("connection closed"), "connection");
        assert_eq!(r("Connection reset by peer (os error 104)"), "connection");
    }

    #[test]
    fn smaller_dialler_wins_on_both_sides() {
        // Sessions S1 (dialled by a) and S2 (dialled by b), in either order.
        // Whichever arrived first, the survivor is S1.
        assert!(
            new_session_wins("b", "a"),
            "S2 live, S1 arrives: S1 replaces it"
        );
        assert!(
            !new_session_wins("a", "b"),
            "S1 live, S2 arrives: S2 is refused"
        );
        // The rule does not depend on which node evaluates it: it has no
        // "me" argument at all, so a and b cannot disagree.
    }

    #[test]
    fn rekey_when_the_secret_is_removed_or_a_new_one_preferred() {
        use super::{KeyId, Rekey, rekey_needed};
        let (old, new) = (KeyId([1; 4]), KeyId([2; 4]));
        // Step 1, the new one added second: nothing to do.
        assert_eq!(rekey_needed(&[old, new], &[old], Some(old)), None);
        // Step 2, the new one preferred: try it.
        assert_eq!(
            rekey_needed(&[new, old], &[old, new], Some(old)),
            Some(Rekey::Preferred)
        );
        // A reload that did not touch the keyring never re-keys.
        assert_eq!(rekey_needed(&[new, old], &[new, old], Some(old)), None);
        // Already on the preferred one.
        assert_eq!(rekey_needed(&[new, old], &[old, new], Some(new)), None);
        // Step 3, the old one removed while still in use.
        assert_eq!(
            rekey_needed(&[new], &[new, old], Some(old)),
            Some(Rekey::Removed)
        );
        // No secret, no re-keying.
        assert_eq!(rekey_needed(&[], &[], None), None);
    }

    #[test]
    fn same_dialler_newest_wins() {
        assert!(new_session_wins("a", "a"));
        assert!(new_session_wins("b", "b"));
    }

    #[test]
    fn names_compare_bytewise() {
        assert!(new_session_wins("node-10", "node-1"));
        assert!(!new_session_wins("node-1", "node-10"));
        assert!(new_session_wins("b", "a1"));
    }
}
