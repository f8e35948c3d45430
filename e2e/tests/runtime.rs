//! The CRI runtime service end to end, as root: the `cri` binary over its socket, real
//! runc, real CNI plugins from Debian on a bridge of the test's own, cgroups, overlayfs.
//! Each test is a scenario a crictl or kubelet user would notice.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use e2e::pods::{
    BUSYBOX_APP, PodNode, exec, pod_config, run_pod, shell, start, status, wait_exited,
    wait_for_text,
};
use proto::v1;
use tonic::Code;

type R<T = ()> = anyhow::Result<T>;

const LONG: Duration = Duration::from_secs(60);

/// Linux config with only a security context.
fn secure(sc: v1::LinuxContainerSecurityContext) -> v1::LinuxContainerConfig {
    v1::LinuxContainerConfig {
        resources: None,
        security_context: Some(sc),
    }
}

#[tokio::test]
async fn two_containers_share_the_pod_network_and_log_both_streams() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "web");
    let pod = run_pod(&mut c, &pc).await?;

    let st = c
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await?
        .into_inner();
    let sb = st.status.clone().unwrap_or_default();
    assert_eq!(sb.state, v1::PodSandboxState::SandboxReady as i32);
    let ip = sb.network.clone().unwrap_or_default().ip;
    let prefix = node.subnet.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "pod ip {ip} in {}", node.subnet);

    let server = start(
        &mut c,
        &pod,
        &pc,
        shell(
            "server",
            "echo hello-from-server > /tmp/index.html; echo started; echo warn >&2; exec busybox httpd -f -p 8080 -h /tmp",
        ),
    )
    .await?;
    let client = start(&mut c, &pod, &pc, shell("client", "sleep 1000")).await?;

    // Both streams in the CRI log format.
    let log = wait_for_text(
        &node.log_dir("web").join("server.log"),
        "stderr F warn",
        LONG,
    )
    .await?;
    let first = log.lines().next().unwrap_or_default();
    let fields: Vec<&str> = first.splitn(4, ' ').collect();
    assert_eq!(
        fields.get(1..),
        Some(&["stdout", "F", "started"][..]),
        "{log}"
    );
    assert!(
        fields[0].ends_with('Z') && fields[0].contains('T'),
        "RFC 3339 time: {first}"
    );

    // localhost is shared: the client reaches the server on 127.0.0.1.
    let mut body = String::new();
    for _ in 0..100 {
        let (code, out, _) = exec(
            &mut c,
            &client,
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/index.html"],
        )
        .await?;
        if code == 0 {
            body = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(body.trim(), "hello-from-server");

    // Same network, IPC and UTS namespaces; the pod's hostname.
    let ns = |id: String| {
        let mut c = c.clone();
        async move {
            exec(
                &mut c,
                &id,
                &[
                    "sh",
                    "-c",
                    "for n in net ipc uts; do readlink /proc/self/ns/$n; done",
                ],
            )
            .await
            .map(|r| r.1)
        }
    };
    let (a, b) = (ns(server.clone()).await?, ns(client.clone()).await?);
    assert_eq!(a.lines().count(), 3, "{a}");
    assert_eq!(a, b, "containers of a pod share namespaces");
    let host_net = std::fs::read_link("/proc/self/ns/net")?;
    assert!(
        !a.contains(&host_net.to_string_lossy().to_string()),
        "not the host's netns"
    );
    let (_, hostname, _) = exec(&mut c, &client, &["hostname"]).await?;
    assert_eq!(hostname.trim(), "web");

    // Listing with filters.
    let listed = c
        .list_containers(v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                state: Some(v1::ContainerStateValue {
                    state: v1::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 2);
    let pods = c
        .list_pod_sandbox(v1::ListPodSandboxRequest {
            filter: Some(v1::PodSandboxFilter {
                label_selector: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);

    // Stop and remove the pod: containers exit, the network goes, records go.
    c.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    let s = status(&mut c, &server).await?;
    assert_eq!(s.state, v1::ContainerState::ContainerExited as i32);
    c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    let gone = c
        .container_status(v1::ContainerStatusRequest {
            container_id: server,
            verbose: false,
        })
        .await
        .expect_err("removed with its pod");
    assert_eq!(gone.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn limits_are_enforced_and_seen_from_inside() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "limits");
    let pod = run_pod(&mut c, &pc).await?;

    // A memory hog is OOM-killed: exit 137, reason OOMKilled; the pod lives on.
    let mut hog = shell("hog", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done");
    hog.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        security_context: None,
    });
    let hog = start(&mut c, &pod, &pc, hog).await?;
    let s = wait_exited(&mut c, &hog, LONG).await?;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
    let sb = c
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    assert_eq!(
        sb.state,
        v1::PodSandboxState::SandboxReady as i32,
        "pod survives"
    );

    // Limits as the container sees them (runc mounts its own cgroup at the root).
    let mut probe = shell("probe", "sleep 1000");
    probe.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 256,
            ..Default::default()
        }),
        security_context: None,
    });
    let probe = start(&mut c, &pod, &pc, probe).await?;
    let read = |c: &proto::v1::runtime_service_client::RuntimeServiceClient<_>,
                v1: &'static str,
                v2: &'static str| {
        let (mut c, id) = (c.clone(), probe.clone());
        async move {
            let cmd = format!("cat /sys/fs/cgroup/{v1} 2>/dev/null || cat /sys/fs/cgroup/{v2}");
            exec(&mut c, &id, &["sh", "-c", &cmd])
                .await
                .map(|r| r.1.trim().to_string())
        }
    };
    let mem = read(&c, "memory/memory.limit_in_bytes", "memory.max").await?;
    assert_eq!(mem, (64u64 << 20).to_string());
    let quota = read(&c, "cpu/cpu.cfs_quota_us", "cpu.max").await?;
    assert!(quota.starts_with("50000"), "cpu quota {quota}");

    // UpdateContainerResources changes the limit the container sees.
    c.update_container_resources(v1::UpdateContainerResourcesRequest {
        container_id: probe.clone(),
        linux: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 256,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let mem = read(&c, "memory/memory.limit_in_bytes", "memory.max").await?;
    assert_eq!(mem, (96u64 << 20).to_string());
    let st = status(&mut c, &probe).await?;
    let res = st.resources.and_then(|r| r.linux).unwrap_or_default();
    assert_eq!(
        res.memory_limit_in_bytes,
        96 << 20,
        "status reports the update"
    );

    // Stats from the cgroup.
    let stats = c
        .container_stats(v1::ContainerStatsRequest {
            container_id: probe.clone(),
        })
        .await?
        .into_inner()
        .stats
        .unwrap_or_default();
    let ws = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value)
        .unwrap_or(0);
    assert!(ws > 0, "working set from the cgroup");
    let pod_stats = c
        .list_pod_sandbox_stats(v1::ListPodSandboxStatsRequest { filter: None })
        .await?
        .into_inner()
        .stats;
    assert_eq!(pod_stats.len(), 1);
    Ok(())
}

#[tokio::test]
async fn pids_limit_of_the_pod_cgroup_stops_a_fork_bomb() -> R {
    // kubelet sets pids.max on the pod cgroup it passes as cgroup_parent.
    let parent = format!("/nodelet-test-pids-{}", std::process::id());
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dir = if v2 {
        format!("/sys/fs/cgroup{parent}")
    } else {
        format!("/sys/fs/cgroup/pids{parent}")
    };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(format!("{dir}/pids.max"), "30")?;

    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let mut pc = pod_config(&node, "bomb");
    pc.linux = Some(v1::LinuxPodSandboxConfig {
        cgroup_parent: parent.clone(),
        ..Default::default()
    });
    let pod = run_pod(&mut c, &pc).await?;
    let bomb = start(
        &mut c,
        &pod,
        &pc,
        shell(
            "bomb",
            "i=0; while [ $i -lt 100 ]; do sleep 1000 & i=$((i+1)); done; echo forked-all; sleep 1000",
        ),
    )
    .await?;
    let log = node.log_dir("bomb").join("bomb.log");
    let text = wait_for_text(&log, "fork", LONG).await?;
    assert!(
        !text.contains("forked-all"),
        "the limit stopped the bomb:\n{text}"
    );
    c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    let _ = bomb;
    // runc made the parent in every hierarchy; remove them all.
    for entry in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(entry.path().join(parent.trim_start_matches('/')));
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

#[tokio::test]
async fn security_context_user_and_read_only_rootfs() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "sec");
    let pod = run_pod(&mut c, &pc).await?;

    // The image's `User: app` is resolved through its /etc/passwd and /etc/group.
    let mut app = shell("app", "sleep 1000");
    app.image = Some(v1::ImageSpec {
        image: BUSYBOX_APP.into(),
        ..Default::default()
    });
    let app = start(&mut c, &pod, &pc, app).await?;
    let (_, id, _) = exec(&mut c, &app, &["id"]).await?;
    assert!(id.contains("uid=1000(app) gid=1000(app)"), "{id}");
    let st = status(&mut c, &app).await?;
    let user = st.user.and_then(|u| u.linux).unwrap_or_default();
    assert_eq!((user.uid, user.gid), (1000, 1000));

    // runAsUser overrides the image.
    let mut as_nobody = shell("nobody", "sleep 1000");
    as_nobody.linux = Some(secure(v1::LinuxContainerSecurityContext {
        run_as_user: Some(v1::Int64Value { value: 65534 }),
        readonly_rootfs: true,
        ..Default::default()
    }));
    let ro = start(&mut c, &pod, &pc, as_nobody).await?;
    let (_, id, _) = exec(&mut c, &ro, &["id", "-u"]).await?;
    assert_eq!(id.trim(), "65534");
    // A read-only root refuses writes; /dev/shm (the pod's tmpfs) still takes them.
    let (code, _, err) = exec(&mut c, &ro, &["touch", "/newfile"]).await?;
    assert_ne!(code, 0, "write to a read-only root must fail");
    assert!(err.contains("Read-only file system"), "{err}");
    let (code, _, _) = exec(&mut c, &ro, &["touch", "/dev/shm/ok"]).await?;
    assert_eq!(code, 0);

    // Host directories mounted read-write and read-only.
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("given"), "from-host")?;
    let mut mounter = shell("mounter", "sleep 1000");
    mounter.mounts = vec![
        v1::Mount {
            container_path: "/rw".into(),
            host_path: host.path().to_string_lossy().into_owned(),
            ..Default::default()
        },
        v1::Mount {
            container_path: "/ro".into(),
            host_path: host.path().to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        },
    ];
    let mounter = start(&mut c, &pod, &pc, mounter).await?;
    let (_, given, _) = exec(&mut c, &mounter, &["cat", "/ro/given"]).await?;
    assert_eq!(given, "from-host");
    let (code, _, _) = exec(&mut c, &mounter, &["sh", "-c", "echo back > /rw/written"]).await?;
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(host.path().join("written"))?,
        "back\n"
    );
    let (code, _, _) = exec(&mut c, &mounter, &["touch", "/ro/nope"]).await?;
    assert_ne!(code, 0, "read-only mount refuses writes");
    // A missing host path is a clear error naming it.
    let mut missing = shell("missing", "sleep 1000");
    missing.mounts = vec![v1::Mount {
        container_path: "/x".into(),
        host_path: "/nonexistent/nodelet-test".into(),
        ..Default::default()
    }];
    let err = c
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(missing),
            sandbox_config: Some(pc.clone()),
        })
        .await
        .expect_err("missing host path");
    assert!(
        err.message().contains("/nonexistent/nodelet-test"),
        "{}",
        err.message()
    );

    // RuntimeDefault seccomp is applied and the container still runs.
    let mut confined = shell("confined", "sleep 1000");
    confined.linux = Some(secure(v1::LinuxContainerSecurityContext {
        seccomp: Some(v1::SecurityProfile {
            profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..Default::default()
    }));
    let confined = start(&mut c, &pod, &pc, confined).await?;
    let (_, mode, _) = exec(
        &mut c,
        &confined,
        &["grep", "Seccomp:", "/proc/self/status"],
    )
    .await?;
    assert!(mode.contains('2'), "seccomp filter mode: {mode}");
    Ok(())
}

#[tokio::test]
async fn host_port_reaches_the_container_from_loopback() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let mut pc = pod_config(&node, "ports");
    let host_port = 20000 + (std::process::id() % 20000) as i32;
    pc.port_mappings = vec![v1::PortMapping {
        protocol: v1::Protocol::Tcp as i32,
        container_port: 8080,
        host_port,
        host_ip: String::new(),
    }];
    let pod = run_pod(&mut c, &pc).await?;
    start(
        &mut c,
        &pod,
        &pc,
        shell(
            "web",
            "echo via-hostport > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp",
        ),
    )
    .await?;
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", host_port as u16)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let _ = s.read_to_string(&mut body);
            if body.contains("via-hostport") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("via-hostport"), "got {body:?}");
    Ok(())
}

#[tokio::test]
async fn stop_sends_the_stop_signal_then_kills_after_the_timeout() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "stop");
    let pod = run_pod(&mut c, &pc).await?;
    let polite = start(
        &mut c,
        &pod,
        &pc,
        shell(
            "polite",
            "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ),
    )
    .await?;
    let stubborn = start(
        &mut c,
        &pod,
        &pc,
        shell(
            "stubborn",
            "trap '' TERM; echo ready; while true; do sleep 0.1; done",
        ),
    )
    .await?;
    let logs = node.log_dir("stop");
    wait_for_text(&logs.join("polite.log"), "ready", LONG).await?;
    wait_for_text(&logs.join("stubborn.log"), "ready", LONG).await?;

    c.stop_container(v1::StopContainerRequest {
        container_id: polite.clone(),
        timeout: 30,
    })
    .await?;
    let s = status(&mut c, &polite).await?;
    assert_eq!(
        (s.state, s.exit_code),
        (v1::ContainerState::ContainerExited as i32, 0)
    );
    assert_eq!(s.reason, "Completed");
    wait_for_text(&logs.join("polite.log"), "got-term", LONG).await?;

    c.stop_container(v1::StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 1,
    })
    .await?;
    let s = status(&mut c, &stubborn).await?;
    assert_eq!(
        (s.state, s.exit_code),
        (v1::ContainerState::ContainerExited as i32, 137)
    );
    assert_eq!(s.reason, "Error");

    // Idempotent where CRI says so.
    c.stop_container(v1::StopContainerRequest {
        container_id: stubborn.clone(),
        timeout: 0,
    })
    .await?;
    c.remove_container(v1::RemoveContainerRequest {
        container_id: stubborn.clone(),
    })
    .await?;
    c.remove_container(v1::RemoveContainerRequest {
        container_id: stubborn,
    })
    .await?;
    c.stop_container(v1::StopContainerRequest {
        container_id: "0123456789abcdef".into(),
        timeout: 0,
    })
    .await?;
    c.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: "0123456789abcdef".into(),
    })
    .await?;
    c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: "0123456789abcdef".into(),
    })
    .await?;
    c.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    c.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    let missing = c
        .container_status(v1::ContainerStatusRequest {
            container_id: "0123456789abcdef".into(),
            verbose: false,
        })
        .await
        .expect_err("missing container");
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn containers_survive_a_killed_server_and_stay_manageable() -> R {
    let mut node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "survivor");
    let pod = run_pod(&mut c, &pc).await?;
    let ticker = start(
        &mut c,
        &pod,
        &pc,
        shell(
            "ticker",
            "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done",
        ),
    )
    .await?;
    let quitter = start(&mut c, &pod, &pc, shell("quitter", "sleep 2; exit 7")).await?;
    let log = node.log_dir("survivor").join("ticker.log");
    wait_for_text(&log, "tick-1", LONG).await?;

    node.cri.kill()?;
    // While the server is down the ticker keeps logging and the quitter exits.
    let before = std::fs::read_to_string(&log)?.lines().count();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = std::fs::read_to_string(&log)?.lines().count();
    assert!(after > before, "logging went on without the server");

    node.cri.restart()?;
    let mut c = node.client().await?;
    let s = status(&mut c, &ticker).await?;
    assert_eq!(s.state, v1::ContainerState::ContainerRunning as i32);
    let q = status(&mut c, &quitter).await?;
    assert_eq!(
        (q.state, q.exit_code),
        (v1::ContainerState::ContainerExited as i32, 7)
    );
    let (code, out, _) = exec(&mut c, &ticker, &["echo", "still-here"]).await?;
    assert_eq!((code, out.trim()), (0, "still-here"));
    let sb = c
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    assert_eq!(sb.state, v1::PodSandboxState::SandboxReady as i32);

    c.stop_container(v1::StopContainerRequest {
        container_id: ticker.clone(),
        timeout: 10,
    })
    .await?;
    let s = status(&mut c, &ticker).await?;
    assert_eq!(s.state, v1::ContainerState::ContainerExited as i32);
    c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    Ok(())
}

/// The verbose `info` of a sandbox, parsed.
async fn sandbox_info(
    c: &mut proto::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    pod: &str,
) -> R<(v1::PodSandboxStatus, serde_json::Value)> {
    let st = c
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info = serde_json::from_str(st.info.get("info").map_or("{}", String::as_str))?;
    Ok((st.status.unwrap_or_default(), info))
}

/// Whether any process's command line names `id` (an infra container's monitor would).
fn process_naming(id: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .any(|arg| arg == id.as_bytes())
        })
}

#[tokio::test]
async fn a_pod_sharing_no_pid_namespace_runs_without_an_infra_process() -> R {
    let mut node = PodNode::start("")?;
    let mut c = node.client().await?;
    // A sysctl of the interface CNI creates proves they are written after CNI ADD.
    let mut pc = pod_config(&node, "pinned");
    pc.linux = Some(v1::LinuxPodSandboxConfig {
        sysctls: [
            ("net.ipv4.conf.eth0.arp_ignore", "1"),
            ("kernel.shmmni", "1234"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..pc.linux.clone().unwrap_or_default()
    });
    let pod = run_pod(&mut c, &pc).await?;
    let (st, info) = sandbox_info(&mut c, &pod).await?;
    assert_eq!(st.state, v1::PodSandboxState::SandboxReady as i32);
    assert_eq!(info["infraContainer"], false, "{info}");
    assert_eq!(info["pid"], 0, "{info}");
    assert!(
        !process_naming(&pod),
        "no process holds the pod's namespaces"
    );
    let pins: Vec<std::path::PathBuf> = ["net", "ipc", "uts"]
        .iter()
        .map(|k| {
            info["pins"][k]
                .as_str()
                .map(std::path::PathBuf::from)
                .ok_or_else(|| anyhow::anyhow!("no {k} pin in {info}"))
        })
        .collect::<R<_>>()?;

    let a = start(&mut c, &pod, &pc, shell("a", "sleep 1000")).await?;
    let b = start(&mut c, &pod, &pc, shell("b", "sleep 1000")).await?;
    let script = "for n in net ipc uts; do readlink /proc/self/ns/$n; done; hostname; \
                  cat /proc/sys/net/ipv4/conf/eth0/arp_ignore /proc/sys/kernel/shmmni; \
                  cat /sys/class/net/lo/operstate /sys/class/net/lo/flags";
    let (code, seen_a, err) = exec(&mut c, &a, &["sh", "-c", script]).await?;
    assert_eq!(code, 0, "{err}");
    let (_, seen_b, _) = exec(&mut c, &b, &["sh", "-c", script]).await?;
    assert_eq!(seen_a, seen_b, "both containers see the same pod");
    let lines: Vec<&str> = seen_a.lines().collect();
    for (line, pin) in lines.iter().zip(&pins) {
        use std::os::unix::fs::MetadataExt as _;
        let ino = std::fs::metadata(pin)?.ino();
        assert!(
            line.ends_with(&format!("[{ino}]")),
            "{line} is {}",
            pin.display()
        );
    }
    assert_eq!(lines[3], "pinned", "the pod's hostname");
    assert_eq!(&lines[4..6], ["1", "1234"], "sysctls: {seen_a}");
    let lo_flags = u32::from_str_radix(lines[7].trim_start_matches("0x"), 16)?;
    assert_eq!(lo_flags & 1, 1, "lo is up ({seen_a})");
    let (_, routes, _) = exec(&mut c, &a, &["cat", "/proc/net/fib_trie"]).await?;
    assert!(
        routes.contains("127.0.0.1"),
        "the kernel addressed lo: {routes}"
    );

    // Network counters come from inside the pinned namespace.
    let stats = c
        .pod_sandbox_stats(v1::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await?
        .into_inner()
        .stats
        .unwrap_or_default();
    let net = stats.linux.unwrap_or_default().network.unwrap_or_default();
    assert_eq!(net.default_interface.unwrap_or_default().name, "eth0");

    // A restarted server finds the pod ready; a pod whose pins vanished (as after a
    // reboot) is not ready.
    let other = run_pod(&mut c, &pod_config(&node, "unpinned")).await?;
    let (_, other_info) = sandbox_info(&mut c, &other).await?;
    node.cri.kill()?;
    let uts = other_info["pins"]["uts"].as_str().unwrap_or_default();
    let unmounted = std::process::Command::new("umount")
        .args(["-l", uts])
        .status()?;
    anyhow::ensure!(unmounted.success(), "umount -l {uts}");
    node.cri.restart()?;
    let mut c = node.client().await?;
    let (st, _) = sandbox_info(&mut c, &pod).await?;
    assert_eq!(st.state, v1::PodSandboxState::SandboxReady as i32);
    let (st, _) = sandbox_info(&mut c, &other).await?;
    assert_eq!(st.state, v1::PodSandboxState::SandboxNotready as i32);

    // Stopping the pod unpins its namespaces.
    c.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await?;
    for pin in &pins {
        assert!(!pin.exists(), "{} is gone", pin.display());
    }
    c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await?;
    c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: other,
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn created_containers_run_only_when_started() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "created");
    let pod = run_pod(&mut c, &pc).await?;
    let creator = c.clone();
    let create = |config: v1::ContainerConfig| {
        let mut c = creator.clone();
        let pc = pc.clone();
        let pod = pod.clone();
        async move {
            R::Ok(
                c.create_container(v1::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: Some(pc),
                })
                .await?
                .into_inner()
                .container_id,
            )
        }
    };

    // Created: no process yet; new limits before the start are the ones it runs with;
    // stopping it leaves it created.
    let id = create(shell(
        "late",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null; sleep 1000",
    ))
    .await?;
    let s = status(&mut c, &id).await?;
    assert_eq!(s.state, v1::ContainerState::ContainerCreated as i32);
    assert!(!process_naming(&id), "no monitor or runtime process yet");
    c.update_container_resources(v1::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(v1::LinuxContainerResources {
            memory_limit_in_bytes: 48 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    c.stop_container(v1::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await?;
    assert_eq!(
        status(&mut c, &id).await?.state,
        v1::ContainerState::ContainerCreated as i32
    );
    c.start_container(v1::StartContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    let s = status(&mut c, &id).await?;
    assert_eq!(s.state, v1::ContainerState::ContainerRunning as i32);
    assert!(s.started_at >= s.created_at);
    let log = wait_for_text(&node.log_dir("created").join("late.log"), "stdout", LONG).await?;
    assert!(log.contains(&(48u64 << 20).to_string()), "{log}");
    let again = c
        .start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("started twice");
    assert_eq!(again.code(), Code::FailedPrecondition);

    // A process that cannot run fails the start: exited, StartError, the runtime's
    // reason in the message.
    let mut broken = shell("broken", "true");
    broken.command = vec!["/no/such/binary".into()];
    broken.args = vec![];
    let bid = create(broken).await?;
    let err = c
        .start_container(v1::StartContainerRequest {
            container_id: bid.clone(),
        })
        .await
        .expect_err("no such binary");
    assert!(
        err.message().contains("/no/such/binary"),
        "{}",
        err.message()
    );
    let s = status(&mut c, &bid).await?;
    assert_eq!(
        (s.state, s.exit_code, s.reason.as_str()),
        (
            v1::ContainerState::ContainerExited as i32,
            128,
            "StartError"
        ),
        "{s:?}"
    );

    // A created container is removed without ever running.
    let never = create(shell("never", "sleep 1000")).await?;
    c.remove_container(v1::RemoveContainerRequest {
        container_id: never.clone(),
    })
    .await?;
    let gone = c
        .container_status(v1::ContainerStatusRequest {
            container_id: never,
            verbose: false,
        })
        .await
        .expect_err("removed");
    assert_eq!(gone.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn events_exec_timeout_and_log_reopen() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let mut events = c
        .get_container_events(v1::GetEventsRequest {})
        .await?
        .into_inner();
    let pc = pod_config(&node, "events");
    let pod = run_pod(&mut c, &pc).await?;
    let id = start(
        &mut c,
        &pod,
        &pc,
        shell(
            "talker",
            "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done",
        ),
    )
    .await?;

    // ExecSync: exit codes and timeouts.
    let (code, _, _) = exec(&mut c, &id, &["sh", "-c", "exit 3"]).await?;
    assert_eq!(code, 3);
    let timed_out = c
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "100".into()],
            timeout: 1,
        })
        .await
        .expect_err("exec past its timeout");
    assert_eq!(timed_out.code(), Code::DeadlineExceeded);

    // ReopenContainerLog after a rotation: new lines land in a new file.
    let log = node.log_dir("events").join("talker.log");
    wait_for_text(&log, "line-1", LONG).await?;
    std::fs::rename(&log, log.with_extension("log.1"))?;
    c.reopen_container_log(v1::ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await?;
    wait_for_text(&log, "line-", LONG).await?;

    c.remove_container(v1::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await?;
    let mut seen = vec![];
    while seen.len() < 4 {
        let ev = tokio::time::timeout(LONG, events.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("event stream ended"))?;
        if ev.container_id == id {
            seen.push(ev.container_event_type);
        }
    }
    use v1::ContainerEventType as E;
    assert_eq!(
        seen,
        [
            E::ContainerCreatedEvent as i32,
            E::ContainerStartedEvent as i32,
            E::ContainerStoppedEvent as i32,
            E::ContainerDeletedEvent as i32
        ]
    );
    Ok(())
}

#[tokio::test]
async fn runtime_status_and_config() -> R {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let st = c
        .status(v1::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let conds = st.status.unwrap_or_default().conditions;
    for want in ["RuntimeReady", "NetworkReady"] {
        let cond = conds.iter().find(|c| c.r#type == want);
        assert!(cond.is_some_and(|c| c.status), "{want}: {conds:?}");
    }
    assert!(st.runtime_handlers.iter().any(|h| h.name == "runc"));
    // The default handler once more as "": what the kubelet looks up for a pod that
    // names no RuntimeClass.
    assert!(
        st.runtime_handlers.iter().any(|h| h.name.is_empty()),
        "{:?}",
        st.runtime_handlers
    );
    let cfg = c
        .runtime_config(v1::RuntimeConfigRequest {})
        .await?
        .into_inner();
    assert_eq!(
        cfg.linux.unwrap_or_default().cgroup_driver,
        v1::CgroupDriver::Cgroupfs as i32
    );
    // An unknown handler is refused with a clear error.
    let pc = pod_config(&node, "handler");
    let err = c
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(pc),
            runtime_handler: "kata".into(),
        })
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kata"), "{}", err.message());
    Ok(())
}

#[tokio::test]
async fn pod_options_namespaces_sysctls_dns_and_a_pause_image() -> R {
    let node = PodNode::start(&format!(
        "[runtime]\nsandbox_image = \"{}\"\n",
        e2e::pods::BUSYBOX_PAUSE
    ))?;
    let mut c = node.client().await?;

    // A pod with a shared PID namespace, a sysctl and its own DNS config, whose infra
    // process comes from the configured pause image.
    let mut pc = pod_config(&node, "opts");
    pc.dns_config = Some(v1::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    pc.linux = Some(v1::LinuxPodSandboxConfig {
        sysctls: [(
            "net.ipv4.ping_group_range".to_string(),
            "0 2147483647".to_string(),
        )]
        .into(),
        security_context: Some(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                pid: v1::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = run_pod(&mut c, &pc).await?;
    let (_, info) = sandbox_info(&mut c, &pod).await?;
    assert_eq!(
        info["infraContainer"], true,
        "a shared PID namespace needs a PID 1"
    );
    assert!(info["pid"].as_i64().unwrap_or_default() > 0, "{info}");
    let mut shared = shell("shared", "sleep 1000");
    shared.linux = Some(secure(v1::LinuxContainerSecurityContext {
        namespace_options: Some(v1::NamespaceOption {
            pid: v1::NamespaceMode::Pod as i32,
            ..Default::default()
        }),
        ..Default::default()
    }));
    let shared = start(&mut c, &pod, &pc, shared).await?;
    let (_, init, _) = exec(&mut c, &shared, &["cat", "/proc/1/cmdline"]).await?;
    assert!(
        init.starts_with("sleep"),
        "PID 1 is the pause image's entrypoint: {init:?}"
    );
    let (_, resolv, _) = exec(&mut c, &shared, &["cat", "/etc/resolv.conf"]).await?;
    assert!(resolv.contains("nameserver 10.96.0.10"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let (_, range, _) = exec(
        &mut c,
        &shared,
        &["cat", "/proc/sys/net/ipv4/ping_group_range"],
    )
    .await?;
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647"]
    );

    // A container with its own PID namespace (kubelet's default) is its own PID 1.
    let mut own = shell("own", "sleep 1000");
    own.linux = Some(secure(v1::LinuxContainerSecurityContext {
        namespace_options: Some(v1::NamespaceOption {
            pid: v1::NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    }));
    let own = start(&mut c, &pod, &pc, own).await?;
    let (_, init, _) = exec(&mut c, &own, &["cat", "/proc/1/cmdline"]).await?;
    // (busybox sh execs its last command, so PID 1 is the container's own sleep.)
    assert_eq!(init, "sleep\u{0}1000\u{0}", "own PID namespace");

    // A hostNetwork pod (without an infra process) sees the host's network and UTS
    // namespaces and gets no pod IP.
    let mut hc = pod_config(&node, "hostnet");
    hc.linux = Some(v1::LinuxPodSandboxConfig {
        security_context: Some(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                network: v1::NamespaceMode::Node as i32,
                pid: v1::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let hpod = run_pod(&mut c, &hc).await?;
    let st = c
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: hpod.clone(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    assert_eq!(st.network.unwrap_or_default().ip, "");
    let h = start(&mut c, &hpod, &hc, shell("h", "sleep 1000")).await?;
    let (_, net, _) = exec(
        &mut c,
        &h,
        &[
            "sh",
            "-c",
            "for n in net uts ipc; do readlink /proc/self/ns/$n; done",
        ],
    )
    .await?;
    let ns: Vec<&str> = net.lines().collect();
    assert_eq!(
        ns[0],
        std::fs::read_link("/proc/self/ns/net")?.to_string_lossy()
    );
    assert_eq!(
        ns[1],
        std::fs::read_link("/proc/self/ns/uts")?.to_string_lossy()
    );
    assert_ne!(
        ns[2],
        std::fs::read_link("/proc/self/ns/ipc")?.to_string_lossy(),
        "a pod IPC namespace"
    );

    // A sysctl outside the pod's namespaces is refused with its name.
    let mut bad = pod_config(&node, "badsysctl");
    bad.linux = Some(v1::LinuxPodSandboxConfig {
        sysctls: [("vm.swappiness".to_string(), "10".to_string())].into(),
        ..Default::default()
    });
    let err = c
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(bad),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("non-namespaced sysctl");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("vm.swappiness"), "{}", err.message());
    Ok(())
}

#[tokio::test]
async fn other_runtime_handlers() -> R {
    // crun 1.8 (Debian 12) refuses this machine's hybrid cgroup v1 layout; on hosts
    // where it works, a pod on the crun handler must run like one on runc.
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, "crun");
    // The pod's namespaces are pinned without the handler; its first use is the
    // container.
    let ran = async {
        let pod = c
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(pc.clone()),
                runtime_handler: "crun".into(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let id = start(&mut c, &pod, &pc, shell("x", "sleep 1000")).await?;
        exec(&mut c, &id, &["echo", "on-crun"]).await
    }
    .await;
    match ran {
        Ok((code, out, _)) => assert_eq!((code, out.trim()), (0, "on-crun")),
        Err(e) if std::path::Path::new("/sys/fs/cgroup/unified").exists() => {
            eprintln!("skipped: crun cannot run on this hybrid cgroup layout: {e:#}");
        }
        Err(e) => return Err(e),
    }
    Ok(())
}
