//! The CRI `runtime.v1` wire protocol.
//!
//! Generated from `proto/runtime/v1/api.proto`; package, service and method names and
//! field numbers match the API that kubelet 1.24+ and crictl speak.

/// `runtime.v1`: messages, the `RuntimeService` and `ImageService` clients and servers.
pub mod runtime {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1;

/// The runtime API version we speak, as reported by `Version`.
pub const RUNTIME_API_VERSION: &str = "v1";

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message as _;

    /// Field numbers decide wire compatibility: spot-check old and recent fields by their
    /// encoded tags (tag = field_number << 3 | wire_type).
    #[test]
    fn field_numbers_match_upstream() {
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            (
                "ImageSpec.image_ref = 20",
                v1::ImageSpec {
                    image_ref: "x".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                vec![0xa2, 0x01, 1, b'x'],
            ),
            (
                "ImageSpec.user_specified_image = 18",
                v1::ImageSpec {
                    user_specified_image: "x".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                vec![0x92, 0x01, 1, b'x'],
            ),
            (
                "ContainerConfig.stop_signal = 18 (SIGTERM = 23)",
                v1::ContainerConfig {
                    stop_signal: v1::Signal::Sigterm as i32,
                    ..Default::default()
                }
                .encode_to_vec(),
                vec![0x90, 0x01, 23],
            ),
            (
                "PullImageResponse.image_ref = 1",
                v1::PullImageResponse {
                    image_ref: "x".into(),
                }
                .encode_to_vec(),
                vec![0x0a, 1, b'x'],
            ),
            (
                "Mount.image_sub_path = 10",
                v1::Mount {
                    image_sub_path: "x".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                vec![0x52, 1, b'x'],
            ),
            (
                "LinuxContainerSecurityContext.supplemental_groups_policy = 17 (Strict = 1)",
                v1::LinuxContainerSecurityContext {
                    supplemental_groups_policy: v1::SupplementalGroupsPolicy::Strict as i32,
                    ..Default::default()
                }
                .encode_to_vec(),
                vec![0x88, 0x01, 1],
            ),
            (
                "ExecRequest.audit_request_id = 7",
                v1::ExecRequest {
                    audit_request_id: "x".into(),
                    ..Default::default()
                }
                .encode_to_vec(),
                vec![0x3a, 1, b'x'],
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn service_paths_match_upstream() {
        use v1::image_service_server::ImageServiceServer as I;
        use v1::runtime_service_server::RuntimeServiceServer as R;
        assert_eq!(
            <R<()> as tonic::server::NamedService>::NAME,
            "runtime.v1.RuntimeService"
        );
        assert_eq!(
            <I<()> as tonic::server::NamedService>::NAME,
            "runtime.v1.ImageService"
        );
    }
}
