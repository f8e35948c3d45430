//! What the real server's registries do around storage, per kind: server-set metadata and
//! defaults on create, the namespace check, status kept apart from spec on update,
//! preconditions, graceful pod deletion, finalizers, and the CSR approval flow.
//!
//! Every function takes and returns objects in the form of the resource asked for
//! (`events.k8s.io/v1` Events are converted to and from the core/v1 Events they are
//! stored as), so HTTP routes and the test helpers on the handle behave alike.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::auth::UserInfo;
use super::resources::{Gvr, Resource};
use super::selectors::Selector;
use super::status::{ApiError, Cause};
use super::store::{self, Key, Outcome, Store, Write};

/// The default of `spec.terminationGracePeriodSeconds` (upstream `DefaultTerminationGracePeriodSeconds`).
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The options of a delete, from the query and the `DeleteOptions` body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    /// Removed from the store: the last state.
    Gone(Value),
    /// Marked for deletion (graceful pod deletion or finalizers): the object as it is now.
    Pending(Value),
}

/// Storage plus the per-kind strategies.
pub struct Registry {
    pub store: Store,
    next_service_ip: AtomicU32,
}

/// `metav1.Time` now: RFC 3339 in UTC with seconds.
pub fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `metav1.Time` `seconds` from now.
pub fn seconds_from_now(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.finish()
}

/// A random (version 4) UUID, as the server gives every object.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&random_u64().to_le_bytes());
    b[8..].copy_from_slice(&random_u64().to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The five characters `generateName` gets (upstream's alphabet without vowels).
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
            n /= ALPHABET.len() as u64;
            c as char
        })
        .collect()
}

/// A string field of `metadata`.
pub fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// The kinds whose `.status` only the `/status` subresource writes.
fn has_status_subresource(res: &Resource) -> bool {
    res.subresources.iter().any(|s| s.name == "status")
}

/// Kinds that `PUT` creates when missing (upstream `AllowCreateOnUpdate`).
fn creates_on_update(storage: Gvr) -> bool {
    matches!(
        (storage.group, storage.resource),
        ("", "events") | ("coordination.k8s.io", "leases")
    )
}

/// Kinds whose delete answers with the deleted object instead of a `Status`
/// (upstream `ReturnDeletedObject`).
pub fn returns_deleted_object(res: &Resource) -> bool {
    matches!(
        (res.group, res.plural),
        ("", "pods") | ("", "serviceaccounts")
    )
}

/// Kinds with a `metadata.generation` the server counts.
fn tracks_generation(kind: &str) -> bool {
    matches!(kind, "Pod" | "Deployment")
}

// ---- events.k8s.io/v1 <-> core/v1 ----

const EVENT_RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &Value, api_version: &str, to_v1: bool) -> Value {
    let Value::Object(map) = obj else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in map {
        let renamed = EVENT_RENAMES.iter().find_map(|(core, v1)| {
            if to_v1 && k == core {
                Some(*v1)
            } else if !to_v1 && k == v1 {
                Some(*core)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// The stored object as `res` serves it.
pub fn to_external(res: &Resource, obj: &Value) -> Value {
    if res.storage.is_some() {
        return rename(obj, &res.api_version(), true);
    }
    obj.clone()
}

/// An object of `res` as stored.
fn to_storage(res: &Resource, obj: &Value) -> Value {
    if res.storage.is_some() {
        return rename(obj, "v1", false);
    }
    obj.clone()
}

// ---- validation ----

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_name(res: &Resource, name: &str) -> Result<(), ApiError> {
    let label_only = matches!(res.plural, "namespaces" | "services");
    let ok = if label_only {
        is_dns_label(name)
    } else if res.plural == "events" {
        // Event names carry a timestamp suffix and may hold anything path-safe.
        !name.contains('/') && !name.contains('%') && name != "." && name != ".."
    } else {
        is_dns_subdomain(name)
    };
    if ok {
        return Ok(());
    }
    let rule = if label_only {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Err(ApiError::invalid_field(
        res.group,
        res.kind,
        name,
        "FieldValueInvalid",
        "metadata.name",
        format!("Invalid value: {name:?}: {rule}"),
    ))
}

fn required(field: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        field: field.to_string(),
        message: "Required value".to_string(),
    }
}

fn validate_create(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    let name = meta(obj, "name");
    let mut causes = Vec::new();
    match res.kind {
        "Pod" => {
            let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
            match containers {
                None => causes.push(required("spec.containers")),
                Some(list) if list.is_empty() => causes.push(required("spec.containers")),
                Some(list) => {
                    for (i, c) in list.iter().enumerate() {
                        if c.get("name")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            causes.push(required(&format!("spec.containers[{i}].name")));
                        }
                        if c.get("image")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                        {
                            causes.push(required(&format!("spec.containers[{i}].image")));
                        }
                    }
                }
            }
        }
        "CertificateSigningRequest" => {
            for field in ["request", "signerName"] {
                if obj
                    .pointer(&format!("/spec/{field}"))
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(required(&format!("spec.{field}")));
                }
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res.group, res.kind, name, causes))
    }
}

/// A pod spec with the fields an update may change blanked out (upstream
/// `ValidatePodUpdate`: images, activeDeadlineSeconds, tolerations,
/// terminationGracePeriodSeconds, schedulingGates).
fn immutable_pod_spec(spec: &Value) -> Value {
    let mut spec = spec.clone();
    if let Value::Object(m) = &mut spec {
        for f in [
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
            "schedulingGates",
        ] {
            m.remove(f);
        }
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(cs)) = m.get_mut(list) {
                for c in cs {
                    if let Value::Object(c) = c {
                        c.remove("image");
                    }
                }
            }
        }
    }
    spec
}

// ---- defaults ----

fn default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    if obj.get(key).is_none_or(Value::is_null) {
        obj.insert(key.to_string(), value);
    }
}

fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_containers(spec: &mut Map<String, Value>) {
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(Value::Array(cs)) = spec.get_mut(list) else {
            continue;
        };
        for c in cs.iter_mut() {
            let Value::Object(c) = c else { continue };
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let policy = image_pull_policy(image);
            default(c, "imagePullPolicy", json!(policy));
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            if list != "ephemeralContainers" {
                default(c, "resources", json!({}));
            }
            if let Some(Value::Array(ports)) = c.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Upstream `SetDefaults_PodSpec` and `SetDefaults_Container`, plus what admission adds
/// to every pod (service account name, priority, the not-ready/unreachable tolerations).
fn default_pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(
        spec,
        "terminationGracePeriodSeconds",
        json!(DEFAULT_GRACE_SECONDS),
    );
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "enableServiceLinks", json!(true));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    default(spec, "priority", json!(0));
    let sa = spec
        .get("serviceAccountName")
        .or_else(|| spec.get("serviceAccount"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(sa));
    spec.insert("serviceAccount".into(), json!(sa));
    default_containers(spec);
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Value::Array(list) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = list.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(key)
                    && t.get("effect")
                        .and_then(Value::as_str)
                        .is_none_or(|e| e == "NoExecute")
            });
            if !present {
                list.push(json!({
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }));
            }
        }
    }
}

/// The QoS class upstream derives from the containers' requests and limits.
fn qos_class(spec: &Value) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let lists = ["initContainers", "containers"];
    for c in lists
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array))
        .flatten()
    {
        let requests = c.pointer("/resources/requests");
        let limits = c.pointer("/resources/limits");
        for r in ["cpu", "memory"] {
            let req = requests.and_then(|v| v.get(r));
            let lim = limits.and_then(|v| v.get(r));
            if req.is_some() || lim.is_some() {
                any = true;
            }
            match (req, lim) {
                (_, None) => guaranteed = false,
                (Some(q), Some(l)) if q != l => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

impl Registry {
    pub fn new(history: usize) -> Self {
        Self {
            store: Store::new(history),
            next_service_ip: AtomicU32::new(1),
        }
    }

    fn key(res: &Resource, ns: Option<&str>, name: &str) -> Key {
        let ns = if res.namespaced { ns } else { None };
        Key::new(res.storage(), ns, name)
    }

    /// One object, as `res` serves it.
    pub fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.store
            .get(&Self::key(res, ns, name))
            .map(|o| to_external(res, &o))
            .ok_or_else(|| ApiError::not_found(res.group, res.plural, name))
    }

    /// The objects matching `selector` (in `ns`, or all), and the resourceVersion read at.
    pub fn list(&self, res: &Resource, ns: Option<&str>, selector: &Selector) -> (Vec<Value>, u64) {
        let ns = if res.namespaced { ns } else { None };
        let (items, rv) = self.store.list(res.storage(), ns);
        let items = items
            .into_iter()
            .filter(|o| selector.matches(o))
            .map(|o| to_external(res, &o))
            .collect();
        (items, rv)
    }

    /// Checks an incoming object's `apiVersion`/`kind` against the URL's resource (or the
    /// subresource's kind) and fills them in when missing, as the server's decoder does.
    fn check_type(res: &Resource, sub: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request is not a json object",
            ));
        }
        let (api_version, kind) = match sub.and_then(|s| res.subresource(s)) {
            Some(s) if s.group.is_some() => (
                super::resources::group_version(
                    s.group.unwrap_or_default(),
                    s.version.unwrap_or("v1"),
                ),
                s.kind,
            ),
            Some(s) => (res.api_version(), s.kind),
            None => (res.api_version(), res.kind),
        };
        let given_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !given_version.is_empty() && given_version != api_version {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({given_version}) does not match the expected API version ({api_version})"
            )));
        }
        let given_kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        if !given_kind.is_empty() && given_kind != kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({given_kind}) does not match the expected kind ({kind})"
            )));
        }
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        Ok(())
    }

    fn check_namespace(res: &Resource, ns: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
        let given = meta(obj, "namespace").to_string();
        if !res.namespaced {
            meta_mut(obj).remove("namespace");
            return Ok(());
        }
        let ns = ns.unwrap_or_default();
        if !given.is_empty() && given != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta_mut(obj).insert("namespace".into(), json!(ns));
        Ok(())
    }

    fn namespace_exists(&self, ns: &str) -> Result<(), ApiError> {
        let key = Key::new(Gvr::NAMESPACES, None, ns);
        if self.store.get(&key).is_none() {
            return Err(ApiError::not_found("", "namespaces", ns));
        }
        Ok(())
    }

    /// What the server sets on every new object, then the kind's defaults.
    fn prepare_create(&self, res: &Resource, obj: &mut Value, user: &UserInfo) {
        let m = meta_mut(obj);
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now()));
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            m.remove(f);
        }
        if tracks_generation(res.kind) {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        // Go serializes struct fields even when empty: these kinds always have a spec
        // and (but for leases) a status.
        if let Value::Object(o) = obj
            && matches!(
                res.kind,
                "Pod"
                    | "Node"
                    | "Namespace"
                    | "Service"
                    | "Deployment"
                    | "Lease"
                    | "CertificateSigningRequest"
            )
        {
            default(o, "spec", json!({}));
            if res.kind != "Lease" {
                default(o, "status", json!({}));
            }
        }
        match res.kind {
            "Pod" => {
                let spec = obj
                    .as_object_mut()
                    .map(|o| o.entry("spec").or_insert_with(|| json!({})));
                if let Some(Value::Object(spec)) = spec {
                    default_pod_spec(spec);
                }
                let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
                obj["status"] = json!({"phase": "Pending", "qosClass": qos});
            }
            "Namespace" => {
                let labels = meta_mut(obj).entry("labels").or_insert_with(|| json!({}));
                if let Value::Object(l) = labels {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
                obj["status"] = json!({"phase": "Active"});
            }
            "Service" => self.default_service(obj),
            "Secret" => {
                if let Value::Object(o) = obj {
                    default(o, "type", json!("Opaque"));
                }
            }
            "Deployment" => {
                if let Some(Value::Object(spec)) = obj.get_mut("spec") {
                    default(spec, "replicas", json!(1));
                    default(spec, "revisionHistoryLimit", json!(10));
                    default(spec, "progressDeadlineSeconds", json!(600));
                    default(
                        spec,
                        "strategy",
                        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                    );
                    if let Some(Value::Object(tspec)) =
                        spec.get_mut("template").and_then(|t| t.get_mut("spec"))
                    {
                        default_pod_spec(tspec);
                    }
                }
                if let Value::Object(o) = obj {
                    o.remove("status");
                }
            }
            "CertificateSigningRequest" => {
                if let Some(Value::Object(spec)) = obj.get_mut("spec") {
                    spec.insert("username".into(), json!(user.username));
                    spec.insert("groups".into(), json!(user.groups));
                    if !user.uid.is_empty() {
                        spec.insert("uid".into(), json!(user.uid));
                    }
                    if !user.extra.is_empty() {
                        spec.insert("extra".into(), json!(user.extra));
                    }
                }
                obj["status"] = json!({});
            }
            _ => {}
        }
    }

    fn default_service(&self, obj: &mut Value) {
        let Some(Value::Object(spec)) = obj.get_mut("spec") else {
            obj["spec"] = json!({"type": "ClusterIP"});
            return self.default_service(obj);
        };
        default(spec, "type", json!("ClusterIP"));
        let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
        if !external {
            default(spec, "sessionAffinity", json!("None"));
            default(spec, "internalTrafficPolicy", json!("Cluster"));
            default(spec, "ipFamilies", json!(["IPv4"]));
            default(spec, "ipFamilyPolicy", json!("SingleStack"));
            if spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                let n = self.next_service_ip.fetch_add(1, Ordering::Relaxed);
                let ip = format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff);
                spec.insert("clusterIP".into(), json!(ip));
            }
            let ip = spec.get("clusterIP").cloned().unwrap_or(Value::Null);
            default(spec, "clusterIPs", json!([ip]));
        }
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                default(p, "protocol", json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                default(p, "targetPort", port);
            }
        }
        obj["status"] = json!({"loadBalancer": {}});
    }

    /// `POST` to a collection.
    pub fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        mut obj: Value,
        user: &UserInfo,
    ) -> Result<Value, ApiError> {
        Self::check_type(res, None, &mut obj)?;
        Self::check_namespace(res, ns, &mut obj)?;
        let mut name = meta(&obj, "name").to_string();
        let generate = meta(&obj, "generateName").to_string();
        if name.is_empty() && generate.is_empty() {
            return Err(ApiError::invalid_field(
                res.group,
                res.kind,
                "",
                "FieldValueRequired",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
        if name.is_empty() {
            name = format!("{generate}{}", name_suffix());
            meta_mut(&mut obj).insert("name".into(), json!(name));
        }
        check_name(res, &name)?;
        validate_create(res, &obj)?;
        if res.namespaced {
            self.namespace_exists(ns.unwrap_or_default())?;
        }
        self.prepare_create(res, &mut obj, user);
        let stored = to_storage(res, &obj);
        let key = Self::key(res, ns, &name);
        let (outcome, ()) = self.store.write(&key, |current| match current {
            Some(_) => Err(ApiError::already_exists(res.group, res.plural, &name)),
            None => Ok((Write::Put(stored), ())),
        })?;
        let created = match outcome {
            Outcome::Stored(o) | Outcome::Kept(Some(o)) | Outcome::Removed(o) => o,
            Outcome::Kept(None) => return Err(ApiError::internal("create stored nothing")),
        };
        if res.kind == "Namespace" {
            self.seed_namespace(&name);
        }
        Ok(to_external(res, &created))
    }

    /// What the controllers of a real control plane put in every new namespace: the
    /// `default` ServiceAccount.
    pub fn seed_namespace(&self, ns: &str) {
        let key = Key::new(Gvr::SERVICEACCOUNTS, Some(ns), "default");
        let sa = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": ns, "uid": new_uid(), "creationTimestamp": now()},
        });
        let _ = self.store.write(&key, |current| {
            Ok::<_, ApiError>((
                if current.is_some() {
                    Write::Keep
                } else {
                    Write::Put(sa)
                },
                (),
            ))
        });
    }

    /// `PUT` (`sub` none) or a write to a subresource: `desired` computes the object
    /// wanted from the current one (the request body, or the current object patched), under
    /// the store's lock. Returns the object and whether it was created.
    pub fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        sub: Option<&str>,
        user: &UserInfo,
        desired: impl FnOnce(Option<&Value>) -> Result<Value, ApiError>,
    ) -> Result<(Value, bool), ApiError> {
        let key = Self::key(res, ns, name);
        // Read before taking the store's lock for the write (it is not reentrant).
        let namespace_missing = match res.namespaced {
            true => self.namespace_exists(ns.unwrap_or_default()).err(),
            false => None,
        };
        let (outcome, created) = self.store.write(&key, |current| {
            let current_external = current.map(|c| to_external(res, c));
            let mut want = desired(current_external.as_ref())?;
            Self::check_type(res, sub, &mut want)?;
            Self::check_namespace(res, ns, &mut want)?;
            let given = meta(&want, "name");
            if given != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({given}) does not match the name on the URL ({name})"
                )));
            }
            let Some(current) = current else {
                if sub.is_some() || !creates_on_update(res.storage()) {
                    return Err(ApiError::not_found(res.group, res.plural, name));
                }
                if let Some(missing) = namespace_missing {
                    return Err(missing);
                }
                validate_create(res, &want)?;
                self.prepare_create(res, &mut want, user);
                return Ok((Write::Put(to_storage(res, &want)), true));
            };
            let asked_rv = meta(&want, "resourceVersion");
            if !asked_rv.is_empty() && asked_rv != meta(current, "resourceVersion") {
                return Err(ApiError::stale(res.group, res.plural, name));
            }
            let asked_uid = meta(&want, "uid");
            if !asked_uid.is_empty() && asked_uid != meta(current, "uid") {
                return Err(ApiError::conflict(
                    res.group,
                    res.plural,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {asked_uid}, UID in object meta: {}",
                        meta(current, "uid")
                    ),
                ));
            }
            let want = to_storage(res, &want);
            let new = match sub {
                None => self.prepare_update(res, current, want)?,
                Some("status") => status_update(res, current, &want)?,
                Some("approval") => approval_update(res, current, &want)?,
                Some("finalize") => {
                    let mut new = current.clone();
                    new["spec"]["finalizers"] = want.pointer("/spec/finalizers").cloned().unwrap_or(json!([]));
                    new
                }
                Some(_) => return Err(ApiError::method_not_allowed()),
            };
            let being_deleted = new.pointer("/metadata/deletionTimestamp").is_some();
            let grace = new
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if being_deleted && !has_finalizers(&new) && grace == 0 {
                return Ok((Write::Remove, false));
            }
            Ok((Write::Put(new), false))
        })?;
        let obj = match outcome {
            Outcome::Stored(o) | Outcome::Removed(o) | Outcome::Kept(Some(o)) => o,
            Outcome::Kept(None) => return Err(ApiError::not_found(res.group, res.plural, name)),
        };
        Ok((to_external(res, &obj), created))
    }

    /// A write to the main resource: server-owned metadata and (for kinds with a status
    /// subresource) `.status` are kept from the current object.
    fn prepare_update(
        &self,
        res: &Resource,
        current: &Value,
        mut new: Value,
    ) -> Result<Value, ApiError> {
        let name = meta(current, "name").to_string();
        {
            let old_meta = current.get("metadata").cloned().unwrap_or(json!({}));
            let m = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
        }
        if has_status_subresource(res) {
            match current.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Value::Object(o) = &mut new {
                        o.remove("status");
                    }
                }
            }
        }
        match res.kind {
            "Pod" => {
                if let Some(Value::Object(spec)) = new.get_mut("spec") {
                    default_pod_spec(spec);
                }
                let old_spec = current.get("spec").unwrap_or(&Value::Null);
                let new_spec = new.get("spec").unwrap_or(&Value::Null);
                if immutable_pod_spec(old_spec) != immutable_pod_spec(new_spec) {
                    return Err(ApiError::invalid_field(
                        res.group,
                        res.kind,
                        &name,
                        "FieldValueForbidden",
                        "spec",
                        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                    ));
                }
            }
            "Namespace" => {
                new["spec"] = current.get("spec").cloned().unwrap_or(json!({}));
                let labels = meta_mut(&mut new)
                    .entry("labels")
                    .or_insert_with(|| json!({}));
                if let Value::Object(l) = labels {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
            "CertificateSigningRequest" => {
                new["spec"] = current.get("spec").cloned().unwrap_or(json!({}));
            }
            _ => {}
        }
        if tracks_generation(res.kind) && current.get("spec") != new.get("spec") {
            let generation = current
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
        }
        Ok(new)
    }

    /// `DELETE` of one object.
    pub fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        if res.plural == "namespaces" && SYSTEM_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(
                res.group,
                res.plural,
                name,
                "this namespace may not be deleted",
            ));
        }
        let key = Self::key(res, ns, name);
        let (outcome, ()) = self.store.write(&key, |current| {
            let Some(current) = current else {
                return Err(ApiError::not_found(res.group, res.plural, name));
            };
            if let Some(uid) = &opts.precondition_uid {
                let actual = meta(current, "uid");
                if uid != actual {
                    return Err(ApiError::conflict(
                        res.group,
                        res.plural,
                        name,
                        &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                    ));
                }
            }
            if let Some(rv) = &opts.precondition_resource_version {
                let actual = meta(current, "resourceVersion");
                if rv != actual {
                    return Err(ApiError::conflict(
                        res.group,
                        res.plural,
                        name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                        ),
                    ));
                }
            }
            Ok((deletion(res, current, opts), ()))
        })?;
        let deleted = match outcome {
            Outcome::Removed(o) => Deleted::Gone(o),
            Outcome::Stored(o) | Outcome::Kept(Some(o)) => Deleted::Pending(o),
            Outcome::Kept(None) => return Err(ApiError::not_found(res.group, res.plural, name)),
        };
        if res.plural == "namespaces" && matches!(deleted, Deleted::Gone(_)) {
            self.empty_namespace(name);
        }
        Ok(match deleted {
            Deleted::Gone(o) => Deleted::Gone(to_external(res, &o)),
            Deleted::Pending(o) => Deleted::Pending(to_external(res, &o)),
        })
    }

    /// Removes every object in namespace `ns` (what the namespace controller does before a
    /// namespace goes away; here at once).
    fn empty_namespace(&self, ns: &str) {
        for res in super::resources::RESOURCES
            .iter()
            .filter(|r| r.namespaced && r.storage.is_none())
        {
            let (items, _) = self.store.list(res.gvr(), Some(ns));
            for item in items {
                let key = Key::new(res.gvr(), Some(ns), meta(&item, "name"));
                let _ = self
                    .store
                    .write(&key, |_| Ok::<_, ApiError>((Write::Remove, ())));
            }
        }
    }

    /// Sets or replaces an object as a test wants it, bypassing the strategies (only the
    /// resourceVersion is the server's).
    pub fn force(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let key = Self::key(res, ns, name);
        let (outcome, ()) = self.store.write(&key, |current| {
            let Some(current) = current else {
                return Err(ApiError::not_found(res.group, res.plural, name));
            };
            let mut obj = to_external(res, current);
            f(&mut obj);
            Ok((Write::Put(to_storage(res, &obj)), ()))
        })?;
        match outcome {
            Outcome::Stored(o) | Outcome::Kept(Some(o)) | Outcome::Removed(o) => {
                Ok(to_external(res, &o))
            }
            Outcome::Kept(None) => Err(ApiError::not_found(res.group, res.plural, name)),
        }
    }

    /// Removes an object at once, whatever its finalizers or grace period.
    pub fn remove(&self, res: &Resource, ns: Option<&str>, name: &str) -> Option<Value> {
        let key = Self::key(res, ns, name);
        match self
            .store
            .write(&key, |_| Ok::<_, ApiError>((Write::Remove, ())))
        {
            Ok((Outcome::Removed(o), ())) => Some(to_external(res, &o)),
            _ => None,
        }
    }
}

/// The grace period a pod's deletion gets (upstream `podStrategy.CheckGracefulDelete`).
fn pod_grace(pod: &Value, opts: &DeleteOptions) -> i64 {
    let mut period = opts.grace_period_seconds.unwrap_or_else(|| {
        pod.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    });
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        period = 0;
    }
    if matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    ) {
        period = 0;
    }
    if period < 0 {
        period = 1;
    }
    period
}

/// What a delete does to `current` (upstream `rest.BeforeDelete` and the store's
/// finalizer handling): remove it, or mark it with a deletionTimestamp and keep it.
fn deletion(res: &Resource, current: &Value, opts: &DeleteOptions) -> Write {
    let graceful = res.kind == "Pod";
    let grace = if graceful {
        pod_grace(current, opts)
    } else {
        0
    };
    let mut obj = current.clone();
    let pending = current.pointer("/metadata/deletionTimestamp").is_some();
    if pending {
        let old_grace = current
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        // Only a shorter grace period changes a deletion in progress.
        if opts.grace_period_seconds.is_none() || grace >= old_grace {
            return Write::Keep;
        }
        let m = meta_mut(&mut obj);
        m.insert("deletionTimestamp".into(), json!(seconds_from_now(grace)));
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        if grace == 0 && !has_finalizers(&obj) {
            return Write::Remove;
        }
        return Write::Put(obj);
    }
    if grace == 0 && !has_finalizers(current) {
        return Write::Remove;
    }
    let generation = current
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let m = meta_mut(&mut obj);
    m.insert("deletionTimestamp".into(), json!(seconds_from_now(grace)));
    m.insert("deletionGracePeriodSeconds".into(), json!(grace));
    if let Some(g) = generation.filter(|g| *g > 0) {
        m.insert("generation".into(), json!(g + 1));
    }
    Write::Put(obj)
}

fn conditions_of(obj: &Value) -> Vec<Value> {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_approval(cond: &Value) -> bool {
    matches!(
        cond.get("type").and_then(Value::as_str),
        Some("Approved" | "Denied")
    )
}

/// A write to `/status`: only `.status` changes (for a CSR, not its approval conditions).
fn status_update(res: &Resource, current: &Value, want: &Value) -> Result<Value, ApiError> {
    let mut new = current.clone();
    match want.get("status") {
        Some(s) => new["status"] = s.clone(),
        None => {
            if let Value::Object(o) = &mut new {
                o.remove("status");
            }
        }
    }
    if res.kind == "CertificateSigningRequest" {
        let mut conditions: Vec<Value> = conditions_of(current)
            .into_iter()
            .filter(is_approval)
            .collect();
        conditions.extend(conditions_of(&new).into_iter().filter(|c| !is_approval(c)));
        new["status"]["conditions"] = json!(conditions);
        check_certificate(res, current, &new)?;
    }
    Ok(new)
}

/// A write to a CSR's `/approval`: only the conditions change.
fn approval_update(res: &Resource, current: &Value, want: &Value) -> Result<Value, ApiError> {
    let mut new = current.clone();
    let mut conditions = conditions_of(want);
    let now = now();
    for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
        default(c, "lastUpdateTime", json!(now));
        default(c, "lastTransitionTime", json!(now));
        default(c, "status", json!("True"));
    }
    let approved = conditions
        .iter()
        .any(|c| c["type"] == "Approved" && c["status"] == "True");
    let denied = conditions
        .iter()
        .any(|c| c["type"] == "Denied" && c["status"] == "True");
    if approved && denied {
        return Err(ApiError::invalid_field(
            res.group,
            res.kind,
            meta(current, "name"),
            "FieldValueInvalid",
            "status.conditions",
            "Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive",
        ));
    }
    new["status"]["conditions"] = json!(conditions);
    Ok(new)
}

fn check_certificate(res: &Resource, current: &Value, new: &Value) -> Result<(), ApiError> {
    let old_cert = current
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let new_cert = new
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = meta(current, "name");
    if !old_cert.is_empty() && old_cert != new_cert {
        return Err(ApiError::invalid_field(
            res.group,
            res.kind,
            name,
            "FieldValueInvalid",
            "status.certificate",
            "Invalid value: \"\": field is immutable once set",
        ));
    }
    let approved = conditions_of(current)
        .iter()
        .any(|c| c["type"] == "Approved" && c["status"] == "True");
    if !new_cert.is_empty() && !approved {
        return Err(ApiError::invalid_field(
            res.group,
            res.kind,
            name,
            "FieldValueForbidden",
            "status.certificate",
            "Forbidden: certificate can only be set on an approved request",
        ));
    }
    Ok(())
}

/// The resourceVersion of an object, as a number.
pub fn resource_version(obj: &Value) -> u64 {
    store::rv_of(obj)
}

#[cfg(test)]
mod tests {
    use super::super::resources::find;
    use super::*;

    fn registry() -> Registry {
        let r = Registry::new(100);
        let ns = find(Gvr::NAMESPACES).expect("served");
        r.create(
            ns,
            None,
            json!({"metadata": {"name": "default"}}),
            &UserInfo::admin(),
        )
        .expect("namespace");
        r
    }

    fn pods() -> &'static Resource {
        find(Gvr::PODS).expect("served")
    }

    fn pod(name: &str, node: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"},
        })
    }

    #[test]
    fn create_sets_server_fields_and_pod_defaults() {
        let r = registry();
        let p = r
            .create(pods(), Some("default"), pod("p", ""), &UserInfo::admin())
            .expect("create");
        assert_eq!(p["metadata"]["namespace"], "default");
        assert_eq!(p["metadata"]["uid"].as_str().map(str::len), Some(36));
        assert_eq!(
            p["status"]["phase"], "Pending",
            "status is the server's on create"
        );
        assert_eq!(p["status"]["qosClass"], "BestEffort");
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
    }

    #[test]
    fn create_refuses_duplicates_missing_names_and_namespaces() {
        let r = registry();
        r.create(pods(), Some("default"), pod("p", ""), &UserInfo::admin())
            .expect("create");
        let dup = r.create(pods(), Some("default"), pod("p", ""), &UserInfo::admin());
        assert_eq!(dup.map_err(|e| e.code), Err(409));
        let mut nameless = pod("", "");
        let missing = r.create(
            pods(),
            Some("default"),
            nameless.clone(),
            &UserInfo::admin(),
        );
        assert_eq!(missing.map_err(|e| e.code), Err(422));
        nameless["metadata"]["generateName"] = json!("web-");
        let generated = r
            .create(pods(), Some("default"), nameless, &UserInfo::admin())
            .expect("create");
        assert!(meta(&generated, "name").starts_with("web-"));
        assert_eq!(meta(&generated, "name").len(), 9);
        let elsewhere = r.create(pods(), Some("nope"), pod("p", ""), &UserInfo::admin());
        assert_eq!(elsewhere.map_err(|e| e.code), Err(404));
    }

    #[test]
    fn bound_pods_are_deleted_gracefully() {
        let r = registry();
        r.create(pods(), Some("default"), pod("p", "n1"), &UserInfo::admin())
            .expect("create");
        let first = r
            .delete(pods(), Some("default"), "p", &DeleteOptions::default())
            .expect("delete");
        let Deleted::Pending(p) = first else {
            panic!("removed at once")
        };
        assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
        assert!(p["metadata"]["deletionTimestamp"].is_string());
        let again = r
            .delete(pods(), Some("default"), "p", &DeleteOptions::default())
            .expect("delete");
        assert!(
            matches!(again, Deleted::Pending(_)),
            "a second delete changes nothing"
        );
        let now = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        let gone = r
            .delete(pods(), Some("default"), "p", &now)
            .expect("delete");
        assert!(matches!(gone, Deleted::Gone(_)));
        assert!(r.get(pods(), Some("default"), "p").is_err());
    }

    #[test]
    fn unbound_pods_go_at_once() {
        let r = registry();
        r.create(pods(), Some("default"), pod("p", ""), &UserInfo::admin())
            .expect("create");
        let gone = r
            .delete(pods(), Some("default"), "p", &DeleteOptions::default())
            .expect("delete");
        assert!(matches!(gone, Deleted::Gone(_)));
    }

    #[test]
    fn update_keeps_status_and_checks_resource_version() {
        let r = registry();
        let p = r
            .create(pods(), Some("default"), pod("p", "n1"), &UserInfo::admin())
            .expect("create");
        let mut changed = p.clone();
        changed["metadata"]["labels"] = json!({"a": "b"});
        changed["status"]["phase"] = json!("Running");
        let (updated, created) = r
            .update(
                pods(),
                Some("default"),
                "p",
                None,
                &UserInfo::admin(),
                |_| Ok(changed.clone()),
            )
            .expect("update");
        assert!(!created);
        assert_eq!(updated["metadata"]["labels"]["a"], "b");
        assert_eq!(
            updated["status"]["phase"], "Pending",
            "the main resource ignores status"
        );
        let stale = r.update(
            pods(),
            Some("default"),
            "p",
            None,
            &UserInfo::admin(),
            |_| Ok(changed),
        );
        assert_eq!(stale.map_err(|e| e.code), Err(409));
    }

    #[test]
    fn pod_spec_is_immutable_but_images_are_not() {
        let r = registry();
        let p = r
            .create(pods(), Some("default"), pod("p", "n1"), &UserInfo::admin())
            .expect("create");
        let mut image = p.clone();
        image["spec"]["containers"][0]["image"] = json!("busybox:2");
        let (updated, _) = r
            .update(
                pods(),
                Some("default"),
                "p",
                None,
                &UserInfo::admin(),
                |_| Ok(image),
            )
            .expect("image update");
        assert_eq!(updated["metadata"]["generation"], 2);
        let mut node = updated;
        node["spec"]["nodeName"] = json!("n2");
        let refused = r.update(
            pods(),
            Some("default"),
            "p",
            None,
            &UserInfo::admin(),
            |_| Ok(node),
        );
        assert_eq!(refused.map_err(|e| e.code), Err(422));
    }

    #[test]
    fn finalizers_hold_a_deleted_object_until_removed() {
        let r = registry();
        let cms = find(Gvr::CONFIGMAPS).expect("served");
        let cm = json!({"metadata": {"name": "c", "finalizers": ["x"]}});
        r.create(cms, Some("default"), cm, &UserInfo::admin())
            .expect("create");
        let d = r
            .delete(cms, Some("default"), "c", &DeleteOptions::default())
            .expect("delete");
        let Deleted::Pending(mut held) = d else {
            panic!("removed despite a finalizer")
        };
        held["metadata"]["finalizers"] = json!([]);
        r.update(cms, Some("default"), "c", None, &UserInfo::admin(), |_| {
            Ok(held)
        })
        .expect("update");
        assert!(r.get(cms, Some("default"), "c").is_err());
    }

    #[test]
    fn events_v1_are_core_events() {
        let r = registry();
        let v1 = find(Gvr::EVENTS_V1).expect("served");
        let core = find(Gvr::EVENTS).expect("served");
        let e = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e1"},
            "regarding": {"kind": "Pod", "name": "p"},
            "note": "hello", "reason": "Started", "type": "Normal",
            "reportingController": "kubelet", "reportingInstance": "n1", "action": "Start",
            "eventTime": "2024-01-01T00:00:00.000000Z",
        });
        r.create(v1, Some("default"), e, &UserInfo::admin())
            .expect("create");
        let got = r.get(core, Some("default"), "e1").expect("get");
        assert_eq!(got["apiVersion"], "v1");
        assert_eq!(got["involvedObject"]["name"], "p");
        assert_eq!(got["message"], "hello");
        assert_eq!(got["reportingComponent"], "kubelet");
        let back = r.get(v1, Some("default"), "e1").expect("get");
        assert_eq!(back["note"], "hello");
    }
}
