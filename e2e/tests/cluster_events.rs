//! Kubernetes events of a kubelet joined to a cluster (the e2e test API server), read as
//! a user reads them: `kubectl get events --field-selector involvedObject.name=<pod>`.
//! Reasons, messages, the involved object (with the container's field path), the
//! source, the order, and the aggregation of repeated events into one counted Event.
//! Nothing is pulled: busybox is preloaded and pods use IfNotPresent or Never. Runs
//! against a real API server too (`E2E_KUBECONFIG`, see `e2e::cluster`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use e2e::cluster::{Cluster, join, node_name};
use e2e::kubelet::KubeletNode;
use serde_json::{Value, json};

type R<T = ()> = anyhow::Result<T>;

const LONG: Duration = Duration::from_secs(90);

/// The control plane (the test API server, or E2E_KUBECONFIG's) and a kubelet joined
/// to it.
struct Env {
    kubelet: KubeletNode,
    cluster: Cluster,
}

impl Env {
    async fn start() -> R<Self> {
        let cluster = Cluster::start()?;
        let kubelet = join(&cluster, &[]).await?;
        Ok(Self { kubelet, cluster })
    }

    /// A pod name of this run's own (a real cluster keeps Events for an hour).
    fn name(prefix: &str) -> String {
        format!("{prefix}-{}", std::process::id())
    }

    /// The pod's UID once the API server has it.
    fn uid(&self, pod: &str) -> R<String> {
        let p = self
            .cluster
            .get(&["pod", "-n", "default", pod])?
            .context("pod")?;
        p["metadata"]["uid"]
            .as_str()
            .map(String::from)
            .context("pod without a uid")
    }

    /// Deletes the pod without waiting (the end of a test).
    fn delete(&self, pod: &str) -> R {
        let args = ["delete", "pod", "-n", "default", pod, "--wait=false"];
        self.cluster.kubectl(&args, None).map(drop)
    }

    /// The Events about a pod, in the order they were first recorded (their names end
    /// in the recording time, in hex nanoseconds).
    fn events(&self, pod: &str) -> R<Vec<Value>> {
        let selector = format!("involvedObject.name={pod}");
        let args = ["events", "-n", "default", "--field-selector", &selector];
        let list = self.cluster.get(&args)?.unwrap_or_default();
        let mut items = list["items"].as_array().cloned().unwrap_or_default();
        items.sort_by_key(recorded_at);
        Ok(items)
    }

    /// Polls (bounded) the pod's Events until `pred` holds.
    async fn wait_events(
        &self,
        pod: &str,
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> R<Vec<Value>> {
        let deadline = Instant::now() + LONG;
        loop {
            let events = self.events(pod)?;
            if pred(&events) {
                return Ok(events);
            }
            if Instant::now() > deadline {
                bail!(
                    "events of {pod}: no {what} after {LONG:?}: {}\nkubelet log:\n{}",
                    summary(&events),
                    self.kubelet.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The recording time in an Event's name (`<pod>.<hex nanoseconds>`).
fn recorded_at(e: &Value) -> u128 {
    e["metadata"]["name"]
        .as_str()
        .and_then(|n| n.rsplit_once('.'))
        .and_then(|(_, hex)| u128::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

fn reason(e: &Value) -> &str {
    e["reason"].as_str().unwrap_or_default()
}

fn with_reason<'a>(events: &'a [Value], r: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| reason(e) == r).collect()
}

fn count(e: &Value) -> i64 {
    e["count"].as_i64().unwrap_or(0)
}

fn summary(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} x{} {:?}",
                reason(e),
                count(e),
                e["message"].as_str().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A pod on the test node with one container `app`; `container` adds to it.
fn pod(name: &str, container: Value) -> Value {
    let mut c = json!({
        "name": "app",
        "image": e2e::pods::BUSYBOX,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", "exec sleep 1000"],
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), container.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node_name(),
            "terminationGracePeriodSeconds": 2,
            "containers": [c]
        }
    })
}

#[tokio::test]
async fn a_started_pod_reports_pulled_created_started_then_killing_when_deleted() -> R {
    let env = Env::start().await?;
    let name = &Env::name("ev-start");
    env.cluster.apply(&pod(name, json!({})))?;
    let events = env
        .wait_events(name, "Started", |e| !with_reason(e, "Started").is_empty())
        .await?;
    let uid = env.uid(name)?;
    let reasons: Vec<&str> = events.iter().map(reason).collect();
    assert_eq!(
        reasons,
        ["Pulled", "Created", "Started"],
        "{}",
        summary(&events)
    );
    let messages: Vec<&str> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        [
            "Container image \"docker.io/library/busybox:latest\" already present on machine",
            "Created container: app",
            "Started container app",
        ]
    );
    for e in &events {
        let o = &e["involvedObject"];
        assert_eq!(o["kind"], "Pod", "{e}");
        assert_eq!(o["apiVersion"], "v1", "{e}");
        assert_eq!(o["namespace"], "default", "{e}");
        assert_eq!(o["name"], name.as_str(), "{e}");
        assert_eq!(o["uid"], uid.as_str(), "{e}");
        assert_eq!(o["fieldPath"], "spec.containers{app}", "{e}");
        assert_eq!(e["type"], "Normal", "{e}");
        assert_eq!(e["source"]["component"], "kubelet", "{e}");
        assert_eq!(e["source"]["host"], node_name().as_str(), "{e}");
        assert_eq!(e["reportingComponent"], "kubelet", "{e}");
        assert_eq!(e["reportingInstance"], node_name().as_str(), "{e}");
        assert_eq!(count(e), 1, "{e}");
        assert!(e["firstTimestamp"].is_string() && e["lastTimestamp"].is_string());
        assert!(
            e["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{name}."))),
            "{e}"
        );
    }

    // Deleted: its container is stopped, and says so.
    env.delete(name)?;
    let events = env
        .wait_events(name, "Killing", |e| !with_reason(e, "Killing").is_empty())
        .await?;
    let killing = with_reason(&events, "Killing");
    assert_eq!(killing[0]["message"], "Stopping container app");
    assert_eq!(killing[0]["type"], "Normal");
    assert_eq!(
        killing[0]["involvedObject"]["fieldPath"],
        "spec.containers{app}"
    );
    assert_eq!(
        events.last().map(reason),
        Some("Killing"),
        "{}",
        summary(&events)
    );
    Ok(())
}

#[tokio::test]
async fn a_crashing_container_gives_one_back_off_event_counted_again_and_again() -> R {
    let env = Env::start().await?;
    let name = &Env::name("ev-crash");
    env.cluster
        .apply(&pod(name, json!({"command": ["sh", "-c", "exit 1"]})))?;
    let events = env
        .wait_events(name, "BackOff counted twice", |e| {
            with_reason(e, "BackOff").iter().any(|b| count(b) >= 2)
        })
        .await?;
    let uid = env.uid(name)?;
    let back_off = with_reason(&events, "BackOff");
    assert_eq!(
        back_off.len(),
        1,
        "one Event, counted: {}",
        summary(&events)
    );
    let b = back_off[0];
    assert_eq!(b["type"], "Warning");
    assert_eq!(
        b["message"].as_str(),
        Some(
            format!("Back-off restarting failed container app in pod {name}_default({uid})")
                .as_str()
        )
    );
    assert_eq!(b["involvedObject"]["fieldPath"], "spec.containers{app}");
    assert_ne!(b["firstTimestamp"], Value::Null);
    // Every restart is the same Started event, counted.
    let started = with_reason(&events, "Started");
    assert_eq!(started.len(), 1, "{}", summary(&events));
    assert!(count(started[0]) >= 2, "{}", summary(&events));
    env.delete(name)?;
    Ok(())
}

#[tokio::test]
async fn a_failing_liveness_probe_gives_unhealthy_then_killing() -> R {
    let env = Env::start().await?;
    let name = &Env::name("ev-liveness");
    let probe = json!({"livenessProbe": {
        "exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 2
    }});
    env.cluster.apply(&pod(name, probe))?;
    let events = env
        .wait_events(name, "Killing", |e| !with_reason(e, "Killing").is_empty())
        .await?;
    let unhealthy = with_reason(&events, "Unhealthy");
    assert_eq!(unhealthy.len(), 1, "{}", summary(&events));
    let u = unhealthy[0];
    assert_eq!(u["type"], "Warning");
    assert!(
        u["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Liveness probe failed: ")),
        "{u}"
    );
    assert!(count(u) >= 2, "each failure counted: {u}");
    assert_eq!(u["involvedObject"]["fieldPath"], "spec.containers{app}");
    let killing = with_reason(&events, "Killing");
    assert_eq!(
        killing[0]["message"],
        "Container app failed liveness probe, will be restarted"
    );
    assert!(
        recorded_at(u) < recorded_at(killing[0]),
        "Unhealthy before Killing: {}",
        summary(&events)
    );
    env.delete(name)?;
    Ok(())
}

#[tokio::test]
async fn an_absent_image_with_pull_policy_never_gives_err_image_never_pull() -> R {
    let env = Env::start().await?;
    let name = &Env::name("ev-never");
    let image = "docker.io/library/nodelet-e2e-absent:never";
    env.cluster.apply(&pod(
        name,
        json!({"image": image, "imagePullPolicy": "Never"}),
    ))?;
    let events = env
        .wait_events(name, "ErrImageNeverPull and Failed", |e| {
            !with_reason(e, "ErrImageNeverPull").is_empty() && !with_reason(e, "Failed").is_empty()
        })
        .await?;
    let never = with_reason(&events, "ErrImageNeverPull");
    assert_eq!(never[0]["type"], "Warning");
    assert_eq!(
        never[0]["message"].as_str(),
        Some(
            format!("Container image \"{image}\" is not present with pull policy of Never")
                .as_str()
        )
    );
    assert_eq!(
        never[0]["involvedObject"]["fieldPath"],
        "spec.containers{app}"
    );
    let failed = with_reason(&events, "Failed");
    assert_eq!(failed[0]["message"], "Error: ErrImageNeverPull");
    // Nothing was pulled, created or started.
    for r in ["Pulling", "Pulled", "Created", "Started"] {
        assert!(with_reason(&events, r).is_empty(), "{}", summary(&events));
    }
    env.delete(name)?;
    Ok(())
}
