//! Rate limiting for logs a remote peer can trigger.
//!
//! A peer that floods us with garbage must not also flood the log: each [`LogLimiter`] lets
//! one line through per interval and counts what it held back, so the next line says how many
//! similar events were suppressed.

use std::time::{Duration, Instant};

/// Allows one log line per `every`.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        LogLimiter { every, last: None, suppressed: 0 }
    }

    /// `Some(n)` if a line may be logged now (`n` = lines suppressed since the last one).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_a_count() {
        let mut l = LogLimiter::new(Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(l.check(t), Some(0));
        for i in 1..100 {
            assert_eq!(l.check(t + Duration::from_millis(i)), None);
        }
        assert_eq!(l.check(t + Duration::from_secs(6)), Some(99));
    }
}
