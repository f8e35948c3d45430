//! CRI `RuntimeService`: translation between the wire and `runtime::Runtime`. Errors
//! become gRPC codes in `crate::error`. RPCs this build does not implement answer
//! `Unimplemented` (never a fake success): checkpointing, pod-level metrics and pod
//! resource updates. The streaming ones (`Exec`, `Attach`, `PortForward`) return a URL
//! of `crate::streaming`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use proto::v1;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::runtime::Runtime;
use crate::streaming::StreamingServer;

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Items per message of a streamed listing, well under gRPC's message size limit.
const STREAM_CHUNK: usize = 500;

#[derive(Debug)]
pub struct RuntimeService {
    runtime: Arc<Runtime>,
    streaming: Arc<StreamingServer>,
}

impl RuntimeService {
    pub fn new(runtime: Arc<Runtime>, streaming: Arc<StreamingServer>) -> Self {
        Self { runtime, streaming }
    }
}

fn status(e: impl Into<Error>) -> Status {
    e.into().into()
}

/// Splits a listing into messages of at most `STREAM_CHUNK` items; none for no items.
fn chunked<T, R: Send + 'static>(items: Vec<T>, wrap: impl Fn(Vec<T>) -> R) -> Stream<R> {
    let mut out = Vec::new();
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        out.push(Ok(wrap(items.by_ref().take(STREAM_CHUNK).collect())));
    }
    Box::pin(futures::stream::iter(out))
}

#[tonic::async_trait]
impl v1::runtime_service_server::RuntimeService for RuntimeService {
    async fn version(
        &self,
        _req: Request<v1::VersionRequest>,
    ) -> Result<Response<v1::VersionResponse>, Status> {
        Ok(Response::new(v1::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: crate::RUNTIME_NAME.into(),
            runtime_version: crate::RUNTIME_VERSION.into(),
            runtime_api_version: proto::RUNTIME_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<v1::RunPodSandboxRequest>,
    ) -> Result<Response<v1::RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        let config = req
            .config
            .ok_or_else(|| status(Error::InvalidArgument("sandbox config is required".into())))?;
        let id = self
            .runtime
            .run_pod_sandbox(config, &req.runtime_handler)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<v1::StopPodSandboxRequest>,
    ) -> Result<Response<v1::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        self.runtime.stop_pod_sandbox(&id).await.map_err(status)?;
        Ok(Response::new(v1::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<v1::RemovePodSandboxRequest>,
    ) -> Result<Response<v1::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        self.runtime.remove_pod_sandbox(&id).await.map_err(status)?;
        Ok(Response::new(v1::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<v1::PodSandboxStatusRequest>,
    ) -> Result<Response<v1::PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        let resp = self
            .runtime
            .pod_sandbox_status(&req.pod_sandbox_id, req.verbose)
            .map_err(status)?;
        Ok(Response::new(resp))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<v1::ListPodSandboxRequest>,
    ) -> Result<Response<v1::ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter;
        Ok(Response::new(v1::ListPodSandboxResponse {
            items: self.runtime.list_pod_sandboxes(filter.as_ref()),
        }))
    }

    type StreamPodSandboxesStream = Stream<v1::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<v1::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = req.into_inner().filter;
        let items = self.runtime.list_pod_sandboxes(filter.as_ref());
        Ok(Response::new(chunked(items, |pod_sandboxes| {
            v1::StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn create_container(
        &self,
        req: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| {
            status(Error::InvalidArgument(
                "container config is required".into(),
            ))
        })?;
        let id = self
            .runtime
            .create_container(&req.pod_sandbox_id, config)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        req: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        self.runtime.start_container(&id).await.map_err(status)?;
        Ok(Response::new(v1::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::StopContainerResponse>, Status> {
        let req = req.into_inner();
        self.runtime
            .stop_container(&req.container_id, req.timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        let id = req.into_inner().container_id;
        self.runtime.remove_container(&id).await.map_err(status)?;
        Ok(Response::new(v1::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        let filter = req.into_inner().filter;
        Ok(Response::new(v1::ListContainersResponse {
            containers: self.runtime.list_containers(filter.as_ref()),
        }))
    }

    type StreamContainersStream = Stream<v1::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        req: Request<v1::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = req.into_inner().filter;
        let items = self.runtime.list_containers(filter.as_ref());
        Ok(Response::new(chunked(items, |containers| {
            v1::StreamContainersResponse { containers }
        })))
    }

    async fn container_status(
        &self,
        req: Request<v1::ContainerStatusRequest>,
    ) -> Result<Response<v1::ContainerStatusResponse>, Status> {
        let req = req.into_inner();
        let resp = self
            .runtime
            .container_status(&req.container_id, req.verbose)
            .map_err(status)?;
        Ok(Response::new(resp))
    }

    async fn update_container_resources(
        &self,
        req: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Result<Response<v1::UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        let linux = req.linux.ok_or_else(|| {
            status(Error::InvalidArgument(
                "linux resources are required (windows resources are not supported)".into(),
            ))
        })?;
        self.runtime
            .update_container_resources(&req.container_id, linux)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<v1::ReopenContainerLogRequest>,
    ) -> Result<Response<v1::ReopenContainerLogResponse>, Status> {
        let id = req.into_inner().container_id;
        self.runtime.reopen_container_log(&id).map_err(status)?;
        Ok(Response::new(v1::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        req: Request<v1::ExecSyncRequest>,
    ) -> Result<Response<v1::ExecSyncResponse>, Status> {
        let req = req.into_inner();
        let out = self
            .runtime
            .exec_sync(&req.container_id, &req.cmd, req.timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        req: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        let url = self
            .streaming
            .exec_url(req.into_inner())
            .map_err(Error::from)?;
        Ok(Response::new(v1::ExecResponse { url }))
    }

    async fn attach(
        &self,
        req: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        let url = self
            .streaming
            .attach_url(req.into_inner())
            .map_err(Error::from)?;
        Ok(Response::new(v1::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<v1::PortForwardRequest>,
    ) -> Result<Response<v1::PortForwardResponse>, Status> {
        let url = self
            .streaming
            .port_forward_url(req.into_inner())
            .map_err(Error::from)?;
        Ok(Response::new(v1::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        let id = req.into_inner().container_id;
        let stats = self.runtime.container_stats(&id).map_err(status)?;
        Ok(Response::new(v1::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<v1::ListContainerStatsRequest>,
    ) -> Result<Response<v1::ListContainerStatsResponse>, Status> {
        let filter = req.into_inner().filter;
        Ok(Response::new(v1::ListContainerStatsResponse {
            stats: self.runtime.list_container_stats(filter.as_ref()),
        }))
    }

    type StreamContainerStatsStream = Stream<v1::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        req: Request<v1::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = req.into_inner().filter;
        let items = self.runtime.list_container_stats(filter.as_ref());
        Ok(Response::new(chunked(items, |container_stats| {
            v1::StreamContainerStatsResponse { container_stats }
        })))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<v1::PodSandboxStatsRequest>,
    ) -> Result<Response<v1::PodSandboxStatsResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        let stats = self.runtime.pod_sandbox_stats(&id).map_err(status)?;
        Ok(Response::new(v1::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Result<Response<v1::ListPodSandboxStatsResponse>, Status> {
        let filter = req.into_inner().filter;
        Ok(Response::new(v1::ListPodSandboxStatsResponse {
            stats: self.runtime.list_pod_sandbox_stats(filter.as_ref()),
        }))
    }

    type StreamPodSandboxStatsStream = Stream<v1::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<v1::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = req.into_inner().filter;
        let items = self.runtime.list_pod_sandbox_stats(filter.as_ref());
        Ok(Response::new(chunked(items, |pod_sandbox_stats| {
            v1::StreamPodSandboxStatsResponse { pod_sandbox_stats }
        })))
    }

    /// kubelet sends the node's pod CIDR here. Like containerd without a CNI config
    /// template, we take note of it and change nothing: the CNI config in the conf dir
    /// decides the pod network.
    async fn update_runtime_config(
        &self,
        req: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<v1::UpdateRuntimeConfigResponse>, Status> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        let rewritten = self.runtime.set_pod_cidr(&cidr).map_err(status)?;
        if !rewritten {
            tracing::info!(pod_cidr = %cidr, "kubelet reported the pod CIDR; the CNI config decides the pod network");
        }
        Ok(Response::new(v1::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let verbose = req.into_inner().verbose;
        let mut info = HashMap::new();
        let cfg = self.runtime.config();
        if verbose {
            info.insert(
                "info".to_string(),
                serde_json::json!({
                    "runtimeName": crate::RUNTIME_NAME,
                    "version": crate::RUNTIME_VERSION,
                    "defaultRuntimeHandler": cfg.default_handler,
                    "cniConfDir": cfg.cni.conf_dir,
                    "cniBinDirs": cfg.cni.bin_dirs,
                    "sandboxImage": cfg.sandbox_image,
                })
                .to_string(),
            );
        }
        let runtime_handlers = runtime_handlers(cfg.handlers.keys(), &cfg.default_handler);
        Ok(Response::new(v1::StatusResponse {
            status: Some(v1::RuntimeStatus {
                conditions: self.runtime.conditions(),
            }),
            info,
            runtime_handlers,
            features: None,
        }))
    }

    async fn checkpoint_container(
        &self,
        req: Request<v1::CheckpointContainerRequest>,
    ) -> Result<Response<v1::CheckpointContainerResponse>, Status> {
        let req = req.into_inner();
        self.runtime
            .checkpoint_container(&req.container_id, &req.location, req.timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::CheckpointContainerResponse {}))
    }

    type GetContainerEventsStream = Stream<v1::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _req: Request<v1::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let rx = self.runtime.subscribe();
        let stream = futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(ev) => Some((Ok(ev), Some(rx))),
                // A client that fell behind has missed events: end its stream with an
                // error so it relists (kubelet does) rather than act on a gap.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "container event subscriber lagged; ending its stream"
                    );
                    Some((Err(Error::EventsLagged(n).into()), None))
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Result<Response<v1::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(v1::ListMetricDescriptorsResponse {
            descriptors: crate::runtime::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<v1::ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(v1::ListPodSandboxMetricsResponse {
            pod_metrics: self.runtime.list_pod_sandbox_metrics(),
        }))
    }

    type StreamPodSandboxMetricsStream = Stream<v1::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<v1::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        // One snapshot, sent in chunks, then the end of the stream (as containerd).
        Ok(Response::new(chunked(
            self.runtime.list_pod_sandbox_metrics(),
            |pod_sandbox_metrics| v1::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics,
            },
        )))
    }

    async fn runtime_config(
        &self,
        _req: Request<v1::RuntimeConfigRequest>,
    ) -> Result<Response<v1::RuntimeConfigResponse>, Status> {
        Ok(Response::new(v1::RuntimeConfigResponse {
            linux: Some(v1::LinuxRuntimeConfiguration {
                cgroup_driver: v1::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<v1::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<v1::UpdatePodSandboxResourcesResponse>, Status> {
        let req = req.into_inner();
        self.runtime
            .update_pod_sandbox_resources(&req.pod_sandbox_id, req.overhead, req.resources)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::UpdatePodSandboxResourcesResponse {}))
    }
}

/// The handlers `Status` lists: each configured one, and the default once more under
/// the name "" (what a pod naming no RuntimeClass gets, as containerd lists it), so the
/// kubelet can look up the default handler's features.
fn runtime_handlers<'a>(
    names: impl Iterator<Item = &'a String>,
    default: &str,
) -> Vec<v1::RuntimeHandler> {
    let features = || {
        Some(v1::RuntimeHandlerFeatures {
            recursive_read_only_mounts: false,
            user_namespaces: false,
        })
    };
    let mut out: Vec<v1::RuntimeHandler> = names
        .map(|name| v1::RuntimeHandler {
            name: name.clone(),
            features: features(),
        })
        .collect();
    if out.iter().any(|h| h.name == default) {
        out.push(v1::RuntimeHandler {
            name: String::new(),
            features: features(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_handler_is_listed_under_the_empty_name() {
        let names = ["crun".to_string(), "runc".to_string()];
        let got: Vec<String> = runtime_handlers(names.iter(), "runc")
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(got, ["crun", "runc", ""]);
        let got = runtime_handlers(names.iter(), "kata");
        assert_eq!(got.len(), 2, "no default entry for an unknown default");
    }
}
