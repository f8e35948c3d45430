//! The engine's CRI client: any runtime.v1 endpoint over a unix socket (ours,
//! containerd, CRI-O), and reading back what the runtime has for a pod.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use proto::v1;
use proto::v1::image_service_client::ImageServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{LABEL_POD_UID, Observed};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container runtime endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("{rpc}: {status}")]
    Rpc {
        rpc: &'static str,
        #[source]
        status: tonic::Status,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// gRPC messages up to 16 MiB, as kubelet allows.
const MAX_MESSAGE: usize = 16 << 20;

/// Clients of a CRI runtime's two services, cheap to clone.
#[derive(Debug, Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// `unix:///run/x.sock` or a plain path → the socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(Error::Endpoint {
            endpoint: endpoint.into(),
            reason: "only unix sockets are supported (unix:///path/to.sock)".into(),
        });
    }
    Ok(PathBuf::from(path))
}

impl Cri {
    /// Connects (lazily: the first call dials) to the runtime at `endpoint`.
    pub fn connect(endpoint: &str) -> Result<Self> {
        let socket = socket_path(endpoint)?;
        let channel = channel(&socket).map_err(|reason| Error::Endpoint {
            endpoint: endpoint.into(),
            reason,
        })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }

    /// Everything the runtime has for the pods it runs for us, by pod UID: sandboxes
    /// newest first, and the status of every container.
    pub async fn observe_all(&self) -> Result<HashMap<String, Observed>> {
        let mut rt = self.runtime.clone();
        let sandboxes = rt
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .map_err(|status| Error::Rpc {
                rpc: "ListPodSandbox",
                status,
            })?
            .into_inner()
            .items;
        let containers = rt
            .list_containers(v1::ListContainersRequest { filter: None })
            .await
            .map_err(|status| Error::Rpc {
                rpc: "ListContainers",
                status,
            })?
            .into_inner()
            .containers;
        let mut out: HashMap<String, Observed> = HashMap::new();
        let mut uid_of_sandbox = HashMap::new();
        for sb in sandboxes {
            let Some(uid) = sb.labels.get(LABEL_POD_UID).cloned() else {
                continue;
            };
            let status = match self.sandbox_status(&sb.id).await? {
                Some(s) => s,
                None => continue,
            };
            uid_of_sandbox.insert(sb.id.clone(), uid.clone());
            out.entry(uid).or_default().sandboxes.push(status);
        }
        for c in containers {
            let Some(uid) = uid_of_sandbox.get(&c.pod_sandbox_id).cloned() else {
                continue;
            };
            if let Some(status) = self.container_status(&c.id).await? {
                out.entry(uid).or_default().containers.push(status);
            }
        }
        for o in out.values_mut() {
            o.sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
            o.containers
                .sort_by_key(|c| std::cmp::Reverse(c.created_at));
        }
        Ok(out)
    }

    /// What the runtime has for one pod.
    pub async fn observe(&self, uid: &str) -> Result<Observed> {
        let mut rt = self.runtime.clone();
        let selector: HashMap<String, String> =
            [(LABEL_POD_UID.to_string(), uid.to_string())].into();
        let sandboxes = rt
            .list_pod_sandbox(v1::ListPodSandboxRequest {
                filter: Some(v1::PodSandboxFilter {
                    label_selector: selector.clone(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|status| Error::Rpc {
                rpc: "ListPodSandbox",
                status,
            })?
            .into_inner()
            .items;
        let mut obs = Observed::default();
        for sb in &sandboxes {
            if let Some(s) = self.sandbox_status(&sb.id).await? {
                obs.sandboxes.push(s);
            }
            let containers = rt
                .list_containers(v1::ListContainersRequest {
                    filter: Some(v1::ContainerFilter {
                        pod_sandbox_id: sb.id.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(|status| Error::Rpc {
                    rpc: "ListContainers",
                    status,
                })?
                .into_inner()
                .containers;
            for c in containers {
                if let Some(s) = self.container_status(&c.id).await? {
                    obs.containers.push(s);
                }
            }
        }
        obs.sandboxes
            .sort_by_key(|s| std::cmp::Reverse(s.created_at));
        obs.containers
            .sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(obs)
    }

    /// A sandbox's status, `None` if it went away meanwhile.
    async fn sandbox_status(&self, id: &str) -> Result<Option<v1::PodSandboxStatus>> {
        match self
            .runtime
            .clone()
            .pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().status),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Rpc {
                rpc: "PodSandboxStatus",
                status,
            }),
        }
    }

    /// A container's status, `None` if it went away meanwhile.
    async fn container_status(&self, id: &str) -> Result<Option<v1::ContainerStatus>> {
        match self
            .runtime
            .clone()
            .container_status(v1::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().status.map(crate::termination::with_message)),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Rpc {
                rpc: "ContainerStatus",
                status,
            }),
        }
    }
}

fn channel(socket: &Path) -> std::result::Result<Channel, String> {
    let socket = socket.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::]:0").map_err(|e| e.to_string())?;
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").ok(),
            Some(PathBuf::from("/run/containerd/containerd.sock"))
        );
        assert_eq!(
            socket_path("/run/x.sock").ok(),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("npipe:////./pipe/x").is_err());
    }
}
