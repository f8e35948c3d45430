//! Pod admission, as the upstream kubelet's lifecycle admit handlers: a pod the
//! scheduler (or someone setting `nodeName` by hand) bound here is run only if the node
//! can take it. Checked in creation order against the pods admitted before it:
//! resources within allocatable (`OutOf<resource>`), the pod count (`OutOfpods`),
//! `nodeSelector` and required node affinity (`NodeAffinity`), `NoExecute` taints the
//! pod does not tolerate (`Taint`), host ports already taken (`NodePorts`), a pod for
//! another node (`NodeName`). A rejected pod is never run: its status says `Failed`
//! with the reason and upstream's message, and it stays rejected.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodStatus, Taint, Toleration,
};

/// What the node offers, fixed while the agent runs.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Allocatable: cpu in millicores, the rest in whole units; `pods` the pod count.
    pub allocatable: BTreeMap<String, i64>,
    /// RuntimeClass name → its handler, as the cluster has them.
    pub runtime_classes: BTreeMap<String, String>,
    /// The handlers the container runtime offers (its `Status`).
    pub runtime_handlers: BTreeSet<String>,
}

/// Why a pod may not run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

impl Rejection {
    fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            message: format!("Pod was rejected: {}", message.into()),
        }
    }

    /// The status a rejected pod gets.
    pub fn status(&self) -> PodStatus {
        PodStatus {
            phase: Some("Failed".into()),
            reason: Some(self.reason.clone()),
            message: Some(self.message.clone()),
            ..Default::default()
        }
    }
}

fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|h| *h > 0)?;
            Some((
                p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                hp,
            ))
        })
        .collect()
}

fn ports_conflict(a: &(String, String, i32), b: &(String, String, i32)) -> bool {
    let any = |ip: &str| ip == "0.0.0.0" || ip == "::" || ip.is_empty();
    a.2 == b.2 && a.1 == b.1 && (a.0 == b.0 || any(&a.0) || any(&b.0))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(t: &NodeSelectorTerm, node: &NodeFacts) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or_default();
    let fields = t.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false; // an empty term matches nothing, as upstream
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement_matches(r, v)
        })
}

fn affinity_matches(pod: &Pod, node: &NodeFacts) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok =
        required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, node)));
    selector_ok && affinity_ok
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok =
        t.key.as_deref().is_none_or(|k| k.is_empty()) || t.key.as_deref() == Some(&taint.key);
    let value_ok = match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        _ => t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    };
    // An empty key with Exists tolerates everything.
    effect_ok && key_ok && value_ok
}

/// The admission state: who was admitted, who was rejected, in the order they came.
#[derive(Debug, Default)]
pub struct Admission {
    pub admitted: BTreeSet<String>,
    pub rejected: HashMap<String, Rejection>,
}

impl Admission {
    /// Decides the pods not decided yet (oldest first) against those admitted and still
    /// present; forgets pods that are gone. Returns the pods that may run.
    pub fn admit(
        &mut self,
        pods: &BTreeMap<String, Pod>,
        node: &NodeFacts,
    ) -> BTreeMap<String, Pod> {
        self.admitted.retain(|u| pods.contains_key(u));
        self.rejected.retain(|u, _| pods.contains_key(u));
        let mut new: Vec<(&String, &Pod)> = pods
            .iter()
            .filter(|(u, _)| !self.admitted.contains(*u) && !self.rejected.contains_key(*u))
            .collect();
        new.sort_by(|a, b| {
            let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            t(a.1).cmp(&t(b.1)).then(a.0.cmp(b.0))
        });
        for (uid, pod) in new {
            let others: Vec<&Pod> = self.admitted.iter().filter_map(|u| pods.get(u)).collect();
            match check(pod, &others, node) {
                Ok(()) => {
                    self.admitted.insert(uid.clone());
                }
                Err(r) => {
                    tracing::warn!(pod = %crate::api_pods::key(pod), reason = %r.reason, message = %r.message, "pod rejected");
                    self.rejected.insert(uid.clone(), r);
                }
            }
        }
        pods.iter()
            .filter(|(u, _)| self.admitted.contains(*u))
            .map(|(u, p)| (u.clone(), with_handler(p.clone(), node)))
            .collect()
    }
}

/// The engine names the runtime handler by `runtimeClassName`: for a pod from the API
/// that is the RuntimeClass's handler.
fn with_handler(mut pod: Pod, node: &NodeFacts) -> Pod {
    if let Some(spec) = pod.spec.as_mut()
        && let Some(class) = spec.runtime_class_name.as_ref()
        && let Some(handler) = node.runtime_classes.get(class)
    {
        spec.runtime_class_name = Some(handler.clone());
    }
    pod
}

/// Whether `pod` may run beside `others` (the admitted ones) on `node`.
pub fn check(pod: &Pod, others: &[&Pod], node: &NodeFacts) -> Result<(), Rejection> {
    let spec = pod.spec.clone().unwrap_or_default();
    if let Some(n) = spec.node_name.as_deref()
        && n != node.name
    {
        return Err(Rejection::new(
            "NodeName",
            format!(
                "Predicate NodeName failed: pod is for node {n:?}, not {:?}",
                node.name
            ),
        ));
    }
    if !affinity_matches(pod, node) {
        return Err(Rejection::new(
            "NodeAffinity",
            "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector",
        ));
    }
    if let Some(class) = spec.runtime_class_name.as_deref() {
        let Some(handler) = node.runtime_classes.get(class) else {
            return Err(Rejection::new(
                "RuntimeClassNotFound",
                format!("RuntimeClass {class:?} not found"),
            ));
        };
        if !node.runtime_handlers.contains(handler) {
            return Err(Rejection::new(
                "RuntimeHandlerNotSupported",
                format!(
                    "RuntimeClass {class:?} names handler {handler:?}, which the container runtime does not offer"
                ),
            ));
        }
    }
    let tolerations = spec.tolerations.unwrap_or_default();
    if let Some(t) = node
        .taints
        .iter()
        .filter(|t| t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|tol| tolerates(tol, taint)))
    {
        return Err(Rejection::new(
            "Taint",
            format!(
                "Predicate TaintToleration failed: node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            ),
        ));
    }
    let taken: Vec<_> = others.iter().flat_map(|p| host_ports(p)).collect();
    if host_ports(pod)
        .iter()
        .any(|p| taken.iter().any(|t| ports_conflict(p, t)))
    {
        return Err(Rejection::new(
            "NodePorts",
            "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports",
        ));
    }
    let max_pods = node.allocatable.get("pods").copied().unwrap_or(110);
    if others.len() as i64 + 1 > max_pods {
        return Err(Rejection::new(
            "OutOfpods",
            format!(
                "Node didn't have enough resource: pods, requested: 1, used: {}, capacity: {max_pods}",
                others.len()
            ),
        ));
    }
    let wanted = pods::translate::pod_requests(pod);
    let mut used: BTreeMap<String, i64> = BTreeMap::new();
    for o in others {
        for (k, v) in pods::translate::pod_requests(o) {
            *used.entry(k).or_default() += v;
        }
    }
    for (res, req) in &wanted {
        if *req == 0 {
            continue;
        }
        // Resources the node does not advertise cannot be checked here except the
        // extended ones (with a `/` in the name): those must be advertised.
        let Some(cap) = node.allocatable.get(res).copied() else {
            if res.contains('/') {
                return Err(Rejection::new(
                    "UnexpectedAdmissionError",
                    format!("Allocate failed due to no resource {res} on the node"),
                ));
            }
            continue;
        };
        let u = used.get(res).copied().unwrap_or(0);
        if u + req > cap {
            return Err(Rejection::new(
                format!("OutOf{res}"),
                format!(
                    "Node didn't have enough resource: {res}, requested: {req}, used: {u}, capacity: {cap}"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            labels: BTreeMap::from([
                ("disk".to_string(), "ssd".to_string()),
                ("cores".to_string(), "8".to_string()),
            ]),
            taints: vec![Taint {
                key: "maintenance".into(),
                value: Some("soon".into()),
                effect: "NoExecute".into(),
                time_added: None,
            }],
            allocatable: BTreeMap::from([
                ("cpu".to_string(), 2000),
                ("memory".to_string(), 1 << 30),
                ("pods".to_string(), 3),
            ]),
            runtime_classes: BTreeMap::from([
                ("fast".to_string(), "crun".to_string()),
                ("vm".to_string(), "kata".to_string()),
            ]),
            runtime_handlers: BTreeSet::from(["runc".to_string(), "crun".to_string()]),
        }
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut spec = serde_json::json!({
            "nodeName": "n1",
            "tolerations": [{"key": "maintenance", "operator": "Exists", "effect": "NoExecute"}],
            "containers": [{"name": "c", "image": "busybox"}]
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p", "uid": "u"}, "spec": spec}),
        )
        .expect("pod")
    }

    fn with_requests(cpu: &str, mem: &str) -> Pod {
        pod(
            serde_json::json!({"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}),
        )
    }

    #[test]
    fn reasons_as_upstream() {
        let n = node();
        let reason = |p: &Pod, others: &[&Pod]| check(p, others, &n).err().map(|r| r.reason);
        assert_eq!(reason(&pod(serde_json::json!({})), &[]), None);
        // Resources: the second 1500m pod does not fit in 2 cores.
        let big = with_requests("1500m", "100Mi");
        assert_eq!(reason(&big, &[&big]).as_deref(), Some("OutOfcpu"));
        let r = check(&big, &[&big], &n).expect_err("cpu");
        assert_eq!(
            r.message,
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 1500, used: 1500, capacity: 2000"
        );
        let mem = with_requests("10m", "2Gi");
        assert_eq!(reason(&mem, &[]).as_deref(), Some("OutOfmemory"));
        let small = pod(serde_json::json!({}));
        assert_eq!(
            reason(&small, &[&small, &small, &small]).as_deref(),
            Some("OutOfpods")
        );
        // Affinity.
        let sel = pod(serde_json::json!({"nodeSelector": {"disk": "hdd"}}));
        assert_eq!(reason(&sel, &[]).as_deref(), Some("NodeAffinity"));
        let ok = pod(
            serde_json::json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]}}}}),
        );
        assert_eq!(reason(&ok, &[]), None);
        let no = pod(
            serde_json::json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}),
        );
        assert_eq!(reason(&no, &[]).as_deref(), Some("NodeAffinity"));
        // Taints: NoExecute must be tolerated.
        let untolerating = pod(serde_json::json!({"tolerations": []}));
        let r = check(&untolerating, &[], &n).expect_err("taint");
        assert_eq!(r.reason, "Taint");
        assert!(r.message.contains("{maintenance: soon}"), "{}", r.message);
        // Host ports.
        let hp = pod(
            serde_json::json!({"containers": [{"name": "c", "image": "busybox",
            "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        assert_eq!(reason(&hp, &[&hp]).as_deref(), Some("NodePorts"));
        let udp = pod(
            serde_json::json!({"containers": [{"name": "c", "image": "busybox",
            "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}),
        );
        assert_eq!(reason(&udp, &[&hp]), None, "another protocol");
        // Another node.
        let other = pod(serde_json::json!({"nodeName": "n2"}));
        assert_eq!(reason(&other, &[]).as_deref(), Some("NodeName"));
        // RuntimeClass: unknown, or a handler the runtime lacks; a known one runs with
        // its handler.
        let rc = |c: &str| pod(serde_json::json!({"runtimeClassName": c}));
        assert_eq!(
            reason(&rc("nope"), &[]).as_deref(),
            Some("RuntimeClassNotFound")
        );
        assert_eq!(
            reason(&rc("vm"), &[]).as_deref(),
            Some("RuntimeHandlerNotSupported")
        );
        assert_eq!(reason(&rc("fast"), &[]), None);
        let mut a = Admission::default();
        let mut fast = rc("fast");
        fast.metadata.uid = Some("f".into());
        let run = a.admit(&BTreeMap::from([("f".to_string(), fast)]), &n);
        assert_eq!(
            run["f"]
                .spec
                .as_ref()
                .and_then(|s| s.runtime_class_name.as_deref()),
            Some("crun")
        );
    }

    #[test]
    fn admission_is_in_creation_order_and_sticks() {
        let n = node();
        let mut a = Admission::default();
        let mk = |uid: &str, ts: i64| {
            let mut p = with_requests("1500m", "10Mi");
            p.metadata.uid = Some(uid.into());
            p.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(ts).expect("ts"),
                ));
            p
        };
        let pods = BTreeMap::from([("b".to_string(), mk("b", 1)), ("a".to_string(), mk("a", 2))]);
        let run = a.admit(&pods, &n);
        assert_eq!(run.keys().collect::<Vec<_>>(), ["b"], "the older one wins");
        assert_eq!(a.rejected["a"].reason, "OutOfcpu");
        // b goes: a stays rejected (as upstream, a rejected pod is not reconsidered).
        let pods = BTreeMap::from([("a".to_string(), mk("a", 2))]);
        assert!(a.admit(&pods, &n).is_empty());
        assert!(a.rejected.contains_key("a"));
        assert!(a.admitted.is_empty());
    }
}
