//! Label and field selectors, as `?labelSelector=` and `?fieldSelector=` take them.
//!
//! Label selectors have the full set-based grammar of `k8s.io/apimachinery/pkg/labels`
//! (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<1`). Field
//! selectors are equality terms (`=`, `==`, `!=`, with `\,` `\=` `\\` escapes) over the
//! fields each resource makes selectable upstream; any other field is refused with
//! `field label not supported`, as the real server does.

use serde_json::Value;

use super::resources::{Gvr, Resource};

/// A parse failure: the message a 400 BadRequest carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("unable to parse requirement: {0}")]
    Label(String),
    #[error("invalid selector: {0}")]
    Field(String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, PartialEq)]
enum LabelOp {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    GreaterThan(i64),
    LessThan(i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    requirements: Vec<(String, LabelOp)>,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || !key.chars().all(is_key_char) {
        return Err(Error::Label(format!("invalid label key {key:?}")));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<String, Error> {
    let value = value.trim();
    if value.len() > 63
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::Label(format!("invalid label value: {value:?}")));
    }
    Ok(value.to_string())
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str) -> Result<Vec<String>, Error> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| Error::Label(format!("expected a parenthesized set, found {rest:?}")))?;
    inner.split(',').map(check_value).collect()
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(Error::Label(format!("found empty requirement in {s:?}")));
            }
            if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                check_key(key)?;
                requirements.push((key.to_string(), LabelOp::DoesNotExist));
                continue;
            }
            let end = part.find(|c: char| !is_key_char(c)).unwrap_or(part.len());
            let (key, rest) = part.split_at(end);
            check_key(key)?;
            let rest = rest.trim_start();
            let op = if rest.is_empty() {
                LabelOp::Exists
            } else if let Some(v) = rest.strip_prefix("==") {
                LabelOp::Equals(check_value(v)?)
            } else if let Some(v) = rest.strip_prefix("!=") {
                LabelOp::NotEquals(check_value(v)?)
            } else if let Some(v) = rest.strip_prefix('=') {
                LabelOp::Equals(check_value(v)?)
            } else if let Some(v) = rest.strip_prefix('>') {
                LabelOp::GreaterThan(v.trim().parse().map_err(|_| {
                    Error::Label(format!(
                        "for 'gt' operator, the value must be an integer: {v:?}"
                    ))
                })?)
            } else if let Some(v) = rest.strip_prefix('<') {
                LabelOp::LessThan(v.trim().parse().map_err(|_| {
                    Error::Label(format!(
                        "for 'lt' operator, the value must be an integer: {v:?}"
                    ))
                })?)
            } else if let Some(v) = rest.strip_prefix("notin") {
                LabelOp::NotIn(parse_set(v)?)
            } else if let Some(v) = rest.strip_prefix("in") {
                LabelOp::In(parse_set(v)?)
            } else {
                return Err(Error::Label(format!("unknown operator in {part:?}")));
            };
            requirements.push((key.to_string(), op));
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `obj`'s `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|(key, op)| {
            let value = get(key);
            match op {
                LabelOp::Exists => value.is_some(),
                LabelOp::DoesNotExist => value.is_none(),
                LabelOp::Equals(v) => value == Some(v.as_str()),
                LabelOp::NotEquals(v) => value != Some(v.as_str()),
                LabelOp::In(set) => value.is_some_and(|x| set.iter().any(|v| v == x)),
                LabelOp::NotIn(set) => value.is_none_or(|x| set.iter().all(|v| v != x)),
                LabelOp::GreaterThan(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x > *n),
                LabelOp::LessThan(n) => value
                    .and_then(|x| x.parse::<i64>().ok())
                    .is_some_and(|x| x < *n),
            }
        })
    }
}

/// The fields a resource can be selected by, besides `metadata.name` and
/// `metadata.namespace` (upstream's `GetAttrs`/`ToSelectableFields` of each registry).
fn selectable_fields(storage: Gvr) -> &'static [&'static str] {
    match (storage.group, storage.resource) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "nodes") => &["spec.unschedulable"],
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("certificates.k8s.io", "certificatesigningrequests") => &["spec.signerName"],
        _ => &[],
    }
}

/// events.k8s.io/v1 field names for what is stored as a core/v1 Event.
fn storage_field(res: &Resource, field: &str) -> String {
    if res.group != "events.k8s.io" {
        return field.to_string();
    }
    if let Some(rest) = field.strip_prefix("regarding.") {
        return format!("involvedObject.{rest}");
    }
    match field {
        "reportingController" => "reportingComponent".into(),
        "deprecatedSource" => "source".into(),
        other => other.to_string(),
    }
}

/// The value a field selector compares for `field` of a stored object.
fn field_value(obj: &Value, field: &str) -> String {
    let path = match field {
        "source" => "/source/component".to_string(),
        f => format!("/{}", f.replace('.', "/")),
    };
    match obj.pointer(&path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if matches!(field, "spec.hostNetwork" | "spec.unschedulable") => "false".into(),
        _ => String::new(),
    }
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    /// (storage field, equal?, value)
    terms: Vec<(String, bool, String)>,
}

/// Splits `s` on unescaped `sep`, keeping escapes in the pieces.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            current.push(c);
            if let Some(n) = chars.next() {
                current.push(n);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

fn unescape(s: &str) -> Result<String, Error> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('\\' | ',' | '=')) => out.push(n),
                other => {
                    return Err(Error::Field(format!(
                        "invalid escape sequence {other:?} in {s:?}"
                    )));
                }
            },
            ',' | '=' => return Err(Error::Field(format!("unescaped {c:?} in value {s:?}"))),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The first unescaped operator in a term: (key, equal?, value).
fn split_term(term: &str) -> Result<(String, bool, String), Error> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                return Ok((
                    term[..i].trim().to_string(),
                    false,
                    unescape(&term[i + 2..])?,
                ));
            }
            b'=' => {
                let skip = if bytes.get(i + 1) == Some(&b'=') {
                    2
                } else {
                    1
                };
                return Ok((
                    term[..i].trim().to_string(),
                    true,
                    unescape(&term[i + skip..])?,
                ));
            }
            _ => i += 1,
        }
    }
    Err(Error::Field(format!(
        "invalid selector: '{term}'; can't understand '{term}'"
    )))
}

impl FieldSelector {
    /// Parses `s` for the resource `res`, refusing fields it cannot be selected by.
    pub fn parse(s: &str, res: &Resource) -> Result<Self, Error> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { terms });
        }
        let allowed = selectable_fields(res.storage());
        for term in split_unescaped(s, ',') {
            let (field, eq, value) = split_term(&term)?;
            let field = storage_field(res, &field);
            let known = matches!(field.as_str(), "metadata.name" | "metadata.namespace")
                || allowed.contains(&field.as_str());
            if !known {
                return Err(Error::UnsupportedField(field));
            }
            terms.push((field, eq, value));
        }
        Ok(Self { terms })
    }

    /// The value `metadata.name` is required to equal, if any (a watch of one object).
    pub fn name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(f, eq, _)| f == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }

    /// Whether the stored object satisfies every term.
    pub fn matches(&self, obj: &Value) -> bool {
        self.terms
            .iter()
            .all(|(field, eq, value)| (field_value(obj, field) == *value) == *eq)
    }
}

/// A label and a field selector together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selector {
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::resources::{Gvr, find};
    use super::*;

    fn pod(labels: Value, node: &str, phase: &str) -> Value {
        json!({
            "metadata": {"name": "p", "namespace": "default", "labels": labels},
            "spec": {"nodeName": node},
            "status": {"phase": phase},
        })
    }

    #[test]
    fn label_selectors() {
        let obj = pod(json!({"app": "web", "tier": "front", "n": "5"}), "", "");
        let table = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("missing notin (x)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app=web,tier=back", false),
            ("app=web, tier in (front)", true),
            ("n>4", true),
            ("n<5", false),
        ];
        for (sel, want) in table {
            let parsed = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(parsed.matches(&obj), want, "{sel}");
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for sel in ["app=web,", "a in b", "a >x", "!", "a=(b"] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn field_selectors_on_pods() {
        let pods = find(Gvr::PODS).expect("served");
        let obj = pod(json!({}), "node-1", "Running");
        let table = [
            ("spec.nodeName=node-1", true),
            ("spec.nodeName==node-1", true),
            ("spec.nodeName!=node-1", false),
            ("spec.nodeName=", false),
            ("metadata.name=p,metadata.namespace=default", true),
            ("status.phase!=Succeeded,status.phase!=Failed", true),
            ("spec.hostNetwork=false", true),
        ];
        for (sel, want) in table {
            let parsed = FieldSelector::parse(sel, pods).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(parsed.matches(&obj), want, "{sel}");
        }
        let unbound = pod(json!({}), "", "Pending");
        let parsed = FieldSelector::parse("spec.nodeName=", pods).expect("parse");
        assert!(parsed.matches(&unbound));
    }

    #[test]
    fn unsupported_fields_are_refused() {
        let pods = find(Gvr::PODS).expect("served");
        assert_eq!(
            FieldSelector::parse("spec.foo=bar", pods),
            Err(Error::UnsupportedField("spec.foo".into()))
        );
        let cms = find(Gvr::CONFIGMAPS).expect("served");
        assert!(FieldSelector::parse("spec.nodeName=x", cms).is_err());
    }

    #[test]
    fn escaped_values() {
        let events = find(Gvr::EVENTS).expect("served");
        let sel = FieldSelector::parse(r"reason=a\,b\=c", events).expect("parse");
        assert!(sel.matches(&json!({"reason": "a,b=c"})));
    }

    #[test]
    fn events_v1_fields_select_the_stored_event() {
        let events = find(Gvr::EVENTS_V1).expect("served");
        let sel = FieldSelector::parse("regarding.name=p,reportingController=kubelet", events)
            .expect("parse");
        assert!(sel.matches(&json!({
            "involvedObject": {"name": "p"},
            "reportingComponent": "kubelet",
        })));
    }
}
