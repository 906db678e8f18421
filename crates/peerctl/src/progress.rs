//! Progress of a long `peerctl send` stream, on stderr: only when stderr is
//! a terminal, only once the stream has run for a moment (a short send
//! never flashes a spinner), and cleared when it ends, so it never ends up
//! in a pipe or a log. Drawing is `indicatif`'s: it limits the redraw
//! rate and knows how to clear its line.

use std::time::{Duration, Instant};

use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a stream runs before progress shows.
const SHOW_AFTER: Duration = Duration::from_millis(700);

/// Messages stored so far, shown once the stream is long.
pub struct Progress {
    bar: ProgressBar,
    bytes: u64,
    /// Messages handed to the daemon, stored or not yet.
    sent: u64,
    started: Instant,
    /// Whether progress may be drawn at all (stderr is a terminal).
    enabled: bool,
    shown: bool,
}

impl Progress {
    /// Progress for a stream; `enabled` says whether it may be drawn.
    pub fn new(enabled: bool) -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
            bytes: 0,
            sent: 0,
            started: Instant::now(),
            enabled,
            shown: false,
        }
    }

    /// `n` more messages of `bytes` bytes are stored.
    pub fn stored(&mut self, n: u64, bytes: u64) {
        self.bytes += bytes;
        self.bar.inc(n);
        if self.enabled && !self.shown && self.started.elapsed() >= SHOW_AFTER {
            self.shown = true;
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {human_pos} messages stored, {msg} [{elapsed}]",
            ) {
                self.bar.set_style(style);
            }
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar.enable_steady_tick(Duration::from_millis(120));
        }
        if self.shown {
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = (self.bar.position() as f64 / secs) as u64;
            self.bar.set_message(format!(
                "{}, {}/s",
                crate::status::human_size(self.bytes),
                HumanCount(rate)
            ));
        }
    }

    /// `n` more messages went to the daemon (not yet confirmed stored).
    pub fn sent(&mut self, n: u64) {
        self.sent += n;
    }

    /// What an interrupted stream got done (`wait`: stored means stored
    /// by the peer too, once all are confirmed).
    pub fn summary(&self, wait: bool) -> String {
        let stored = self.bar.position();
        let pending = self.sent.saturating_sub(stored);
        let stored_text = if wait {
            "stored in the outbox"
        } else {
            "stored"
        };
        let mut s = format!(
            "interrupted: {} {} {stored_text}",
            HumanCount(stored),
            if stored == 1 { "message" } else { "messages" }
        );
        if pending > 0 {
            s.push_str(&format!(
                ", {} more sent and not yet confirmed (they may be stored too)",
                HumanCount(pending)
            ));
        }
        s.push_str("; the rest of the input was not sent");
        s
    }

    /// The stream ended (or failed): clear the line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
