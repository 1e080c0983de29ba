//! Reading what pgbench leaves behind, for the benchmarks.

use std::path::Path;
use std::time::Duration;

/// Every transaction's latency from the per-transaction logs (`pgbench -l`) in `dir`.
///
/// Panics on a log line that is not pgbench's (client, transaction, latency in µs, …).
pub fn logged_latencies(dir: &Path) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for entry in std::fs::read_dir(dir).expect("pgbench's directory") {
        let path = entry.expect("a directory entry").path();
        let is_log = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("pgbench_log"));
        if !is_log {
            continue;
        }
        for line in std::fs::read_to_string(&path)
            .expect("a pgbench log")
            .lines()
        {
            let micros: u64 = line
                .split_whitespace()
                .nth(2)
                .and_then(|field| field.parse().ok())
                .unwrap_or_else(|| panic!("not a pgbench log line: {line:?}"));
            latencies.push(Duration::from_micros(micros));
        }
    }
    latencies
}

/// How many rounds a benchmark measures each row in (`PGWARDEN_BENCH_ROUNDS`, default 2; an
/// even number keeps every path's place in the order balanced).
pub fn rounds() -> usize {
    std::env::var("PGWARDEN_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
        .max(1)
}

/// The order in which round `round` measures a row's `N` paths: as listed in even rounds,
/// reversed in odd ones, so that a machine getting faster or slower during a row favours none.
pub fn round_order<const N: usize>(round: usize) -> [usize; N] {
    let mut order = std::array::from_fn(|i| i);
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn odd_rounds_reverse_the_order() {
        assert_eq!(round_order::<3>(0), [0, 1, 2]);
        assert_eq!(round_order::<3>(1), [2, 1, 0]);
        assert_eq!(round_order::<3>(2), [0, 1, 2]);
    }
}
