//! How an exec or attach ended, as the error channel reports it: a `metav1.Status` JSON
//! (v4 and later), or for older protocols the error text on failure and nothing on
//! success. client-go turns `NonZeroExitCode` with an `ExitCode` cause into the exit
//! code that `kubectl exec` returns.

use serde::Serialize;

/// The end of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited (or was killed: 128 + signal) with this code.
    Exited { code: i32, cmd: Vec<String> },
    /// Nothing ran, or it could not be followed to its end.
    Failed(String),
}

#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

impl Outcome {
    fn message(&self) -> Option<String> {
        match self {
            Outcome::Exited { code: 0, .. } => None,
            Outcome::Exited { code, cmd } => Some(format!(
                "command terminated with non-zero exit code: error executing command {cmd:?}, exit code {code}"
            )),
            Outcome::Failed(msg) => Some(format!("Internal error occurred: {msg}")),
        }
    }

    /// The `metav1.Status` JSON of the v4 and v5 protocols.
    pub fn to_json(&self) -> Vec<u8> {
        let status = match self {
            Outcome::Exited { code: 0, .. } => Status {
                metadata: Empty {},
                status: "Success",
                message: None,
                reason: None,
                details: None,
                code: None,
            },
            Outcome::Exited { code, .. } => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("NonZeroExitCode"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: Some("ExitCode"),
                        message: code.to_string(),
                    }],
                }),
                code: None,
            },
            Outcome::Failed(msg) => Status {
                metadata: Empty {},
                status: "Failure",
                message: self.message(),
                reason: Some("InternalError"),
                details: Some(Details {
                    causes: vec![Cause {
                        reason: None,
                        message: msg.clone(),
                    }],
                }),
                code: Some(500),
            },
        };
        // Serializing these plain structs cannot fail.
        serde_json::to_vec(&status).unwrap_or_default()
    }

    /// The error text of the v1–v3 protocols: nothing on success.
    pub fn to_text(&self) -> Option<String> {
        self.message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_documents() {
        let cmd = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        let cases = [
            (
                Outcome::Exited {
                    code: 0,
                    cmd: cmd.clone(),
                },
                r#"{"metadata":{},"status":"Success"}"#.to_string(),
                None,
            ),
            (
                Outcome::Exited {
                    code: 3,
                    cmd: cmd.clone(),
                },
                concat!(
                    r#"{"metadata":{},"status":"Failure","#,
                    r#""message":"command terminated with non-zero exit code: error executing command [\"sh\", \"-c\", \"exit 3\"], exit code 3","#,
                    r#""reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
                )
                .to_string(),
                Some(
                    "command terminated with non-zero exit code: error executing command [\"sh\", \"-c\", \"exit 3\"], exit code 3"
                        .to_string(),
                ),
            ),
            (
                Outcome::Failed("no such container".into()),
                concat!(
                    r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: no such container","#,
                    r#""reason":"InternalError","details":{"causes":[{"message":"no such container"}]},"code":500}"#
                )
                .to_string(),
                Some("Internal error occurred: no such container".to_string()),
            ),
        ];
        for (outcome, json, text) in cases {
            assert_eq!(
                String::from_utf8(outcome.to_json()).expect("test fixture"),
                json
            );
            assert_eq!(outcome.to_text(), text);
        }
    }

    #[test]
    fn exit_code_is_where_client_go_reads_it() {
        let json = Outcome::Exited {
            code: 137,
            cmd: vec!["sleep".into()],
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_slice(&json).expect("test fixture");
        assert_eq!(v["reason"], "NonZeroExitCode");
        let cause = &v["details"]["causes"][0];
        assert_eq!(
            (cause["reason"].as_str(), cause["message"].as_str()),
            (Some("ExitCode"), Some("137"))
        );
    }
}
