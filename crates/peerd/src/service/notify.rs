//! Telling systemd how the daemon is doing (sd_notify(3), `Type=notify`).
//!
//! Only when the service manager asks for it (`NOTIFY_SOCKET` is set):
//!
//! - `READY=1` once the listener and the control socket are up, so
//!   `systemctl start` returns only when `peerctl` can already connect;
//! - `STATUS=` kept current with the link state, one clause per peer, as
//!   `systemctl status` shows it: `b: connected, rtt 0.3ms` or
//!   `b: backoff 4s, connect 10.0.0.2:8080: Connection refused (os error 111)`;
//! - `WATCHDOG=1` every half `WATCHDOG_USEC` when the unit sets
//!   `WatchdogSec=`, sent from a task on the daemon's runtime so a wedged
//!   runtime stops feeding it and systemd restarts the daemon;
//! - `STOPPING=1` as soon as shutdown starts;
//! - `RELOADING=1` with `MONOTONIC_USEC=` (which systemd 253 and later
//!   require with it) when a reload starts, and `READY=1` once it is
//!   applied or refused, with a `STATUS=` line that says which: the daemon
//!   runs either way, on the new config or on the old one.
//!
//! The link tasks own the status records ([`PeerBoard`]); this module only
//! polls them (every [`STATUS_EVERY`]) and sends a new `STATUS=` when the
//! line changed. A failed notification is logged once at debug level: the
//! daemon's work never depends on anyone listening.

use std::time::Duration;

use peerlink::control::{LinkState, PeerStatus};
use tokio_util::sync::CancellationToken;

use crate::reload::Settings;
use crate::status::PeerBoard;

/// How often the link state is looked at for a new `STATUS=` line.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// One notification, as sd_notify(3) names them.
enum Note<'a> {
    Ready,
    Status(&'a str),
    Watchdog,
    Stopping,
    Reloading,
}

/// Is a service manager listening for notifications?
pub fn wanted() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Send READY=1 with a first STATUS= line, then keep STATUS= current and
/// feed the watchdog until `shutdown`. Does nothing when no service
/// manager listens. Call from inside the runtime.
pub fn start(settings: Settings, shutdown: CancellationToken) {
    if !wanted() {
        return;
    }
    let boards = move || settings.borrow().boards.clone();
    let mut notifier = Notifier { failed: false };
    let mut last = status_of(&boards());
    notifier.send(&[Note::Ready, Note::Status(&last)]);
    let watchdog = watchdog_interval();
    if let Some(every) = watchdog {
        tracing::debug!("systemd watchdog: WATCHDOG=1 every {every:?}");
    }
    tokio::spawn(async move {
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Without a watchdog this interval never fires (a year apart).
        let mut dog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(1 << 25)));
        dog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // STOPPING=1 was sent by the signal handler ([`stopping`]).
                _ = shutdown.cancelled() => return,
                _ = status_tick.tick() => {
                    let now = status_of(&boards());
                    if now != last {
                        notifier.send(&[Note::Status(&now)]);
                        last = now;
                    }
                }
                _ = dog_tick.tick(), if watchdog.is_some() => notifier.send(&[Note::Watchdog]),
            }
        }
    });
}

/// Send STOPPING=1: shutdown has begun. Does nothing when no service
/// manager listens.
pub fn stopping() {
    if wanted() {
        Notifier { failed: false }.send(&[Note::Stopping, Note::Status("stopping")]);
    }
}

/// Send RELOADING=1 (with the clock systemd wants): a reload has begun.
pub fn reloading() {
    if wanted() {
        Notifier { failed: false }.send(&[Note::Reloading]);
    }
}

/// Send READY=1 after a reload, with what it did as STATUS= (until the
/// next link status line replaces it).
pub fn reloaded(what: &str) {
    if wanted() {
        Notifier { failed: false }.send(&[Note::Ready, Note::Status(what)]);
    }
}

/// Half the interval the unit's `WatchdogSec=` asks for, if it does.
fn watchdog_interval() -> Option<Duration> {
    #[cfg(unix)]
    {
        sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

struct Notifier {
    /// Logged the first failure already: one line, not one per second.
    failed: bool,
}

impl Notifier {
    fn send(&mut self, notes: &[Note<'_>]) {
        #[cfg(unix)]
        {
            use sd_notify::NotifyState;
            let mut states: Vec<NotifyState<'_>> = Vec::new();
            for n in notes {
                match n {
                    Note::Ready => states.push(NotifyState::Ready),
                    Note::Status(s) => states.push(NotifyState::Status(s)),
                    Note::Watchdog => states.push(NotifyState::Watchdog),
                    Note::Stopping => states.push(NotifyState::Stopping),
                    Note::Reloading => {
                        states.push(NotifyState::Reloading);
                        match NotifyState::monotonic_usec_now() {
                            Ok(now) => states.push(now),
                            Err(e) => tracing::debug!("no monotonic clock for MONOTONIC_USEC: {e}"),
                        }
                    }
                }
            }
            if let Err(e) = sd_notify::notify(&states) {
                if !self.failed {
                    tracing::debug!("cannot notify the service manager: {e}");
                }
                self.failed = true;
            }
        }
        #[cfg(not(unix))]
        let _ = (notes, &mut self.failed);
    }
}

fn status_of(boards: &[PeerBoard]) -> String {
    let peers: Vec<PeerStatus> = boards.iter().map(PeerBoard::snapshot).collect();
    status_line(&peers, peerlink::now_ms())
}

/// The `STATUS=` line: one clause per peer, `; ` between them.
pub fn status_line(peers: &[PeerStatus], now_ms: u64) -> String {
    if peers.is_empty() {
        return "no peers configured".to_string();
    }
    let clauses: Vec<String> = peers
        .iter()
        .map(|p| {
            let mut s = format!("{}: ", p.name);
            match p.state {
                LinkState::Connected => {
                    s.push_str("connected");
                    if let Some(rtt) = p.rtt_us {
                        s.push_str(&format!(", rtt {}", short_us(rtt)));
                    }
                }
                LinkState::Connecting => s.push_str("connecting"),
                LinkState::Backoff => {
                    s.push_str("backoff");
                    if let Some(at) = p.next_attempt_ms {
                        let left = at.saturating_sub(now_ms);
                        s.push(' ');
                        s.push_str(&short_us(left.saturating_mul(1000)));
                    }
                }
            }
            if let (false, Some(e)) = (p.state == LinkState::Connected, &p.last_error) {
                s.push_str(", ");
                s.push_str(e);
            }
            s
        })
        .collect();
    clauses.join("; ")
}

/// A duration in a few characters: `0.3ms`, `12ms`, `4s`, `2m`.
fn short_us(us: u64) -> String {
    match us {
        0..10_000 => format!("{:.1}ms", us as f64 / 1000.0),
        10_000..1_000_000 => format!("{}ms", us / 1000),
        1_000_000..120_000_000 => format!("{}s", us.div_ceil(1_000_000)),
        _ => format!("{}m", us / 60_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, state: LinkState) -> PeerStatus {
        let mut s = PeerBoard::new(name, "ws://x/ws").snapshot();
        s.state = state;
        s
    }

    #[test]
    fn connected_shows_rtt() {
        let mut p = peer("b", LinkState::Connected);
        assert_eq!(status_line(&[p.clone()], 0), "b: connected");
        p.rtt_us = Some(300);
        p.last_error = Some("old news".into());
        assert_eq!(status_line(&[p], 0), "b: connected, rtt 0.3ms");
    }

    #[test]
    fn backoff_shows_time_left_and_why() {
        let mut p = peer("b", LinkState::Backoff);
        p.next_attempt_ms = Some(10_000 + 3_200);
        p.last_error = Some("connection refused".into());
        assert_eq!(
            status_line(&[p], 10_000),
            "b: backoff 4s, connection refused"
        );
    }

    #[test]
    fn several_peers_and_none() {
        let b = peer("b", LinkState::Connecting);
        let mut c = peer("c", LinkState::Connected);
        c.rtt_us = Some(12_345);
        assert_eq!(
            status_line(&[b, c], 0),
            "b: connecting; c: connected, rtt 12ms"
        );
        assert_eq!(status_line(&[], 0), "no peers configured");
    }

    #[test]
    fn short_durations() {
        assert_eq!(short_us(0), "0.0ms");
        assert_eq!(short_us(150_000), "150ms");
        assert_eq!(short_us(30_000_000), "30s");
        assert_eq!(short_us(600_000_000), "10m");
    }
}
