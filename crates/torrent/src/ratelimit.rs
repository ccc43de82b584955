//! The byte-rate limiter: one token bucket shared by every connection of a node, so
//! `--upload-limit 2M` caps the node's total upload, not each connection's. Built on `governor`'s
//! GCRA (a token bucket with exact arithmetic); a `None` rate is unlimited and costs nothing.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{Quota, RateLimiter as Gcra};

type Direct = Gcra<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    governor::clock::QuantaClock,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
>;

/// A shared byte-rate cap. Clone the `Arc` into every connection task.
pub struct RateLimiter {
    bucket: Option<Direct>,
    burst: u32,
    rate: Option<u64>,
}

impl RateLimiter {
    /// A limiter for `bytes_per_sec` (`None` = unlimited). The bucket holds 2 ms of traffic (at
    /// least one 16 KiB block: enough to absorb timer granularity) and starts *empty*, so a
    /// node can never have sent more than `rate × elapsed + one bucket` since it was made: the
    /// distribution lab depends on that to compare measured times with the lecture's bound.
    pub fn new(bytes_per_sec: Option<u64>) -> Arc<Self> {
        let Some(rate) = bytes_per_sec.filter(|&r| r > 0) else {
            return Arc::new(RateLimiter { bucket: None, burst: u32::MAX, rate: None });
        };
        let rate32 = rate.min(u32::MAX as u64) as u32;
        let burst = (rate32 / 500).max(16 * 1024);
        // Both are non-zero: rate was filtered > 0 and burst is at least 16 KiB.
        let quota = Quota::per_second(NonZeroU32::new(rate32.max(1)).expect("rate > 0"))
            .allow_burst(NonZeroU32::new(burst).expect("burst > 0"));
        let bucket = Gcra::direct(quota);
        // Drain the initial allowance; `burst` is exactly the quota's burst, so this succeeds.
        let _ = bucket.check_n(NonZeroU32::new(burst).expect("burst > 0"));
        Arc::new(RateLimiter { bucket: Some(bucket), burst, rate: Some(rate) })
    }

    /// The configured rate in bytes per second, if any.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Waits until `bytes` may be sent (or received). Large amounts are taken in burst-sized
    /// portions so that any size can pass.
    pub async fn acquire(&self, bytes: usize) {
        let Some(bucket) = &self.bucket else { return };
        let mut left = bytes;
        while left > 0 {
            let n = left.min(self.burst as usize);
            left -= n;
            if let Some(n) = NonZeroU32::new(n as u32) {
                // n ≤ burst, so the bucket can always satisfy it eventually.
                let _ = bucket.until_n_ready(n).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unlimited_never_waits_and_limited_passes_any_size() {
        let free = RateLimiter::new(None);
        free.acquire(usize::MAX / 2).await;
        assert_eq!(free.rate(), None);
        let capped = RateLimiter::new(Some(10 << 20));
        // Larger than the burst: must be split, not refused.
        capped.acquire(600 * 1024).await;
        assert_eq!(capped.rate(), Some(10 << 20));
    }
}
