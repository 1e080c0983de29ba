//! Waits between retries: exponential, capped, jittered.

use std::time::Duration;

/// The wait before retry number `attempt` (from 1): `first`, doubled per attempt, plus up to
/// half of that again at random (so competing clients spread out), never more than `max`.
pub fn backoff(attempt: u32, first: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let base = first.saturating_mul(1u32 << doublings).min(max);
    let jitter = base.mul_f64(rand::random::<f64>() * 0.5);
    base.saturating_add(jitter).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let first = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for (attempt, base) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (99, 1000),
        ] {
            let base = Duration::from_millis(base);
            for _ in 0..50 {
                let wait = backoff(attempt, first, max);
                let most = (base * 3 / 2).min(max);
                assert!(wait >= base && wait <= most, "{attempt}: {wait:?}");
            }
        }
    }
}
