//! Printing benchmark numbers.

use std::time::Duration;

/// One line: mean, min and max of `v` (sorted in place).
pub fn stats(label: &str, v: &mut [Duration]) {
    if v.is_empty() {
        println!("{label:<34} no samples");
        return;
    }
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "{label:<34} mean {:>8.1} ms   p50 {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   (n={})",
        mean.as_secs_f64() * 1e3,
        v[v.len() / 2].as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    );
}

/// A `Key: N kB` field of a /proc file of a process, in KiB (0 if the process is gone).
fn proc_kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident set size of a process in KiB, from /proc (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "status", "VmRSS")
}

/// Proportional set size of a process in KiB (shared pages divided among the processes
/// sharing them), from /proc (0 if it is gone): what one more such process costs.
pub fn pss_kib(pid: u32) -> u64 {
    proc_kib(pid, "smaps_rollup", "Pss")
}

/// CPU time of a process, in ms: its own (user + system), and that of the children it
/// has reaped (for the agent: runc and the CNI plugins it ran).
pub fn process_cpu_ms(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i - 4).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    let ms = |ticks: u64| ticks * 1000 / hz;
    (ms(at(14) + at(15)), ms(at(16) + at(17)))
}

/// The machine's CPU time so far, from the `cpu` line of /proc/stat (clock ticks).
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = text
            .lines()
            .find_map(|l| l.strip_prefix("cpu "))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is in user).
        let total: u64 = ticks.iter().take(8).sum();
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        Self {
            busy: total - idle,
            total,
        }
    }

    /// Share of all CPUs' time that was busy since `earlier`, in percent.
    pub fn busy_percent_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}
