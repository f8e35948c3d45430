//! The three patch formats a kubelet and kubectl send: JSON merge patch (RFC 7386),
//! strategic merge patch, and JSON patch (RFC 6902). Server-side apply is not served.
//!
//! Strategic merge patch follows `k8s.io/apimachinery/pkg/util/strategicpatch`: maps
//! merge, `null` deletes a key, and a list is replaced unless the Go type declares a
//! patch strategy for it — merged by a key (pod `conditions` by `type`, `containers` by
//! `name`, `podIPs` by `ip`, node `addresses` by `type`, ...) or merged as a set of
//! primitives (`finalizers`). The table is [`list_strategy`]; lists it does not name are
//! atomic, as upstream (`containerStatuses` is one: a patch replaces the whole list).
//! Directives: `$patch: replace|delete` on maps and list elements, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>`; `$setElementOrder/<field>` is accepted and ignored
//! (merged lists keep the original order, new elements appended).

use serde_json::{Map, Value};

/// A patch format, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
}

impl PatchType {
    /// The patch type of a `Content-Type` (parameters ignored), if it is one served.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/json-patch+json" => Some(Self::Json),
            _ => None,
        }
    }
}

/// Why a patch was not applied: malformed (400) or not applicable to the object (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    NotApplicable(String),
}

/// How a list field is patched by a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the original (upstream: no patch strategy, atomic).
    Replace,
    /// Elements are maps merged by this key.
    MergeByKey(&'static str),
    /// Elements are primitives; the result is the union.
    MergePrimitives,
}

/// The patch strategy upstream's Go types declare (`patchStrategy`/`patchMergeKey`) for
/// the list at `path` (field names from the object's root) of an object of `kind`.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    // Object metadata, at the root or in a pod template.
    let meta = match path {
        ["metadata", rest @ ..] | ["spec", "template", "metadata", rest @ ..] => Some(rest),
        _ => None,
    };
    match meta {
        Some(["finalizers"]) => return MergePrimitives,
        Some(["ownerReferences"]) => return MergeByKey("uid"),
        Some(_) => return Replace,
        None => {}
    }
    // A pod spec: the pod's own, or a workload's template.
    let pod_spec = match (kind, path) {
        ("Pod", ["spec", rest @ ..]) => Some(rest),
        ("Deployment", ["spec", "template", "spec", rest @ ..]) => Some(rest),
        _ => None,
    };
    if let Some(rest) = pod_spec {
        return match rest {
            ["containers" | "initContainers" | "ephemeralContainers"] => MergeByKey("name"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "ports",
            ] => MergeByKey("containerPort"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "env",
            ] => MergeByKey("name"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "volumeMounts",
            ] => MergeByKey("mountPath"),
            [
                "containers" | "initContainers" | "ephemeralContainers",
                "volumeDevices",
            ] => MergeByKey("devicePath"),
            ["volumes"] | ["imagePullSecrets"] | ["schedulingGates"] | ["resourceClaims"] => {
                MergeByKey("name")
            }
            ["hostAliases"] => MergeByKey("ip"),
            ["topologySpreadConstraints"] => MergeByKey("topologyKey"),
            _ => Replace,
        };
    }
    match (kind, path) {
        ("Pod", ["status", "conditions"]) => MergeByKey("type"),
        ("Pod", ["status", "podIPs" | "hostIPs"]) => MergeByKey("ip"),
        ("Pod", ["status", "resourceClaimStatuses"]) => MergeByKey("name"),
        ("Node", ["spec", "podCIDRs"]) => MergePrimitives,
        ("Node", ["status", "conditions" | "addresses"]) => MergeByKey("type"),
        ("Namespace", ["status", "conditions"]) => MergeByKey("type"),
        ("Deployment", ["status", "conditions"]) => MergeByKey("type"),
        ("Service", ["spec", "ports"]) => MergeByKey("port"),
        ("Service", ["status", "conditions"]) => MergeByKey("type"),
        ("ServiceAccount", ["secrets"]) => MergeByKey("name"),
        _ => Replace,
    }
}

/// Applies `patch` of `patch_type` to `target` (an object of `kind`).
pub fn apply(
    kind: &str,
    target: &Value,
    patch_type: PatchType,
    patch: &[u8],
) -> Result<Value, Error> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|e| Error::Malformed(format!("error decoding patch: {e}")))?;
    match patch_type {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(Error::Malformed("merge patch is not a json object".into()));
            }
            let mut out = target.clone();
            merge_patch(&mut out, &patch);
            Ok(out)
        }
        PatchType::Strategic => {
            let Value::Object(patch) = patch else {
                return Err(Error::Malformed(
                    "strategic merge patch is not a json object".into(),
                ));
            };
            let Value::Object(mut out) = target.clone() else {
                return Err(Error::NotApplicable(
                    "the object is not a json object".into(),
                ));
            };
            let mut path = Vec::new();
            merge_map(kind, &mut out, &patch, &mut path)?;
            Ok(Value::Object(out))
        }
        PatchType::Json => json_patch(target, &patch),
    }
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

fn merge_map(
    kind: &str,
    orig: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), Error> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        match directive.as_str() {
            Some("replace") => {
                let mut replaced = Map::new();
                let rest = patch.iter().filter(|(k, _)| k.as_str() != DIRECTIVE);
                for (k, v) in rest {
                    replaced.insert(k.clone(), v.clone());
                }
                *orig = replaced;
                return Ok(());
            }
            Some("delete") => {
                orig.clear();
                return Ok(());
            }
            _ => {
                return Err(Error::Malformed(format!(
                    "invalid patch directive {directive} in map"
                )));
            }
        }
    }
    if let Some(keep) = patch.get(RETAIN_KEYS) {
        let Some(keep) = keep.as_array() else {
            return Err(Error::Malformed(format!("{RETAIN_KEYS} must be a list")));
        };
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) else {
            continue;
        };
        let Some(remove) = v.as_array() else {
            return Err(Error::Malformed(format!("{k} must be a list")));
        };
        if let Some(Value::Array(list)) = orig.get_mut(field) {
            list.retain(|x| !remove.contains(x));
        }
    }
    for (k, v) in patch {
        if k == DIRECTIVE
            || k == RETAIN_KEYS
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || k.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if v.is_null() {
            orig.remove(k);
            continue;
        }
        path.push(k.clone());
        let merged = match (orig.remove(k), v) {
            (Some(Value::Object(mut o)), Value::Object(p)) => {
                merge_map(kind, &mut o, p, path).map(|()| Value::Object(o))
            }
            (Some(Value::Array(o)), Value::Array(p)) => {
                merge_list(kind, o, p, path).map(Value::Array)
            }
            (_, Value::Object(p)) => {
                let mut o = Map::new();
                merge_map(kind, &mut o, p, path).map(|()| Value::Object(o))
            }
            (_, Value::Array(p)) => merge_list(kind, Vec::new(), p, path).map(Value::Array),
            (_, scalar) => Ok(scalar.clone()),
        };
        path.pop();
        orig.insert(k.clone(), merged?);
    }
    Ok(())
}

/// A patch element without its directives, as added to a list.
fn fresh(kind: &str, elem: &Value, path: &mut Vec<String>) -> Result<Value, Error> {
    match elem {
        Value::Object(p) => {
            let mut o = Map::new();
            merge_map(kind, &mut o, p, path)?;
            Ok(Value::Object(o))
        }
        other => Ok(other.clone()),
    }
}

fn directive_of(elem: &Value) -> Option<&str> {
    elem.get(DIRECTIVE).and_then(Value::as_str)
}

fn merge_list(
    kind: &str,
    orig: Vec<Value>,
    patch: &[Value],
    path: &mut Vec<String>,
) -> Result<Vec<Value>, Error> {
    let fields: Vec<&str> = path.iter().map(String::as_str).collect();
    let strategy = list_strategy(kind, &fields);
    let replace_all = patch.iter().any(|e| directive_of(e) == Some("replace"));
    match strategy {
        ListStrategy::Replace => patch.iter().map(|e| fresh(kind, e, path)).collect(),
        _ if replace_all => patch
            .iter()
            .filter(|e| directive_of(e) != Some("replace"))
            .map(|e| fresh(kind, e, path))
            .collect(),
        ListStrategy::MergePrimitives => {
            let mut out = orig;
            for e in patch {
                if !out.contains(e) {
                    out.push(e.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeByKey(key) => {
            let mut out = orig;
            for e in patch {
                let Value::Object(p) = e else {
                    return Err(Error::NotApplicable(format!(
                        "the list {} is merged by {key:?} but holds a non-object {e}",
                        path.join(".")
                    )));
                };
                let Some(id) = p.get(key) else {
                    return Err(Error::NotApplicable(format!(
                        "map: {e} does not contain declared merge key: {key}"
                    )));
                };
                let at = out.iter().position(|o| o.get(key) == Some(id));
                match (directive_of(e), at) {
                    (Some("delete"), _) => out.retain(|o| o.get(key) != Some(id)),
                    (Some(other), _) if other != "merge" => {
                        return Err(Error::Malformed(format!(
                            "invalid patch directive {other:?} in list element"
                        )));
                    }
                    (_, Some(i)) => {
                        if let Some(Value::Object(o)) = out.get_mut(i) {
                            merge_map(kind, o, p, path)?;
                        }
                    }
                    (_, None) => out.push(fresh(kind, e, path)?),
                }
            }
            Ok(out)
        }
    }
}

/// One JSON pointer (RFC 6901) as reference tokens.
fn pointer(s: &str) -> Result<Vec<String>, Error> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err(Error::Malformed(format!("invalid json pointer {s:?}")));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(token: &str, len: usize, allow_end: bool) -> Result<usize, Error> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let i: usize = token
        .parse()
        .map_err(|_| Error::NotApplicable(format!("invalid array index {token:?}")))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(Error::NotApplicable(format!(
            "array index {i} out of bounds"
        )));
    }
    Ok(i)
}

fn parent<'a>(doc: &'a mut Value, path: &[String]) -> Result<(&'a mut Value, String), Error> {
    let Some((last, init)) = path.split_last() else {
        return Err(Error::NotApplicable("the root has no parent".into()));
    };
    let mut cur = doc;
    for t in init {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => {
                let i = index(t, a.len(), false)?;
                a.get_mut(i)
            }
            _ => None,
        }
        .ok_or_else(|| Error::NotApplicable(format!("path /{} does not exist", path.join("/"))))?;
    }
    Ok((cur, last.clone()))
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), Error> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (p, last) = parent(doc, path)?;
    match p {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = index(&last, a.len(), true)?;
            a.insert(i, value);
        }
        _ => {
            return Err(Error::NotApplicable(format!(
                "cannot add at /{}",
                path.join("/")
            )));
        }
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, Error> {
    let (p, last) = parent(doc, path)?;
    let missing = || Error::NotApplicable(format!("path /{} does not exist", path.join("/")));
    match p {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = index(&last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for t in path {
        cur = match cur {
            Value::Object(m) => m.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// RFC 6902.
fn json_patch(target: &Value, patch: &Value) -> Result<Value, Error> {
    let Value::Array(ops) = patch else {
        return Err(Error::Malformed(
            "json patch is not a list of operations".into(),
        ));
    };
    let mut doc = target.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Malformed(format!("operation without \"op\": {op}")))?;
        let path = pointer(
            op.get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Malformed(format!("operation without \"path\": {op}")))?,
        )?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| Error::Malformed(format!("operation without \"value\": {op}")))
        };
        let from = || -> Result<Vec<String>, Error> {
            pointer(
                op.get("from")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::Malformed(format!("operation without \"from\": {op}")))?,
            )
        };
        match name {
            "add" => add(&mut doc, &path, value()?)?,
            "remove" => {
                remove(&mut doc, &path)?;
            }
            "replace" => {
                let v = value()?;
                if path.is_empty() {
                    doc = v;
                } else {
                    remove(&mut doc, &path)?;
                    add(&mut doc, &path, v)?;
                }
            }
            "move" => {
                let v = remove(&mut doc, &from()?)?;
                add(&mut doc, &path, v)?;
            }
            "copy" => {
                let src = from()?;
                let v = get(&doc, &src).cloned().ok_or_else(|| {
                    Error::NotApplicable(format!("path /{} does not exist", src.join("/")))
                })?;
                add(&mut doc, &path, v)?;
            }
            "test" => {
                let want = value()?;
                if get(&doc, &path) != Some(&want) {
                    return Err(Error::NotApplicable(format!(
                        "testing value /{} failed",
                        path.join("/")
                    )));
                }
            }
            other => {
                return Err(Error::Malformed(format!(
                    "unknown json patch operation {other:?}"
                )));
            }
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn smp(kind: &str, target: Value, patch: Value) -> Value {
        apply(
            kind,
            &target,
            PatchType::Strategic,
            patch.to_string().as_bytes(),
        )
        .expect("patch")
    }

    #[test]
    fn merge_patch_sets_and_deletes() {
        let t = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        let out = apply(
            "X",
            &t,
            PatchType::Merge,
            br#"{"a": null, "b": {"c": 5}, "l": [3]}"#,
        )
        .expect("patch");
        assert_eq!(out, json!({"b": {"c": 5, "d": 3}, "l": [3]}));
    }

    #[test]
    fn pod_conditions_merge_by_type_and_container_statuses_are_atomic() {
        let pod = json!({"status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False"},
            ],
            "containerStatuses": [{"name": "a", "ready": false}, {"name": "b", "ready": false}],
        }});
        let out = smp(
            "Pod",
            pod,
            json!({"status": {
                "$setElementOrder/conditions": [{"type": "PodScheduled"}, {"type": "Ready"}, {"type": "Initialized"}],
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                ],
                "containerStatuses": [{"name": "b", "ready": true}],
                "phase": "Running",
            }}),
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"},
                {"type": "Initialized", "status": "True"},
            ])
        );
        assert_eq!(
            out["status"]["containerStatuses"],
            json!([{"name": "b", "ready": true}])
        );
        assert_eq!(out["status"]["phase"], "Running");
    }

    #[test]
    fn delete_and_replace_directives() {
        let node = json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.1"},
            {"type": "Hostname", "address": "n1"},
        ], "capacity": {"cpu": "2", "memory": "1Gi"}}});
        let out = smp(
            "Node",
            node.clone(),
            json!({"status": {"addresses": [{"type": "Hostname", "$patch": "delete"}]}}),
        );
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "InternalIP", "address": "10.0.0.1"}])
        );
        let out = smp(
            "Node",
            node.clone(),
            json!({"status": {"addresses": [{"$patch": "replace"}, {"type": "ExternalIP", "address": "1.2.3.4"}]}}),
        );
        assert_eq!(
            out["status"]["addresses"],
            json!([{"type": "ExternalIP", "address": "1.2.3.4"}])
        );
        let out = smp(
            "Node",
            node,
            json!({"status": {"capacity": {"$patch": "replace", "cpu": "4"}}}),
        );
        assert_eq!(out["status"]["capacity"], json!({"cpu": "4"}));
    }

    #[test]
    fn finalizers_are_a_set() {
        let obj = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = smp(
            "ConfigMap",
            obj.clone(),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(
            "ConfigMap",
            obj,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn unlisted_lists_are_replaced_and_new_elements_lose_directives() {
        let pod = json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "c", "image": "x"}]}});
        let out = smp(
            "Pod",
            pod,
            json!({"spec": {
                "tolerations": [{"key": "b"}],
                "containers": [{"name": "c", "image": "y"}, {"name": "d", "image": "z", "env": [{"name": "E", "$patch": "delete"}]}],
            }}),
        );
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "y"}, {"name": "d", "image": "z", "env": []}])
        );
    }

    #[test]
    fn missing_merge_key_is_refused() {
        let pod = json!({"status": {"conditions": []}});
        let err = apply(
            "Pod",
            &pod,
            PatchType::Strategic,
            br#"{"status":{"conditions":[{"status":"True"}]}}"#,
        );
        assert!(matches!(err, Err(Error::NotApplicable(_))));
    }

    #[test]
    fn json_patch_operations() {
        let t = json!({"metadata": {"labels": {"a": "1"}}, "l": [1, 2]});
        let ops = json!([
            {"op": "test", "path": "/metadata/labels/a", "value": "1"},
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "replace", "path": "/l/0", "value": 9},
            {"op": "add", "path": "/l/-", "value": 3},
            {"op": "remove", "path": "/metadata/labels/a"},
            {"op": "copy", "from": "/l", "path": "/m"},
            {"op": "move", "from": "/m", "path": "/n"},
        ]);
        let out = apply("X", &t, PatchType::Json, ops.to_string().as_bytes()).expect("patch");
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b/c": "2"}}, "l": [9, 2, 3], "n": [9, 2, 3]})
        );
        let failing = json!([{"op": "test", "path": "/l/0", "value": 5}]);
        assert!(matches!(
            apply("X", &t, PatchType::Json, failing.to_string().as_bytes()),
            Err(Error::NotApplicable(_))
        ));
        assert!(matches!(
            apply("X", &t, PatchType::Json, br#"{"op":"add"}"#),
            Err(Error::Malformed(_))
        ));
    }
}
