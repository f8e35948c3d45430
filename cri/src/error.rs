//! The crate's error type and the one place where errors become gRPC status codes.

use std::path::PathBuf;

use crate::{image, runtime, streaming};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("missed {0} container events; relist and subscribe again")]
    EventsLagged(u64),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    #[error(transparent)]
    Streaming(#[from] streaming::Error),
    #[error("{what} at {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::EventsLagged(_) => Code::ResourceExhausted,
            Error::Image(e) => image_code(e),
            Error::Runtime(e) => runtime_code(e),
            Error::Streaming(e) => streaming_code(e),
            Error::Io { .. } => Code::Internal,
        };
        // The full chain, so crictl shows the cause and not only the outer context.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        tonic::Status::new(code, message)
    }
}

fn image_code(err: &image::Error) -> tonic::Code {
    use image::Error as E;
    use tonic::Code;
    match err {
        E::InvalidReference { .. } => Code::InvalidArgument,
        E::NotFound { .. } | E::NotFoundOnHosts { .. } => Code::NotFound,
        E::CaFile { .. } => Code::InvalidArgument,
        E::Registry { .. } | E::AllHostsFailed { .. } => Code::Unavailable,
        E::Unauthorized { .. } => Code::PermissionDenied,
        E::NoMatchingPlatform { .. }
        | E::UnsupportedMediaType { .. }
        | E::DigestMismatch { .. }
        | E::BadBlob { .. }
        | E::SizeMismatch { .. }
        | E::DiffIdMismatch { .. }
        | E::BadManifest { .. }
        | E::BadConfig { .. }
        | E::Unpack { .. }
        | E::TooLarge { .. }
        | E::BadArchive { .. } => Code::FailedPrecondition,
        E::InUse { .. } => Code::FailedPrecondition,
        E::Io { .. } | E::Store { .. } | E::RegistryClient { .. } | E::Join(_) => Code::Internal,
    }
}

fn runtime_code(err: &runtime::Error) -> tonic::Code {
    use runtime::Error as E;
    use runtime::store::Error as S;
    use tonic::Code;
    match err {
        E::InvalidArgument(_) | E::Spec(runtime::spec::Error::InvalidArgument(_)) => {
            Code::InvalidArgument
        }
        E::FailedPrecondition(_) => Code::FailedPrecondition,
        E::DeadlineExceeded(_) => Code::DeadlineExceeded,
        E::NotFound { .. } | E::Store(S::NotFound { .. }) => Code::NotFound,
        E::Store(S::NameTaken { .. }) => Code::AlreadyExists,
        E::Store(S::Ambiguous { .. }) => Code::InvalidArgument,
        E::Image(e) => image_code(e),
        E::Store(_)
        | E::Spec(_)
        | E::Oci(_)
        | E::Monitor(_)
        | E::Cni(_)
        | E::Netns(_)
        | E::Rootfs(_)
        | E::Io { .. } => Code::Internal,
    }
}

fn streaming_code(err: &streaming::Error) -> tonic::Code {
    use streaming::Error as E;
    use tonic::Code;
    match err {
        E::InvalidArgument(_) => Code::InvalidArgument,
        E::Backend(e) => runtime_code(e),
        E::TooManyPending(_) => Code::ResourceExhausted,
        E::Bind { .. } => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_errors_map_like_the_runtime_errors_behind_them() {
        let not_running = runtime::Error::FailedPrecondition("container c is exited".into());
        let missing = runtime::Error::NotFound {
            kind: "container",
            id: "c".into(),
        };
        let bind = streaming::Error::Bind {
            addr: crate::config::DEFAULT_STREAMING_ADDR,
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let table = [
            (
                streaming::Error::InvalidArgument("tty and stderr".into()),
                tonic::Code::InvalidArgument,
            ),
            (not_running.into(), tonic::Code::FailedPrecondition),
            (missing.into(), tonic::Code::NotFound),
            (
                streaming::Error::TooManyPending(streaming::cache::Full),
                tonic::Code::ResourceExhausted,
            ),
            (bind, tonic::Code::Internal),
        ];
        for (err, code) in table {
            let text = err.to_string();
            let status = tonic::Status::from(Error::from(err));
            assert_eq!(status.code(), code, "{text}");
            assert!(status.message().contains(&text), "{status:?}");
        }
    }
}
