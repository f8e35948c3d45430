//! Reading cgroup statistics and OOM counters, on cgroup v1 (per-controller
//! hierarchies under /sys/fs/cgroup/NAME) and v2 (one unified hierarchy). Limits are
//! set by the OCI runtime from the bundle; this module only reads.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
}

pub fn layout() -> Layout {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Layout::V2
    } else {
        Layout::V1
    }
}

/// Usage of one cgroup at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    /// Memory usage less inactive file cache, what kubelet evicts on.
    pub working_set_bytes: u64,
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids: u64,
}

fn dir(controller: &str, path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    match layout() {
        Layout::V2 => Path::new(ROOT).join(rel),
        Layout::V1 => Path::new(ROOT).join(controller).join(rel),
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control).
fn keyed(path: &Path) -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Whether the kernel's OOM killer killed a process of this cgroup.
pub fn oom_killed(path: &str) -> bool {
    let counters = match layout() {
        Layout::V2 => keyed(&dir("", path).join("memory.events")),
        Layout::V1 => keyed(&dir("memory", path).join("memory.oom_control")),
    };
    counters.get("oom_kill").copied().unwrap_or(0) > 0
}

/// Current usage, or `None` when the cgroup does not exist (any more).
pub fn usage(path: &str) -> Option<Usage> {
    match layout() {
        Layout::V2 => {
            let d = dir("", path);
            if !d.is_dir() {
                return None;
            }
            let cpu = keyed(&d.join("cpu.stat"));
            let mem = keyed(&d.join("memory.stat"));
            let current = read_u64(&d.join("memory.current")).unwrap_or(0);
            Some(Usage {
                cpu_ns: cpu.get("usage_usec").copied().unwrap_or(0) * 1000,
                memory_bytes: current,
                working_set_bytes: current
                    .saturating_sub(mem.get("inactive_file").copied().unwrap_or(0)),
                rss_bytes: mem.get("anon").copied().unwrap_or(0),
                page_faults: mem.get("pgfault").copied().unwrap_or(0),
                major_page_faults: mem.get("pgmajfault").copied().unwrap_or(0),
                pids: read_u64(&d.join("pids.current")).unwrap_or(0),
            })
        }
        Layout::V1 => {
            let mem_dir = dir("memory", path);
            if !mem_dir.is_dir() {
                return None;
            }
            let mem = keyed(&mem_dir.join("memory.stat"));
            let current = read_u64(&mem_dir.join("memory.usage_in_bytes")).unwrap_or(0);
            Some(Usage {
                cpu_ns: read_u64(&dir("cpuacct", path).join("cpuacct.usage")).unwrap_or(0),
                memory_bytes: current,
                working_set_bytes: current
                    .saturating_sub(mem.get("total_inactive_file").copied().unwrap_or(0)),
                rss_bytes: mem.get("total_rss").copied().unwrap_or(0),
                page_faults: mem.get("total_pgfault").copied().unwrap_or(0),
                major_page_faults: mem.get("total_pgmajfault").copied().unwrap_or(0),
                pids: read_u64(&dir("pids", path).join("pids.current")).unwrap_or(0),
            })
        }
    }
}

/// Removes an (empty) cgroup in every hierarchy: the pod cgroup we created for a
/// sandbox that came without a parent. Missing is fine; a busy cgroup is reported.
pub fn remove(path: &str) -> std::io::Result<()> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    let dirs: Vec<PathBuf> = match layout() {
        Layout::V2 => vec![Path::new(ROOT).join(rel)],
        Layout::V1 => std::fs::read_dir(ROOT)?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path().join(rel))
            .collect(),
    };
    for d in dirs {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files() {
        let tmp = tempfile::NamedTempFile::new().ok();
        let Some(tmp) = tmp else { return };
        let _ = std::fs::write(
            tmp.path(),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\nbad\n",
        );
        let k = keyed(tmp.path());
        assert_eq!(k.get("oom_kill"), Some(&2));
        assert_eq!(k.len(), 3);
    }

    #[test]
    fn missing_cgroup_has_no_usage() {
        assert_eq!(usage("/nodelet-no-such-cgroup/x"), None);
        assert!(!oom_killed("/nodelet-no-such-cgroup/x"));
    }
}
