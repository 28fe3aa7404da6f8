//! Capped exponential backoff with jitter, shared by every reconnect and retry loop.

use rand::Rng;
use std::time::Duration;

/// Delays that double from `base` up to `cap`, each drawn in `[d/2, d]` so that many
/// clients cut off by the same broker restart do not all come back in the same instant.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    /// The first delay.
    base: Duration,
    /// No delay is longer than this.
    cap: Duration,
    /// Failures since the last success.
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never waiting longer than `cap`.
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // 2^16 × base is far beyond any sensible cap, and keeps the shift from overflowing.
        let factor = 1u32 << self.attempt.min(16);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.base.saturating_mul(factor).min(self.cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        if millis < 2 {
            return ceiling;
        }
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    /// Forgets past failures: the next delay is `base` again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn delays_grow_up_to_the_cap_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..40 {
            assert!(backoff.next_delay() <= Duration::from_secs(2));
        }
        let late = backoff.next_delay();
        assert!(
            late >= Duration::from_secs(1),
            "capped delays stay near the cap: {late:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
