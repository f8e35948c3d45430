//! API errors as the `metav1.Status` bodies a real API server answers with.
//!
//! This is the one place that turns a failure into an HTTP status code and a `Status`
//! object (`kind: Status`, `status: Failure`, `reason`, `message`, `details`, `code`),
//! with the reasons and message shapes of `k8s.io/apimachinery/pkg/api/errors`.

use serde_json::{Value, json};

/// One field-level cause of an `Invalid` error (`details.causes[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueForbidden`, ...
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

/// A failed API request: HTTP code, `Status.reason`, message and details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details`, when sent.
    pub details: Option<Box<Details>>,
}

/// `Status.details`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// Empty when the error is not about one object.
    pub name: String,
    pub group: String,
    /// The resource (`pods`) for most errors, the kind (`Pod`) for `Invalid`.
    pub kind: String,
    pub causes: Vec<Cause>,
}

/// `pods` or `leases.coordination.k8s.io`, as the real server names a group resource.
pub fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            name: name.to_string(),
            group: group.to_string(),
            kind: kind.to_string(),
            causes: Vec::new(),
        }));
        self
    }

    /// 404 `pods "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let msg = format!("{} \"{name}\" not found", qualified(group, resource));
        Self::new(404, "NotFound", msg).about(group, resource, name)
    }

    /// 404 for a path that names nothing the server serves.
    pub fn no_route() -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(Box::default());
        e
    }

    /// 409 `pods "x" already exists`.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let msg = format!("{} \"{name}\" already exists", qualified(group, resource));
        Self::new(409, "AlreadyExists", msg).about(group, resource, name)
    }

    /// 409 for an update against a stale `resourceVersion`.
    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 409 `Operation cannot be fulfilled on pods "x": <why>`.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            qualified(group, resource)
        );
        Self::new(409, "Conflict", msg).about(group, resource, name)
    }

    /// 422 `Pod "x" is invalid: <causes>`; `details.kind` is the kind, as upstream.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let what = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>();
        let list = if what.len() == 1 {
            what.join("")
        } else {
            format!("[{}]", what.join(", "))
        };
        let qualified_kind = qualified(group, kind);
        let msg = format!("{qualified_kind} \"{name}\" is invalid: {list}");
        let mut e = Self::new(422, "Invalid", msg).about(group, kind, name);
        if let Some(d) = &mut e.details {
            d.causes = causes;
        }
        e
    }

    /// 422 Invalid with one cause.
    pub fn invalid_field(
        group: &str,
        kind: &str,
        name: &str,
        reason: &'static str,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let cause = Cause {
            reason,
            field: field.to_string(),
            message: message.into(),
        };
        Self::invalid(group, kind, name, vec![cause])
    }

    /// 422 Invalid without an object (a patch that cannot be applied).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 410 `too old resource version: <asked> (<oldest kept>)`.
    pub fn expired(asked: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
        )
    }

    /// 405 for a verb the resource does not serve.
    pub fn method_not_allowed() -> Self {
        let mut e = Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        );
        e.details = Some(Box::default());
        e
    }

    /// 403 Forbidden for an operation the server refuses on this object.
    pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let msg = format!(
            "{} \"{name}\" is forbidden: {why}",
            qualified(group, resource)
        );
        Self::new(403, "Forbidden", msg).about(group, resource, name)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 415 for a body format the server does not take.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type:?}) - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json"
            ),
        )
    }

    /// 500 for a bug in this server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = serde_json::Map::new();
            if !d.name.is_empty() {
                details.insert("name".into(), json!(d.name));
            }
            if !d.group.is_empty() {
                details.insert("group".into(), json!(d.group));
            }
            if !d.kind.is_empty() {
                details.insert("kind".into(), json!(d.kind));
            }
            if !d.causes.is_empty() {
                let causes = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect::<Vec<_>>();
                details.insert("causes".into(), json!(causes));
            }
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// The `Status` a successful delete answers with for resources that do not return the
/// deleted object.
pub fn success(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": resource, "uid": uid});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

impl From<super::store::Error> for ApiError {
    fn from(e: super::store::Error) -> Self {
        match e {
            super::store::Error::Expired { asked, oldest } => Self::expired(asked, oldest),
        }
    }
}

impl From<super::selectors::Error> for ApiError {
    fn from(e: super::selectors::Error) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<super::patch::Error> for ApiError {
    fn from(e: super::patch::Error) -> Self {
        match e {
            super::patch::Error::Malformed(m) => Self::bad_request(m),
            super::patch::Error::NotApplicable(m) => Self::unprocessable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_group_resource() {
        let s = ApiError::not_found("coordination.k8s.io", "leases", "n1").to_status();
        assert_eq!(s["message"], "leases.coordination.k8s.io \"n1\" not found");
        assert_eq!(s["details"]["kind"], "leases");
        assert_eq!(s["details"]["group"], "coordination.k8s.io");
        assert_eq!(s["code"], 404);
    }

    #[test]
    fn invalid_lists_its_causes() {
        let e = ApiError::invalid_field(
            "",
            "Pod",
            "",
            "FieldValueRequired",
            "metadata.name",
            "Required value: name or generateName is required",
        );
        let s = e.to_status();
        assert_eq!(
            s["message"],
            "Pod \"\" is invalid: metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(s["reason"], "Invalid");
    }
}
