//! Capped exponential backoff with full jitter, for redialling a peer.
//!
//! The n-th delay is drawn uniformly from `[0, min(max, min_delay * 2^n)]`
//! ("full jitter"): two daemons that lost their link at the same moment do
//! not redial in lockstep. A session that stayed up resets the schedule.

use std::time::Duration;

/// The schedule; the randomness is passed in so tests see exact values.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The cap for the next attempt, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, given `unit` drawn uniformly from [0, 1].
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let cap = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        cap.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The next delay, with real randomness.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// Start over (after a session that stayed up).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let caps: Vec<u64> = (0..7)
            .map(|_| b.next_with(1.0).as_millis() as u64)
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000, 1000]);
    }

    #[test]
    fn jitter_scales_and_reset_restarts() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        assert_eq!(b.next_with(0.5), Duration::from_millis(50));
        assert_eq!(b.next_with(0.0), Duration::ZERO);
        assert_eq!(b.next_with(0.25), Duration::from_millis(100));
        b.reset();
        assert_eq!(b.next_with(1.0), Duration::from_millis(100));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
