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
