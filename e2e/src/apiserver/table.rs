//! `meta.k8s.io/v1` Tables: what `kubectl get` asks for (`Accept: ...;as=Table;...`) and
//! prints. Columns and cells follow the real server's printers for the kinds a node
//! test shows (pods, nodes, namespaces, events, leases, ...); other kinds get the
//! default `Name`/`Created At` table.

use serde_json::{Value, json};

use super::resources::Resource;

/// What each row's `object` holds (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeObject {
    None,
    #[default]
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: &str) -> Self {
        match s {
            "None" => Self::None,
            "Object" => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// The Table version an `Accept` header asks for, if it asks for a Table.
pub fn requested(accept: &str) -> Option<&'static str> {
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        if !params.contains(&"as=Table") {
            continue;
        }
        if params.contains(&"g=meta.k8s.io") || !params.iter().any(|p| p.starts_with("g=")) {
            if params.contains(&"v=v1beta1") {
                return Some("v1beta1");
            }
            return Some("v1");
        }
    }
    None
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column {
        name,
        kind,
        format: "",
        priority,
        description,
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace.",
};
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns(res: &Resource) -> Vec<Column> {
    match (res.group, res.plural) {
        ("", "pods") => vec![
            NAME,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            col(
                "IP",
                "string",
                1,
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            ),
            col(
                "Node",
                "string",
                1,
                "NodeName is a request to schedule this pod onto a specific node.",
            ),
            col(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            col(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        ("", "nodes") => vec![
            NAME,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            AGE,
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            col(
                "Internal-IP",
                "string",
                1,
                "List of internal IPs for the node.",
            ),
            col(
                "External-IP",
                "string",
                1,
                "List of external IPs for this node.",
            ),
            col(
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
            ),
            col(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
            ),
            col(
                "Container-Runtime",
                "string",
                1,
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
            ),
        ],
        ("", "namespaces") => vec![
            NAME,
            col("Status", "string", 0, "The status of the namespace"),
            AGE,
        ],
        ("", "configmaps") => vec![
            NAME,
            col(
                "Data",
                "integer",
                0,
                "Data contains the configuration data.",
            ),
            AGE,
        ],
        ("", "secrets") => vec![
            NAME,
            col(
                "Type",
                "string",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ),
            col("Data", "integer", 0, "Data contains the secret data."),
            AGE,
        ],
        ("", "services") => vec![
            NAME,
            col(
                "Type",
                "string",
                0,
                "type determines how the Service is exposed.",
            ),
            col(
                "Cluster-IP",
                "string",
                0,
                "clusterIP is the IP address of the service.",
            ),
            col(
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            col(
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service.",
            ),
            AGE,
            col(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        ("", "events") => vec![
            col(
                "Last Seen",
                "string",
                0,
                "Time when last occurrence of this event was recorded.",
            ),
            col("Type", "string", 0, "Type of this event (Normal, Warning)."),
            col(
                "Reason",
                "string",
                0,
                "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
            ),
            col(
                "Object",
                "string",
                0,
                "The object that this event is about.",
            ),
            col(
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
            col(
                "Subobject",
                "string",
                1,
                "The specific part of the object the event is about.",
            ),
            col("Source", "string", 1, "The component reporting this event."),
            col(
                "First Seen",
                "string",
                1,
                "The time at which the event was first recorded.",
            ),
            col(
                "Count",
                "string",
                1,
                "The number of times this event has occurred.",
            ),
            Column {
                priority: 1,
                ..NAME
            },
        ],
        ("coordination.k8s.io", "leases") => vec![
            NAME,
            col("Holder", "string", 0, "The holder of the lease."),
            AGE,
        ],
        ("apps", "deployments") => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
        ],
        ("certificates.k8s.io", "certificatesigningrequests") => vec![
            NAME,
            AGE,
            col(
                "SignerName",
                "string",
                0,
                "Only the specified signer can sign this request.",
            ),
            col(
                "Requestor",
                "string",
                0,
                "Name of the user requesting the certificate.",
            ),
            col(
                "RequestedDuration",
                "string",
                0,
                "Requested certificate duration.",
            ),
            col(
                "Condition",
                "string",
                0,
                "The condition of the certificate signing request.",
            ),
        ],
        ("node.k8s.io", "runtimeclasses") => vec![
            NAME,
            col(
                "Handler",
                "string",
                0,
                "The name of the underlying runtime and configuration.",
            ),
            AGE,
        ],
        _ => vec![
            NAME,
            Column {
                name: "Created At",
                kind: "date",
                format: "",
                priority: 0,
                description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
            },
        ],
    }
}

/// How long ago `ts` (RFC 3339) was, the way kubectl shows ages (`5s`, `3m20s`, `2d4h`).
pub fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds();
    human_duration(secs)
}

/// A duration in seconds, in the coarsening units kubectl uses.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let (minutes, hours, days) = (secs / 60, secs / 3600, secs / 86400);
    let with = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    if minutes < 10 {
        with(minutes, "m", secs % 60, "s")
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        with(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        with(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        with(days / 365, "y", days % 365, "d")
    } else {
        format!("{}y", days / 365)
    }
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn or_none(v: String) -> String {
    if v.is_empty() { "<none>".into() } else { v }
}

fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(pod, "/status/phase").to_string();
    }
    let empty = Vec::new();
    let statuses = |p: &str| {
        pod.pointer(p)
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .clone()
    };
    let inits = statuses("/status/initContainerStatuses");
    let init_count = pod
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let code = c
            .pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64);
        if code == Some(0) {
            continue;
        }
        initializing = true;
        let waiting = s(c, "/state/waiting/reason");
        reason = if code.is_some() {
            let r = s(c, "/state/terminated/reason");
            let sig = c
                .pointer("/state/terminated/signal")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            match (r.is_empty(), sig) {
                (false, _) => format!("Init:{r}"),
                (true, 0) => format!("Init:ExitCode:{}", code.unwrap_or_default()),
                (true, sig) => format!("Init:Signal:{sig}"),
            }
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{init_count}")
        };
        break;
    }
    if !initializing {
        let mut running = false;
        for c in statuses("/status/containerStatuses").iter().rev() {
            let waiting = s(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let r = s(t, "/reason");
                let sig = t.get("signal").and_then(Value::as_i64).unwrap_or(0);
                let code = t.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
                reason = match (r.is_empty(), sig) {
                    (false, _) => r.to_string(),
                    (true, 0) => format!("ExitCode:{code}"),
                    (true, sig) => format!("Signal:{sig}"),
                };
            } else if c.pointer("/state/running").is_some()
                && c.get("ready") == Some(&Value::Bool(true))
            {
                running = true;
            }
        }
        if reason == "Completed" && running {
            let ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            reason = if ready {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let empty = Vec::new();
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let inits = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    let restarts: i64 = statuses
        .iter()
        .chain(inits)
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    let gates = pod
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let gates = if gates == 0 {
        "<none>".to_string()
    } else {
        let true_gates = pod
            .pointer("/spec/readinessGates")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .iter()
            .filter(|g| {
                pod.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                    })
            })
            .count();
        format!("{true_gates}/{gates}")
    };
    vec![
        json!(s(pod, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(pod_status(pod)),
        json!(restarts.to_string()),
        json!(age(pod
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(or_none(s(pod, "/status/podIP").to_string())),
        json!(or_none(s(pod, "/spec/nodeName").to_string())),
        json!(or_none(s(pod, "/status/nominatedNodeName").to_string())),
        json!(gates),
    ]
}

fn node_cells(node: &Value) -> Vec<Value> {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| match c["status"].as_str() {
            Some("True") => "Ready",
            Some("False") => "NotReady",
            _ => "Unknown",
        })
        .unwrap_or("Unknown");
    let mut status = ready.to_string();
    if node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                        Some(role.to_string())
                    } else if k == "kubernetes.io/role" {
                        v.as_str().map(str::to_string)
                    } else {
                        None
                    }
                })
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let address = |kind: &str| {
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == kind))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = |f: &str| or_none(s(node, &format!("/status/nodeInfo/{f}")).to_string());
    vec![
        json!(s(node, "/metadata/name")),
        json!(status),
        json!(or_none(roles.join(","))),
        json!(age(node
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(s(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

fn count(obj: &Value, fields: &[&str]) -> usize {
    fields
        .iter()
        .filter_map(|f| obj.get(*f).and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}

fn service_cells(svc: &Value) -> Vec<Value> {
    let ports: Vec<String> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let port = p["port"].as_i64().unwrap_or_default();
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(np) => format!("{port}:{np}/{proto}"),
                        None => format!("{port}/{proto}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let external: Vec<&str> = svc
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let selector: Vec<String> = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    vec![
        json!(s(svc, "/metadata/name")),
        json!(s(svc, "/spec/type")),
        json!(or_none(s(svc, "/spec/clusterIP").to_string())),
        json!(or_none(external.join(","))),
        json!(or_none(ports.join(","))),
        json!(age(svc
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(or_none(selector.join(","))),
    ]
}

fn event_cells(e: &Value) -> Vec<Value> {
    let last = [
        s(e, "/lastTimestamp"),
        s(e, "/eventTime"),
        s(e, "/metadata/creationTimestamp"),
    ]
    .into_iter()
    .find(|t| !t.is_empty());
    let first = [s(e, "/firstTimestamp"), s(e, "/eventTime")]
        .into_iter()
        .find(|t| !t.is_empty());
    let object = format!(
        "{}/{}",
        s(e, "/involvedObject/kind").to_lowercase(),
        s(e, "/involvedObject/name")
    );
    let source = match (s(e, "/source/component"), s(e, "/source/host")) {
        ("", _) => s(e, "/reportingComponent").to_string(),
        (c, "") => c.to_string(),
        (c, h) => format!("{c}, {h}"),
    };
    vec![
        json!(age(last)),
        json!(s(e, "/type")),
        json!(s(e, "/reason")),
        json!(object),
        json!(s(e, "/message").trim()),
        json!(s(e, "/involvedObject/fieldPath")),
        json!(source),
        json!(age(first)),
        json!(
            e.get("count")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .to_string()
        ),
        json!(s(e, "/metadata/name")),
    ]
}

fn csr_cells(csr: &Value) -> Vec<Value> {
    let mut conditions: Vec<&str> = csr
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter(|c| c["status"] != "False")
                .filter_map(|c| c["type"].as_str())
                .collect()
        })
        .unwrap_or_default();
    if conditions.is_empty() {
        conditions.push("Pending");
    }
    if csr
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        conditions.push("Issued");
    }
    let duration = csr
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .map(human_duration)
        .unwrap_or_else(|| "<none>".into());
    vec![
        json!(s(csr, "/metadata/name")),
        json!(age(csr
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str))),
        json!(s(csr, "/spec/signerName")),
        json!(s(csr, "/spec/username")),
        json!(duration),
        json!(conditions.join(",")),
    ]
}

fn cells(res: &Resource, obj: &Value) -> Vec<Value> {
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    let name = json!(s(obj, "/metadata/name"));
    match (res.group, res.plural) {
        ("", "pods") => pod_cells(obj),
        ("", "nodes") => node_cells(obj),
        ("", "namespaces") => vec![name, json!(s(obj, "/status/phase")), json!(age(created))],
        ("", "configmaps") => vec![
            name,
            json!(count(obj, &["data", "binaryData"])),
            json!(age(created)),
        ],
        ("", "secrets") => vec![
            name,
            json!(s(obj, "/type")),
            json!(count(obj, &["data"])),
            json!(age(created)),
        ],
        ("", "services") => service_cells(obj),
        ("", "events") => event_cells(obj),
        ("coordination.k8s.io", "leases") => {
            vec![
                name,
                json!(s(obj, "/spec/holderIdentity")),
                json!(age(created)),
            ]
        }
        ("apps", "deployments") => {
            let n = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n("/status/readyReplicas"),
                    n("/spec/replicas")
                )),
                json!(n("/status/updatedReplicas")),
                json!(n("/status/availableReplicas")),
                json!(age(created)),
            ]
        }
        ("certificates.k8s.io", "certificatesigningrequests") => csr_cells(obj),
        ("node.k8s.io", "runtimeclasses") => {
            vec![name, json!(s(obj, "/handler")), json!(age(created))]
        }
        _ => vec![name, json!(created)],
    }
}

/// A Table of `items` (objects of `res`) at `version` (`v1` or `v1beta1`).
pub fn convert(
    res: &Resource,
    items: &[Value],
    rv: Option<u64>,
    include: IncludeObject,
    version: &str,
) -> Value {
    let columns: Vec<Value> = columns(res)
        .into_iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(res, obj)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": format!("meta.k8s.io/{version}"),
                        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                    });
                }
                IncludeObject::Object => {
                    let mut full = obj.clone();
                    full["kind"] = json!(res.kind);
                    full["apiVersion"] = json!(res.api_version());
                    row["object"] = full;
                }
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = rv {
        metadata["resourceVersion"] = json!(rv.to_string());
    }
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{version}"),
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::super::resources::{Gvr, find};
    use super::*;

    #[test]
    fn accept_headers() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(requested(kubectl), Some("v1"));
        assert_eq!(requested("application/json"), None);
        assert_eq!(
            requested("application/json;as=Table;v=v1beta1;g=meta.k8s.io"),
            Some("v1beta1")
        );
    }

    #[test]
    fn durations() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (9 * 3600, "9h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn pod_rows() {
        let pods = find(Gvr::PODS).expect("served");
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]},
        });
        let t = convert(pods, &[pod], Some(7), IncludeObject::Metadata, "v1");
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(cells[6], "n1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }
}
