//! CPU time spent during a benchmark's run, from `/proc`: the whole machine's and this
//! process's, so a benchmark can say how much CPU each operation cost and who spent it.

use std::time::Duration;

/// CPU time used so far: by every process of the machine, and by this one.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    /// Busy time of all CPUs (user, nice, system, interrupts), summed.
    pub machine: Duration,
    /// This process's user and system time.
    pub this_process: Duration,
}

impl CpuTime {
    /// The time used until now (zero where `/proc` cannot be read).
    pub fn now() -> CpuTime {
        CpuTime {
            machine: machine_busy().unwrap_or_default(),
            this_process: process_time().unwrap_or_default(),
        }
    }

    /// The time used between `earlier` and this reading.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            machine: self.machine.saturating_sub(earlier.machine),
            this_process: self.this_process.saturating_sub(earlier.this_process),
        }
    }

    /// Adds `other`'s times to these.
    pub fn add(&mut self, other: CpuTime) {
        self.machine += other.machine;
        self.this_process += other.this_process;
    }

    /// The rest of the machine's time: other processes (the database, pgbench, PgBouncer).
    pub fn others(self) -> Duration {
        self.machine.saturating_sub(self.this_process)
    }
}

/// Clock ticks per second of `/proc`'s counters (`USER_HZ`: 100 on Linux).
const TICKS_PER_SECOND: u64 = 100;

fn ticks(count: u64) -> Duration {
    Duration::from_millis(count.saturating_mul(1000) / TICKS_PER_SECOND)
}

/// Busy ticks of all CPUs: `/proc/stat`'s `cpu` line, user, nice, system, irq and softirq
/// (not idle, iowait or steal).
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied().unwrap_or(0))
        .sum();
    Some(ticks(busy))
}

/// This process's user and system ticks (`/proc/self/stat`, fields 14 and 15).
fn process_time() -> Option<Duration> {
    let fields = stat_fields("self")?;
    let utime: u64 = fields.get(STAT_UTIME)?.parse().ok()?;
    let stime: u64 = fields.get(STAT_UTIME + 1)?.parse().ok()?;
    Some(ticks(utime + stime))
}

/// Where `utime` (field 14) is in [`stat_fields`], which start at field 3.
const STAT_UTIME: usize = 11;

/// The fields of `/proc/<pid>/stat` after the command (which may hold spaces and
/// parentheses): the state (field 3) first, then the parent's pid (field 4), and so on.
pub fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')?.checked_add(1)?..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::{CpuTime, stat_fields};

    #[test]
    fn stat_fields_start_with_the_state_and_the_parent() {
        let this_thread = stat_fields("thread-self").unwrap();
        assert_eq!(this_thread[0], "R", "this thread is running");
        let this_process = stat_fields("self").unwrap();
        assert_eq!(
            this_process[1],
            std::os::unix::process::parent_id().to_string()
        );
        assert!(stat_fields("0").is_none(), "no process 0 in /proc");
    }

    #[test]
    fn spinning_shows_in_both_clocks() {
        let before = CpuTime::now();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        // Spins until this process has used 300 ms of CPU (however busy the machine is).
        while CpuTime::now().since(before).this_process < std::time::Duration::from_millis(300) {
            assert!(start.elapsed().as_secs() < 60, "no CPU time was counted");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let used = CpuTime::now().since(before);
        assert!(used.machine * 5 >= used.this_process * 4, "{used:?}");
    }
}
