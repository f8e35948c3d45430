//! CrashLoopBackOff: how long a container that exited waits before its next start.
//!
//! As the upstream kubelet does it: the first exit restarts at once, the second after
//! 10 s, and every further exit doubles the delay up to 5 min. It starts over (an
//! immediate restart) once the container has run well for 10 min. Only the run counts:
//! the time spent waiting out the backoff is not good running time, so a container that
//! crashes every few minutes stays at the 5 min cap.
//!
//! Pure: the pod worker keeps one [`Backoff`] per container name, folds every exit it
//! observes in with [`BackoffPolicy::record_exits`], and hands the map to the planner,
//! which holds back starts until `last_finish + delay`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::{Backoff, Observed, plan};

/// The delays of the crash-loop backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay after the second exit (the first restarts at once).
    pub initial: Duration,
    /// Upper bound of the doubling.
    pub max: Duration,
    /// A run this long starts over.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffPolicy {
    /// The backoff after a container exited at `finished_at` having run for `ran_for`,
    /// given the backoff of its previous exit.
    pub fn next(
        &self,
        prev: Option<Backoff>,
        finished_at: SystemTime,
        ran_for: Duration,
    ) -> Backoff {
        let delay = match prev {
            Some(prev) if ran_for < self.reset_after => {
                prev.delay.saturating_mul(2).max(self.initial).min(self.max)
            }
            _ => Duration::ZERO,
        };
        Backoff {
            last_finish: finished_at,
            delay,
        }
    }

    /// Folds the newest exit of every container of `observed` into `backoff` (keyed by
    /// container name). An exit already recorded (same or older finish time) changes
    /// nothing, so this can run before every plan.
    pub fn record_exits(&self, backoff: &mut HashMap<String, Backoff>, observed: &Observed) {
        let mut newest: HashMap<&str, (SystemTime, Duration)> = HashMap::new();
        for c in &observed.containers {
            if c.state() != proto::v1::ContainerState::ContainerExited {
                continue;
            }
            let Some(finished) = plan::system_time(c.finished_at) else {
                continue;
            };
            let ran_for = plan::system_time(c.started_at)
                .and_then(|started| finished.duration_since(started).ok())
                .unwrap_or_default();
            let name = plan::container_name(c);
            match newest.get(name) {
                Some((seen, _)) if *seen >= finished => {}
                _ => {
                    newest.insert(name, (finished, ran_for));
                }
            }
        }
        for (name, (finished, ran_for)) in newest {
            let prev = backoff.get(name).copied();
            if prev.is_some_and(|p| p.last_finish >= finished) {
                continue;
            }
            backoff.insert(name.to_owned(), self.next(prev, finished, ran_for));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn next_delay() {
        let p = BackoffPolicy::default();
        let prev = |finish: u64, delay: u64| {
            Some(Backoff {
                last_finish: at(finish),
                delay: secs(delay),
            })
        };
        // (name, previous, finished at, ran for, expected delay)
        let cases: Vec<(&str, Option<Backoff>, u64, u64, u64)> = vec![
            ("first exit restarts at once", None, 1000, 1, 0),
            (
                "second exit waits the initial delay",
                prev(1000, 0),
                1001,
                1,
                10,
            ),
            ("third exit doubles", prev(1001, 10), 1012, 1, 20),
            ("fourth exit doubles", prev(1012, 20), 1033, 1, 40),
            ("160 s doubles to the cap", prev(2000, 160), 2161, 1, 300),
            ("stays at the cap", prev(2000, 300), 2301, 1, 300),
            ("ran 10 min resets", prev(2000, 300), 2900, 600, 0),
            (
                "ran just under 10 min keeps doubling",
                prev(2000, 40),
                2599,
                599,
                80,
            ),
            (
                "crashing every 6 min (5 min backoff + 1 min run) stays at the cap",
                prev(1000, 300),
                1360,
                60,
                300,
            ),
            (
                "an exit long after the previous one, after a short run, doubles",
                prev(1000, 40),
                5000,
                5,
                80,
            ),
            (
                "finish before previous (clock step) doubles",
                prev(1000, 10),
                900,
                1,
                20,
            ),
        ];
        for (name, prev, finished, ran, want) in cases {
            let got = p.next(prev, at(finished), secs(ran));
            assert_eq!(got.delay, secs(want), "{name}");
            assert_eq!(got.last_finish, at(finished), "{name}");
        }
    }

    #[test]
    fn custom_policy_caps_initial() {
        let p = BackoffPolicy {
            initial: secs(10),
            max: secs(5),
            reset_after: secs(60),
        };
        let first = p.next(None, at(1), secs(0));
        assert_eq!(first.delay, secs(0));
        let second = p.next(Some(first), at(2), secs(0));
        assert_eq!(second.delay, secs(5));
        assert_eq!(p.next(Some(second), at(3), secs(0)).delay, secs(5));
    }

    fn exited(name: &str, started: u64, finished: u64) -> v1::ContainerStatus {
        v1::ContainerStatus {
            id: format!("{name}-{finished}"),
            metadata: Some(v1::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            state: v1::ContainerState::ContainerExited as i32,
            started_at: (started * 1_000_000_000) as i64,
            finished_at: (finished * 1_000_000_000) as i64,
            ..Default::default()
        }
    }

    #[test]
    fn record_exits() {
        let p = BackoffPolicy::default();
        let running = v1::ContainerStatus {
            id: "r".into(),
            metadata: Some(v1::ContainerMetadata {
                name: "db".into(),
                attempt: 0,
            }),
            state: v1::ContainerState::ContainerRunning as i32,
            ..Default::default()
        };
        let observed = Observed {
            sandboxes: vec![],
            containers: vec![
                exited("web", 100, 101),
                exited("web", 111, 112),
                exited("job", 0, 50),
                running,
            ],
        };
        let mut map = HashMap::new();
        map.insert(
            "web".to_owned(),
            Backoff {
                last_finish: at(101),
                delay: secs(10),
            },
        );
        p.record_exits(&mut map, &observed);
        assert_eq!(
            map.get("web"),
            Some(&Backoff {
                last_finish: at(112),
                delay: secs(20)
            }),
            "newest exit of web doubles the recorded one"
        );
        assert_eq!(
            map.get("job"),
            Some(&Backoff {
                last_finish: at(50),
                delay: secs(0)
            }),
            "first exit of job restarts at once"
        );
        assert_eq!(map.get("db"), None, "running containers have no backoff");

        // Folding the same observation again changes nothing.
        let before = map.clone();
        p.record_exits(&mut map, &observed);
        assert_eq!(map, before);
    }
}
