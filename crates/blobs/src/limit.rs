//! Per-agent upload and download rate limits: an async token bucket.
//!
//! Senders ask for the bytes they are about to move and wait until the bucket allows them;
//! the bucket holds at most 100 ms of tokens so bursts stay short. Unlimited buckets never wait.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A shared rate limit in bytes per second.
#[derive(Debug)]
pub struct RateLimit {
    rate: Option<f64>,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `bytes_per_sec = None` means unlimited.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        RateLimit { rate: bytes_per_sec.map(|r| r.max(1) as f64), state: Mutex::new((0.0, Instant::now())) }
    }

    pub fn is_limited(&self) -> bool {
        self.rate.is_some()
    }

    /// How long to wait before `n` bytes may go, taking them from the bucket.
    fn take(&self, n: usize, now: Instant) -> Duration {
        let Some(rate) = self.rate else { return Duration::ZERO };
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *s;
        let cap = rate / 10.0;
        let refill = (tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(cap);
        let left = refill - n as f64;
        *s = (left, now);
        if left >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-left / rate) }
    }

    /// Waits until `n` bytes may be sent or received.
    pub async fn acquire(&self, n: usize) {
        let wait = self.take(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_run_rate_is_the_limit() {
        let l = RateLimit::new(Some(1_000_000));
        let t0 = Instant::now();
        // 10 MB in 64 KiB chunks: the waits must add up to about 10 s.
        let mut waited = Duration::ZERO;
        let mut now = t0;
        for _ in 0..(10_000_000 / 65_536) {
            let w = l.take(65_536, now);
            waited += w;
            now += w;
        }
        let secs = waited.as_secs_f64();
        assert!((9.5..10.5).contains(&secs), "{secs}");
        assert_eq!(RateLimit::new(None).take(1 << 30, t0), Duration::ZERO);
    }
}
