//! Request bodies in the Kubernetes protobuf encoding, decoded to JSON.
//!
//! client-go's typed clients (kubectl's `create configmap|namespace|secret|token`,
//! `auth can-i`, `auth whoami`, `certificate approve`) send protobuf bodies, and the real
//! server takes them. The envelope is the `k8s\0` magic and a `runtime.Unknown` holding the
//! type and the message bytes; the messages are decoded with the field numbers of
//! upstream's `generated.proto` for the kinds listed in [`schema`]. Other kinds answer
//! 415. Responses are always JSON, which client-go accepts.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::status::ApiError;

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bytes,
    Int,
    Bool,
    Time,
    Msg(&'static [F]),
    /// map<string, string>
    StrMap,
    /// map<string, bytes>, base64 in JSON
    BytesMap,
    /// map<string, ExtraValue{repeated string items = 1}>
    ExtraMap,
}

#[derive(Clone, Copy)]
struct F {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> F {
    F {
        num,
        name,
        ty,
        repeated: false,
    }
}

const fn rep(num: u64, name: &'static str, ty: Ty) -> F {
    F {
        num,
        name,
        ty,
        repeated: true,
    }
}

const OWNER_REFERENCE: &[F] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];

const OBJECT_META: &[F] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::StrMap),
    f(12, "annotations", Ty::StrMap),
    rep(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    rep(14, "finalizers", Ty::Str),
];

const META: F = f(1, "metadata", Ty::Msg(OBJECT_META));

const CONFIG_MAP: &[F] = &[
    META,
    f(2, "data", Ty::StrMap),
    f(3, "binaryData", Ty::BytesMap),
    f(4, "immutable", Ty::Bool),
];

const SECRET: &[F] = &[
    META,
    f(2, "data", Ty::BytesMap),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::StrMap),
    f(5, "immutable", Ty::Bool),
];

const NAMESPACE: &[F] = &[
    META,
    f(2, "spec", Ty::Msg(&[rep(1, "finalizers", Ty::Str)])),
];

const LOCAL_OBJECT_REFERENCE: &[F] = &[f(1, "name", Ty::Str)];

const SERVICE_ACCOUNT: &[F] = &[
    META,
    rep(3, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    f(4, "automountServiceAccountToken", Ty::Bool),
];

const RESOURCE_ATTRIBUTES: &[F] = &[
    f(1, "namespace", Ty::Str),
    f(2, "verb", Ty::Str),
    f(3, "group", Ty::Str),
    f(4, "version", Ty::Str),
    f(5, "resource", Ty::Str),
    f(6, "subresource", Ty::Str),
    f(7, "name", Ty::Str),
];

const NON_RESOURCE_ATTRIBUTES: &[F] = &[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)];

const SELF_SUBJECT_ACCESS_REVIEW: &[F] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
        ]),
    ),
];

const SUBJECT_ACCESS_REVIEW: &[F] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            f(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
            f(3, "user", Ty::Str),
            rep(4, "groups", Ty::Str),
            f(5, "extra", Ty::ExtraMap),
            f(6, "uid", Ty::Str),
        ]),
    ),
];

const TOKEN_REVIEW: &[F] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[f(1, "token", Ty::Str), rep(2, "audiences", Ty::Str)]),
    ),
];

const TOKEN_REQUEST: &[F] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            rep(1, "audiences", Ty::Str),
            f(4, "expirationSeconds", Ty::Int),
            f(
                3,
                "boundObjectRef",
                Ty::Msg(&[
                    f(1, "kind", Ty::Str),
                    f(2, "apiVersion", Ty::Str),
                    f(3, "name", Ty::Str),
                    f(4, "uid", Ty::Str),
                ]),
            ),
        ]),
    ),
];

const CSR_CONDITION: &[F] = &[
    f(1, "type", Ty::Str),
    f(6, "status", Ty::Str),
    f(2, "reason", Ty::Str),
    f(3, "message", Ty::Str),
    f(4, "lastUpdateTime", Ty::Time),
    f(5, "lastTransitionTime", Ty::Time),
];

const CSR: &[F] = &[
    META,
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "request", Ty::Bytes),
            f(7, "signerName", Ty::Str),
            f(8, "expirationSeconds", Ty::Int),
            rep(5, "usages", Ty::Str),
            f(2, "username", Ty::Str),
            f(3, "uid", Ty::Str),
            rep(4, "groups", Ty::Str),
            f(6, "extra", Ty::ExtraMap),
        ]),
    ),
    f(
        3,
        "status",
        Ty::Msg(&[
            rep(1, "conditions", Ty::Msg(CSR_CONDITION)),
            f(2, "certificate", Ty::Bytes),
        ]),
    ),
];

const DELETE_OPTIONS: &[F] = &[
    f(1, "gracePeriodSeconds", Ty::Int),
    f(
        2,
        "preconditions",
        Ty::Msg(&[f(1, "uid", Ty::Str), f(2, "resourceVersion", Ty::Str)]),
    ),
    f(3, "orphanDependents", Ty::Bool),
    f(4, "propagationPolicy", Ty::Str),
    rep(5, "dryRun", Ty::Str),
];

/// The message schema of a kind sent as protobuf, if decoded here.
fn schema(kind: &str) -> Option<&'static [F]> {
    Some(match kind {
        "ConfigMap" => CONFIG_MAP,
        "Secret" => SECRET,
        "Namespace" => NAMESPACE,
        "ServiceAccount" => SERVICE_ACCOUNT,
        "SelfSubjectReview" => &[META],
        "SelfSubjectAccessReview" => SELF_SUBJECT_ACCESS_REVIEW,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => SUBJECT_ACCESS_REVIEW,
        "TokenReview" => TOKEN_REVIEW,
        "TokenRequest" => TOKEN_REQUEST,
        "CertificateSigningRequest" => CSR,
        "DeleteOptions" => DELETE_OPTIONS,
        _ => return None,
    })
}

/// One wire value.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn malformed() -> ApiError {
    ApiError::bad_request("malformed protobuf body")
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, ApiError> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos).ok_or_else(malformed)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift.min(63);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(malformed())
}

/// The fields of a message, in order.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ApiError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| malformed())?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or_else(malformed)?;
                let bytes = &buf[pos..end];
                pos = end;
                Wire::Bytes(bytes)
            }
            5 => {
                pos += 4;
                Wire::Fixed
            }
            _ => return Err(malformed()),
        };
        if pos > buf.len() {
            return Err(malformed());
        }
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn string(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed())
}

/// A map entry `{key = 1, value = 2}` as (key, value bytes).
fn entry(bytes: &[u8]) -> Result<(String, &[u8]), ApiError> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (n, w) in fields(bytes)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => key = string(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn value(ty: Ty, wire: Wire<'_>) -> Result<Value, ApiError> {
    Ok(match (ty, wire) {
        (Ty::Str, Wire::Bytes(b)) => json!(string(b)?),
        (Ty::Bytes, Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        // Two's complement: negative int32/int64 come as ten-byte varints.
        (Ty::Int, Wire::Varint(v)) => json!(v as i64),
        (Ty::Bool, Wire::Varint(v)) => json!(v != 0),
        (Ty::Time, Wire::Bytes(b)) => {
            let mut seconds = 0i64;
            for (n, w) in fields(b)? {
                if let (1, Wire::Varint(v)) = (n, w) {
                    seconds = v as i64;
                }
            }
            if seconds == 0 {
                return Ok(Value::Null);
            }
            let t = chrono::DateTime::from_timestamp(seconds, 0).ok_or_else(malformed)?;
            json!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        }
        (Ty::Msg(schema), Wire::Bytes(b)) => message(schema, b)?,
        _ => return Err(malformed()),
    })
}

fn message(schema: &[F], buf: &[u8]) -> Result<Value, ApiError> {
    let mut out = Map::new();
    for (num, wire) in fields(buf)? {
        let Some(field) = schema.iter().find(|f| f.num == num) else {
            continue;
        };
        match (field.ty, wire) {
            (Ty::StrMap | Ty::BytesMap | Ty::ExtraMap, Wire::Bytes(b)) => {
                let (k, v) = entry(b)?;
                let v = match field.ty {
                    Ty::StrMap => json!(string(v)?),
                    Ty::BytesMap => json!(base64::engine::general_purpose::STANDARD.encode(v)),
                    _ => {
                        let mut items = Vec::new();
                        for (n, w) in fields(v)? {
                            if let (1, Wire::Bytes(s)) = (n, w) {
                                items.push(json!(string(s)?));
                            }
                        }
                        json!(items)
                    }
                };
                let map = out.entry(field.name).or_insert_with(|| json!({}));
                if let Value::Object(m) = map {
                    m.insert(k, v);
                }
            }
            (ty, wire) if field.repeated => {
                let v = value(ty, wire)?;
                let list = out.entry(field.name).or_insert_with(|| json!([]));
                if let Value::Array(l) = list {
                    l.push(v);
                }
            }
            (ty, wire) => {
                // Go writes empty strings and zero times that its JSON leaves out
                // (`omitempty`, a zero `metav1.Time` is null): leave them out too.
                let v = value(ty, wire)?;
                if v.as_str().is_some_and(str::is_empty) || v.is_null() {
                    continue;
                }
                out.insert(field.name.to_string(), v);
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf request body to the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let unknown = body.strip_prefix(MAGIC).ok_or_else(malformed)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, w) in fields(unknown)? {
        match (n, w) {
            (1, Wire::Bytes(type_meta)) => {
                for (n, w) in fields(type_meta)? {
                    match (n, w) {
                        (1, Wire::Bytes(b)) => api_version = string(b)?,
                        (2, Wire::Bytes(b)) => kind = string(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let schema = schema(&kind)
        .ok_or_else(|| ApiError::unsupported_media_type(&format!("{MEDIA_TYPE} ({kind})")))?;
    let mut obj = message(schema, raw)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(num: u64, wire: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((num << 3) | wire) as u8];
        if wire == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_config_map() {
        let meta = [
            field(1, 2, b"cm"),
            field(11, 2, &[field(1, 2, b"a"), field(2, 2, b"b")].concat()),
        ]
        .concat();
        let cm = [
            field(1, 2, &meta),
            field(2, 2, &[field(1, 2, b"k"), field(2, 2, b"v")].concat()),
        ]
        .concat();
        let type_meta = [field(1, 2, b"v1"), field(2, 2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, 2, &type_meta), field(2, 2, &cm)].concat();
        let obj = decode(&body).expect("decode");
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {"a": "b"}}, "data": {"k": "v"}})
        );
    }

    #[test]
    fn refuses_garbage_and_unknown_kinds() {
        assert_eq!(decode(b"{}").map_err(|e| e.code), Err(400));
        let type_meta = [field(1, 2, b"v1"), field(2, 2, b"Pod")].concat();
        let body = [MAGIC.to_vec(), field(1, 2, &type_meta)].concat();
        assert_eq!(decode(&body).map_err(|e| e.code), Err(415));
    }
}
