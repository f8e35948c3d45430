//! CRI `RuntimeService`. `Version` and `Status` answer truthfully; pod sandboxes and
//! containers are not implemented yet, and every such RPC says so with `Unimplemented`
//! (never a fake success).

use std::collections::HashMap;
use std::pin::Pin;

use proto::v1;
use tonic::{Request, Response, Status};

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Default)]
pub struct RuntimeService {}

impl RuntimeService {
    pub fn new() -> Self {
        Self {}
    }
}

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is not implemented yet: this build serves the image service only"
    ))
}

/// Conditions as kubelet reads them: the runtime cannot run containers yet, and there is
/// no pod network.
pub fn conditions() -> Vec<v1::RuntimeCondition> {
    vec![
        v1::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: false,
            reason: "ContainersNotSupported".into(),
            message: "pod sandboxes and containers are not implemented yet".into(),
        },
        v1::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: "NetworkPluginNotReady".into(),
            message: "pod networking (CNI) is not implemented yet".into(),
        },
    ]
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
        _req: Request<v1::RunPodSandboxRequest>,
    ) -> Result<Response<v1::RunPodSandboxResponse>, Status> {
        Err(not_yet("RunPodSandbox"))
    }

    async fn stop_pod_sandbox(
        &self,
        _req: Request<v1::StopPodSandboxRequest>,
    ) -> Result<Response<v1::StopPodSandboxResponse>, Status> {
        Err(not_yet("StopPodSandbox"))
    }

    async fn remove_pod_sandbox(
        &self,
        _req: Request<v1::RemovePodSandboxRequest>,
    ) -> Result<Response<v1::RemovePodSandboxResponse>, Status> {
        Err(not_yet("RemovePodSandbox"))
    }

    async fn pod_sandbox_status(
        &self,
        _req: Request<v1::PodSandboxStatusRequest>,
    ) -> Result<Response<v1::PodSandboxStatusResponse>, Status> {
        Err(not_yet("PodSandboxStatus"))
    }

    async fn list_pod_sandbox(
        &self,
        _req: Request<v1::ListPodSandboxRequest>,
    ) -> Result<Response<v1::ListPodSandboxResponse>, Status> {
        Err(not_yet("ListPodSandbox"))
    }

    type StreamPodSandboxesStream = Stream<v1::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        _req: Request<v1::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        Err(not_yet("StreamPodSandboxes"))
    }

    async fn create_container(
        &self,
        _req: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        Err(not_yet("CreateContainer"))
    }

    async fn start_container(
        &self,
        _req: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        Err(not_yet("StartContainer"))
    }

    async fn stop_container(
        &self,
        _req: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::StopContainerResponse>, Status> {
        Err(not_yet("StopContainer"))
    }

    async fn remove_container(
        &self,
        _req: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        Err(not_yet("RemoveContainer"))
    }

    async fn list_containers(
        &self,
        _req: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        Err(not_yet("ListContainers"))
    }

    type StreamContainersStream = Stream<v1::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        _req: Request<v1::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        Err(not_yet("StreamContainers"))
    }

    async fn container_status(
        &self,
        _req: Request<v1::ContainerStatusRequest>,
    ) -> Result<Response<v1::ContainerStatusResponse>, Status> {
        Err(not_yet("ContainerStatus"))
    }

    async fn update_container_resources(
        &self,
        _req: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Result<Response<v1::UpdateContainerResourcesResponse>, Status> {
        Err(not_yet("UpdateContainerResources"))
    }

    async fn reopen_container_log(
        &self,
        _req: Request<v1::ReopenContainerLogRequest>,
    ) -> Result<Response<v1::ReopenContainerLogResponse>, Status> {
        Err(not_yet("ReopenContainerLog"))
    }

    async fn exec_sync(
        &self,
        _req: Request<v1::ExecSyncRequest>,
    ) -> Result<Response<v1::ExecSyncResponse>, Status> {
        Err(not_yet("ExecSync"))
    }

    async fn exec(
        &self,
        _req: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        Err(not_yet("Exec"))
    }

    async fn attach(
        &self,
        _req: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        Err(not_yet("Attach"))
    }

    async fn port_forward(
        &self,
        _req: Request<v1::PortForwardRequest>,
    ) -> Result<Response<v1::PortForwardResponse>, Status> {
        Err(not_yet("PortForward"))
    }

    async fn container_stats(
        &self,
        _req: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        Err(not_yet("ContainerStats"))
    }

    async fn list_container_stats(
        &self,
        _req: Request<v1::ListContainerStatsRequest>,
    ) -> Result<Response<v1::ListContainerStatsResponse>, Status> {
        Err(not_yet("ListContainerStats"))
    }

    type StreamContainerStatsStream = Stream<v1::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        _req: Request<v1::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        Err(not_yet("StreamContainerStats"))
    }

    async fn pod_sandbox_stats(
        &self,
        _req: Request<v1::PodSandboxStatsRequest>,
    ) -> Result<Response<v1::PodSandboxStatsResponse>, Status> {
        Err(not_yet("PodSandboxStats"))
    }

    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Result<Response<v1::ListPodSandboxStatsResponse>, Status> {
        Err(not_yet("ListPodSandboxStats"))
    }

    type StreamPodSandboxStatsStream = Stream<v1::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        _req: Request<v1::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        Err(not_yet("StreamPodSandboxStats"))
    }

    async fn update_runtime_config(
        &self,
        _req: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<v1::UpdateRuntimeConfigResponse>, Status> {
        Err(not_yet("UpdateRuntimeConfig"))
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let verbose = req.into_inner().verbose;
        let mut info = HashMap::new();
        if verbose {
            info.insert(
                "info".to_string(),
                serde_json::json!({ "runtimeName": crate::RUNTIME_NAME, "version": crate::RUNTIME_VERSION, "services": ["ImageService"] })
                    .to_string(),
            );
        }
        Ok(Response::new(v1::StatusResponse {
            status: Some(v1::RuntimeStatus {
                conditions: conditions(),
            }),
            info,
            runtime_handlers: vec![],
            features: None,
        }))
    }

    async fn checkpoint_container(
        &self,
        _req: Request<v1::CheckpointContainerRequest>,
    ) -> Result<Response<v1::CheckpointContainerResponse>, Status> {
        Err(not_yet("CheckpointContainer"))
    }

    type GetContainerEventsStream = Stream<v1::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        _req: Request<v1::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(not_yet("GetContainerEvents"))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Result<Response<v1::ListMetricDescriptorsResponse>, Status> {
        Err(not_yet("ListMetricDescriptors"))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<v1::ListPodSandboxMetricsResponse>, Status> {
        Err(not_yet("ListPodSandboxMetrics"))
    }

    type StreamPodSandboxMetricsStream = Stream<v1::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        _req: Request<v1::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        Err(not_yet("StreamPodSandboxMetrics"))
    }

    async fn runtime_config(
        &self,
        _req: Request<v1::RuntimeConfigRequest>,
    ) -> Result<Response<v1::RuntimeConfigResponse>, Status> {
        Err(not_yet("RuntimeConfig"))
    }

    async fn update_pod_sandbox_resources(
        &self,
        _req: Request<v1::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<v1::UpdatePodSandboxResourcesResponse>, Status> {
        Err(not_yet("UpdatePodSandboxResources"))
    }
}
