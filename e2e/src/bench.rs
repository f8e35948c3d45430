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
        "{label:<34} mean {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   (n={})",
        mean.as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    );
}

/// Resident set size of a process in KiB, from /proc (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
