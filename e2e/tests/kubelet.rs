//! The kubelet in standalone mode, end to end, as root: the `kubelet` binary with a
//! directory of static pod manifests and our CRI in-process (real runc, CNI on a bridge
//! of the test's own). Each test is something a user of the node would notice, seen the
//! way they would see it: `/pods`, the runtime (crictl's view, over CRI), files and logs.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use e2e::kubelet::{
    KubeletNode, condition, container, container_id, containers_of, phase, pod_ip, restart_count,
    running_and_ready, sandboxes_of, uid, waiting_reason,
};
use e2e::pods::{BUSYBOX, exec, wait_for_text};
use k8s_openapi::api::core::v1::Pod;
use proto::v1;

type R<T = ()> = anyhow::Result<T>;

const LIMIT: Duration = Duration::from_secs(60);

/// A manifest with `IMAGE` standing for the preloaded busybox (never pulled).
fn manifest(text: &str) -> String {
    text.replace("IMAGE", BUSYBOX)
}

/// A pod with one busybox container running `script`.
fn one_container(name: &str, script: &str) -> String {
    manifest(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, {script:?}]
"#
    ))
}

/// A web server answering `hello from <name>` on port 8080.
fn web(name: &str) -> String {
    one_container(
        name,
        &format!("echo hello from {name} > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp"),
    )
}

/// GET http://<ip>:8080/index.html until it answers (bounded): the body.
async fn fetch(ip: &str) -> R<String> {
    let addr = format!("{ip}:8080");
    let deadline = Instant::now() + LIMIT;
    loop {
        match e2e::http::get(&addr, "/index.html", &[]) {
            Ok(r) if r.status == 200 => return Ok(String::from_utf8_lossy(&r.body).into_owned()),
            Ok(r) if Instant::now() > deadline => anyhow::bail!("{addr}: status {}", r.status),
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn has_uid(pods: &[Pod], want: &str) -> bool {
    pods.iter().any(|p| uid(p) == want)
}

#[tokio::test]
async fn static_pods_come_up_running_and_ready() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest("web.yaml", &web("web"))?;
    node.write_manifest("worker.yaml", &one_container("worker", "exec sleep 3600"))?;
    let web = node.wait_ready("web", LIMIT).await?;
    let worker = node.wait_ready("worker", LIMIT).await?;
    let net = node.network().context("our runtime has a test network")?;

    for pod in [&web, &worker] {
        let status = pod.status.clone().unwrap_or_default();
        for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(condition(pod, kind), "True", "{kind}: {status:?}");
        }
        let ip = pod_ip(pod);
        assert!(net.contains(&ip), "pod ip {ip} in {}", net.subnet);
        assert!(status.start_time.is_some() && status.host_ip.is_some());
        let app = container(pod, "app").cloned().unwrap_or_default();
        assert!(app.ready && app.started == Some(true), "{app:?}");
        assert_eq!(app.restart_count, 0);
        assert!(app.state.and_then(|s| s.running).is_some());
        assert_eq!(app.image, BUSYBOX);
    }
    assert_ne!(
        pod_ip(&web),
        pod_ip(&worker),
        "every pod has its own address"
    );

    // The runtime runs what /pods reports: one ready sandbox, the container running.
    let mut c = node.runtime().await?;
    let sandboxes = sandboxes_of(&mut c, &uid(&web)).await?;
    assert_eq!(sandboxes.len(), 1);
    assert_eq!(sandboxes[0].state, v1::PodSandboxState::SandboxReady as i32);
    assert_eq!(
        sandboxes[0].metadata.clone().unwrap_or_default().name,
        "web-testnode"
    );
    let containers = containers_of(&mut c, &uid(&web)).await?;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].id, container_id(&web, "app"));
    assert_eq!(
        containers[0].state,
        v1::ContainerState::ContainerRunning as i32
    );

    // And the web server answers on its pod address.
    assert_eq!(fetch(&pod_ip(&web)).await?.trim(), "hello from web");
    Ok(())
}

#[tokio::test]
async fn a_changed_manifest_replaces_its_pod() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest(
        "app.yaml",
        &one_container("app", "echo version one; exec sleep 3600"),
    )?;
    let old = node.wait_ready("app", LIMIT).await?;
    let mut c = node.runtime().await?;
    let old_sandbox = sandboxes_of(&mut c, &uid(&old)).await?;
    assert_eq!(old_sandbox.len(), 1);

    node.write_manifest(
        "app.yaml",
        &one_container("app", "echo version two; exec sleep 3600"),
    )?;
    let new = node
        .wait_pod("app", LIMIT, |p| {
            uid(p) != uid(&old) && running_and_ready(p)
        })
        .await?;
    // The old pod is gone from /pods and from the runtime, sandbox and containers.
    node.wait_for(LIMIT, |pods| !has_uid(pods, &uid(&old)))
        .await?;
    assert!(sandboxes_of(&mut c, &uid(&old)).await?.is_empty());
    assert!(containers_of(&mut c, &uid(&old)).await?.is_empty());
    let err = c
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: old_sandbox[0].id.clone(),
            verbose: false,
        })
        .await
        .expect_err("the old sandbox is removed");
    assert_eq!(err.code(), tonic::Code::NotFound);
    // The new pod runs the new command.
    let log = node.container_log(&new, "app", 0);
    wait_for_text(&log, "version two", LIMIT).await?;
    assert_eq!(sandboxes_of(&mut c, &uid(&new)).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_removed_manifest_stops_and_removes_its_pod() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest("gone.yaml", &one_container("gone", "exec sleep 3600"))?;
    node.write_manifest("stays.yaml", &one_container("stays", "exec sleep 3600"))?;
    let gone = node.wait_ready("gone", LIMIT).await?;
    let stays = node.wait_ready("stays", LIMIT).await?;

    node.remove_manifest("gone.yaml")?;
    let pods = node
        .wait_for(LIMIT, |pods| !has_uid(pods, &uid(&gone)))
        .await?;
    assert_eq!(pods.len(), 1);
    let mut c = node.runtime().await?;
    assert!(sandboxes_of(&mut c, &uid(&gone)).await?.is_empty());
    assert!(containers_of(&mut c, &uid(&gone)).await?.is_empty());

    // The other pod was not touched.
    let now = node.wait_ready("stays", LIMIT).await?;
    assert_eq!(container_id(&now, "app"), container_id(&stays, "app"));
    assert_eq!(restart_count(&now, "app"), 0);
    Ok(())
}

#[tokio::test]
async fn an_invalid_manifest_is_reported_and_the_others_run() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest("good.yaml", &one_container("good", "exec sleep 3600"))?;
    node.write_manifest(
        "deployment.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nope\n",
    )?;
    node.write_manifest("broken.yaml", "{ not: [valid")?;
    let good = node.wait_ready("good", LIMIT).await?;

    // The operator reads why each file was not used.
    let deadline = Instant::now() + LIMIT;
    loop {
        let log = node.log_text();
        let reported = log.lines().any(|l| {
            l.contains("deployment.yaml") && l.contains("expected apiVersion v1, kind Pod")
        }) && log
            .lines()
            .any(|l| l.contains("broken.yaml") && l.contains("not YAML or JSON"));
        if reported {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "not reported; log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.pods()?.len(), 1, "only the valid pod runs");

    // Fixing the file brings its pod up; the good pod runs on untouched.
    node.write_manifest("broken.yaml", &one_container("fixed", "exec sleep 3600"))?;
    node.wait_ready("fixed", LIMIT).await?;
    let now = node.wait_ready("good", LIMIT).await?;
    assert_eq!(container_id(&now, "app"), container_id(&good, "app"));
    assert_eq!(restart_count(&now, "app"), 0);
    Ok(())
}

#[tokio::test]
async fn a_crashing_container_backs_off_with_growing_delays() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest(
        "crash.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: crash
spec:
  restartPolicy: Always
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "echo crashing; exit 1"]
"#,
        ),
    )?;
    // Dead attempts show as lastState: collect their start times by container id (a
    // poll may miss an attempt that lived only milliseconds; the delays grow anyway).
    let mut starts: std::collections::BTreeMap<String, String> = Default::default();
    let pod = node
        .wait_pod("crash", Duration::from_secs(120), |p| {
            let rc = restart_count(p, "app");
            if let Some(t) = container(p, "app")
                .and_then(|c| c.last_state.clone())
                .and_then(|s| s.terminated)
                && let (Some(id), Some(at)) = (t.container_id, t.started_at)
            {
                starts.entry(id).or_insert_with(|| at.0.to_string());
            }
            rc >= 3 && starts.len() >= 3 && waiting_reason(p, "app") == "CrashLoopBackOff"
        })
        .await?;
    assert_eq!(
        phase(&pod),
        "Running",
        "restartPolicy Always keeps it Running"
    );
    assert_eq!(condition(&pod, "Ready"), "False");
    let last = container(&pod, "app")
        .and_then(|c| c.last_state.clone())
        .and_then(|s| s.terminated)
        .map(|t| t.exit_code);
    assert_eq!(last, Some(1), "lastState says how it ended");

    // As upstream: the first restart is at once, then the delays grow (10 s, 20 s, …).
    let mut secs: Vec<i64> = starts
        .values()
        .filter_map(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .collect();
    secs.sort();
    println!("attempt start times (s): {secs:?}");
    assert!(secs.len() >= 3, "saw the starts of attempts {starts:?}");
    let gaps: Vec<i64> = secs.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps[1] > gaps[0], "delays between starts grow: {gaps:?} s");

    // Old attempts are collected: the runtime keeps the newest dead one and the current.
    let mut c = node.runtime().await?;
    let attempts = containers_of(&mut c, &uid(&pod)).await?;
    assert!(attempts.len() <= 2, "{} containers kept", attempts.len());
    for a in &attempts {
        if a.state == v1::ContainerState::ContainerExited as i32 {
            assert_eq!(a.exit_code, 1);
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest(
        "live.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: live
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/healthy; exec sleep 3600"]
    livenessProbe:
      exec:
        command: [cat, /tmp/healthy]
      periodSeconds: 1
      failureThreshold: 1
"#,
        ),
    )?;
    let first = node.wait_ready("live", LIMIT).await?;
    let first_id = container_id(&first, "app");
    // Healthy for a while: no restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        restart_count(&node.wait_ready("live", LIMIT).await?, "app"),
        0
    );

    let mut c = node.runtime().await?;
    let (code, _, err) = exec(&mut c, &first_id, &["rm", "/tmp/healthy"]).await?;
    assert_eq!(code, 0, "{err}");
    let pod = node
        .wait_pod("live", LIMIT, |p| {
            restart_count(p, "app") >= 1
                && running_and_ready(p)
                && container_id(p, "app") != first_id
        })
        .await?;
    let last = container(&pod, "app")
        .and_then(|c| c.last_state.clone())
        .and_then(|s| s.terminated);
    assert!(last.is_some(), "lastState.terminated is set");
    let old = containers_of(&mut c, &uid(&pod)).await?;
    let old = old.iter().find(|s| s.id == first_id);
    assert_eq!(
        old.map(|s| s.state),
        Some(v1::ContainerState::ContainerExited as i32),
        "the unhealthy container was stopped"
    );
    Ok(())
}

#[tokio::test]
async fn readiness_flips_the_pod_ready_and_back() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest(
        "ready.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: ready
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/ready; exec sleep 3600"]
    readinessProbe:
      exec:
        command: [cat, /tmp/ready]
      periodSeconds: 1
      failureThreshold: 1
"#,
        ),
    )?;
    let pod = node.wait_ready("ready", LIMIT).await?;
    let id = container_id(&pod, "app");
    let mut c = node.runtime().await?;

    exec(&mut c, &id, &["rm", "/tmp/ready"]).await?;
    let pod = node
        .wait_pod("ready", LIMIT, |p| {
            phase(p) == "Running"
                && condition(p, "Ready") == "False"
                && condition(p, "ContainersReady") == "False"
                && container(p, "app").is_some_and(|c| !c.ready)
        })
        .await?;
    assert_eq!(container_id(&pod, "app"), id, "not ready is not restarted");

    exec(&mut c, &id, &["touch", "/tmp/ready"]).await?;
    let pod = node.wait_ready("ready", LIMIT).await?;
    assert_eq!(container_id(&pod, "app"), id);
    assert_eq!(restart_count(&pod, "app"), 0);
    Ok(())
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_app() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest(
        "init.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: init
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: one
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "sleep 1; echo one >> /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: two
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "echo two >> /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "echo $(cat /work/order); exec sleep 3600"]
    volumeMounts: [{name: work, mountPath: /work}]
  volumes:
  - name: work
    emptyDir: {}
"#,
        ),
    )?;
    let pod = node.wait_ready("init", LIMIT).await?;
    assert_eq!(condition(&pod, "Initialized"), "True");
    for name in ["one", "two"] {
        let done = container(&pod, name)
            .and_then(|c| c.state.clone())
            .and_then(|s| s.terminated);
        assert_eq!(
            done.map(|t| (t.exit_code, t.reason.unwrap_or_default())),
            Some((0, "Completed".to_string())),
            "init container {name}"
        );
    }
    let log = wait_for_text(&node.container_log(&pod, "app", 0), "one two", LIMIT).await?;
    assert!(!log.contains("two one"), "{log}");

    // The runtime agrees: `two` started only after `one` had exited.
    let mut c = node.runtime().await?;
    let all = containers_of(&mut c, &uid(&pod)).await?;
    let named = |n: &str| {
        all.iter()
            .find(|s| s.metadata.as_ref().is_some_and(|m| m.name == n))
            .cloned()
            .unwrap_or_default()
    };
    let (one, two, app) = (named("one"), named("two"), named("app"));
    assert!(one.finished_at > 0 && one.finished_at <= two.started_at);
    assert!(two.finished_at > 0 && two.finished_at <= app.started_at);
    Ok(())
}

#[tokio::test]
async fn pre_stop_runs_before_sigterm_when_the_manifest_is_removed() -> R {
    let node = KubeletNode::start().await?;
    let markers = node.dir().join("markers");
    std::fs::create_dir_all(&markers)?;
    node.write_manifest(
        "stop.yaml",
        &manifest(&format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: stop
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - "trap 'echo term >> /markers/log; exit 0' TERM; echo started >> /markers/log; while true; do sleep 1; done"
    volumeMounts: [{{name: markers, mountPath: /markers}}]
    lifecycle:
      preStop:
        exec:
          command: [sh, -c, "echo prestop >> /markers/log"]
  - name: web
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/stop; exec busybox httpd -f -vv -p 8080 -h /tmp 2>>/markers/access"]
    volumeMounts: [{{name: markers, mountPath: /markers}}]
    lifecycle:
      preStop:
        httpGet: {{path: /stop, port: 8080}}
  volumes:
  - name: markers
    hostPath:
      path: {}
      type: Directory
"#,
            markers.display()
        )),
    )?;
    let pod = node.wait_ready("stop", LIMIT).await?;
    let log = markers.join("log");
    wait_for_text(&log, "started", LIMIT).await?;

    node.remove_manifest("stop.yaml")?;
    node.wait_for(LIMIT, |pods| !has_uid(pods, &uid(&pod)))
        .await?;
    assert_eq!(
        std::fs::read_to_string(&log)?,
        "started\nprestop\nterm\n",
        "the preStop hook ran, then the container got SIGTERM and exited on its own"
    );
    // The httpGet hook went to the pod's IP on the pod network.
    let access = std::fs::read_to_string(markers.join("access"))?;
    assert!(
        access.contains("url:/stop"),
        "no preStop request in {access:?}"
    );
    Ok(())
}

#[tokio::test]
async fn termination_messages_come_from_the_file_or_the_log() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest(
        "last.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: last
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
  - name: file
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "echo -n 'written by me' > /dev/termination-log; exit 3"]
  - name: custom
    image: IMAGE
    imagePullPolicy: Never
    terminationMessagePath: /tmp/last-words
    command: [sh, -c, "echo -n custom > /tmp/last-words"]
  - name: logs
    image: IMAGE
    imagePullPolicy: Never
    terminationMessagePolicy: FallbackToLogsOnError
    command: [sh, -c, "echo first; echo 'it broke' >&2; exit 1"]
"#,
        ),
    )?;
    let pod = node
        .wait_pod("last", LIMIT, |p| phase(p) == "Failed")
        .await?;
    let message = |name: &str| {
        container(&pod, name)
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.clone())
            .unwrap_or_default()
    };
    assert_eq!(message("file"), "written by me", "a non-root user wrote it");
    assert_eq!(message("custom"), "custom");
    assert_eq!(message("logs"), "first\nit broke\n");
    Ok(())
}

#[tokio::test]
async fn removing_a_pod_gives_up_a_sync_in_flight() -> R {
    let node = KubeletNode::start().await?;
    // A postStart hook that would hold the sync for 10 minutes.
    node.write_manifest(
        "hook.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: hook
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command: [sleep, "3600"]
    lifecycle:
      postStart:
        exec: {command: [sleep, "600"]}
"#,
        ),
    )?;
    let pod = node.wait_pod("hook", LIMIT, |p| !uid(p).is_empty()).await?;
    let mut c = node.runtime().await?;
    let deadline = Instant::now() + LIMIT;
    while containers_of(&mut c, &uid(&pod)).await?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "the container was not created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.remove_manifest("hook.yaml")?;
    // Well before the hook would end: the pod is stopped and removed.
    node.wait_for(LIMIT, |pods| !has_uid(pods, &uid(&pod)))
        .await?;
    assert!(containers_of(&mut c, &uid(&pod)).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_empty_dir_is_shared_between_two_containers() -> R {
    let node = KubeletNode::start().await?;
    node.write_manifest(
        "share.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: share
spec:
  terminationGracePeriodSeconds: 2
  hostAliases: [{ip: 127.0.0.1, hostnames: [foo.local, bar.local]}]
  containers:
  - name: writer
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "echo hello from writer > /data/msg; exec sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /data}]
    resources: {limits: {memory: 64Mi}}
  - name: reader
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "exec sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /shared}]
  - name: sub
    image: IMAGE
    imagePullPolicy: Never
    env: [{name: WHO, value: me}]
    command: [sh, -c, "echo in sub > /only/file; exec sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /only, subPathExpr: "dir-$(WHO)"}]
  volumes:
  - name: scratch
    emptyDir: {}
"#,
        ),
    )?;
    let pod = node.wait_ready("share", LIMIT).await?;
    let (writer, reader) = (container_id(&pod, "writer"), container_id(&pod, "reader"));
    let mut c = node.runtime().await?;

    let deadline = Instant::now() + LIMIT;
    loop {
        let (_, out, _) = exec(&mut c, &reader, &["cat", "/shared/msg"]).await?;
        if out.trim() == "hello from writer" {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "reader sees {out:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the other way round, at once.
    let (code, _, err) = exec(
        &mut c,
        &reader,
        &["sh", "-c", "echo hello from reader > /shared/reply"],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = exec(&mut c, &writer, &["cat", "/data/reply"]).await?;
    assert_eq!(out.trim(), "hello from reader");
    // No swap beyond the memory limit (where the node accounts swap: cgroup v1 memsw).
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        let (_, memsw, _) = exec(
            &mut c,
            &writer,
            &["cat", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"],
        )
        .await?;
        assert_eq!(memsw.trim(), (64u64 << 20).to_string());
    }
    // The kubelet's /etc/hosts: the pod's own name and the host aliases.
    let (_, hosts, _) = exec(&mut c, &reader, &["cat", "/etc/hosts"]).await?;
    assert!(
        hosts.contains(&format!("{}\tshare", pod_ip(&pod))),
        "{hosts}"
    );
    assert!(hosts.contains("127.0.0.1\tfoo.local\tbar.local"), "{hosts}");
    // A subPathExpr sees only its directory of the volume.
    let (_, out, _) = exec(&mut c, &writer, &["cat", "/data/dir-me/file"]).await?;
    assert_eq!(out.trim(), "in sub");
    let sub = container_id(&pod, "sub");
    let (code, _, _) = exec(&mut c, &sub, &["test", "-e", "/only/msg"]).await?;
    assert_ne!(code, 0, "the rest of the volume is not visible");
    // Its bind mount goes with the pod.
    node.remove_manifest("share.yaml")?;
    node.wait_for(LIMIT, |pods| !has_uid(pods, &uid(&pod)))
        .await?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        !mounts.contains(&format!("{}/", uid(&pod))),
        "mounts of the pod left: {mounts}"
    );
    let pod_dir = node.root_dir.join("pods").join(uid(&pod));
    assert!(!pod_dir.exists(), "{} left", pod_dir.display());
    Ok(())
}

#[tokio::test]
async fn pods_outlive_a_stopped_kubelet_and_are_adopted_by_the_next() -> R {
    let mut node = KubeletNode::start().await?;
    node.write_manifest("web.yaml", &web("web"))?;
    let before = node.wait_ready("web", LIMIT).await?;
    let ip = pod_ip(&before);
    let mut c = node.runtime().await?;
    let sandboxes = sandboxes_of(&mut c, &uid(&before)).await?;
    drop(c);

    let status = node.terminate()?;
    assert!(status.success(), "SIGTERM is a clean shutdown: {status}");
    assert!(
        node.log_text().contains("pods keep running"),
        "{}",
        node.log_text()
    );
    // No agent runs, and the pod still serves.
    assert_eq!(fetch(&ip).await?.trim(), "hello from web");

    node.spawn().await?;
    let after = node.wait_ready("web", LIMIT).await?;
    assert_eq!(uid(&after), uid(&before));
    assert_eq!(
        container_id(&after, "app"),
        container_id(&before, "app"),
        "the running container was adopted, not restarted"
    );
    assert_eq!(restart_count(&after, "app"), 0);
    assert_eq!(pod_ip(&after), ip);
    let mut c = node.runtime().await?;
    let now = sandboxes_of(&mut c, &uid(&after)).await?;
    assert_eq!(
        now.iter().map(|s| &s.id).collect::<Vec<_>>(),
        sandboxes.iter().map(|s| &s.id).collect::<Vec<_>>()
    );
    assert_eq!(containers_of(&mut c, &uid(&after)).await?.len(), 1);
    assert_eq!(fetch(&ip).await?.trim(), "hello from web");
    Ok(())
}

#[tokio::test]
async fn image_pull_errors_back_off_and_network_probes_and_post_start_work() -> R {
    let node = KubeletNode::start().await?;
    // An image that cannot be pulled (a registry address on loopback where nothing
    // listens): ErrImagePull, then ImagePullBackOff; the pod stays Pending.
    node.write_manifest(
        "nopull.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: nopull
spec:
  containers:
  - name: app
    image: 127.0.0.1:9/nothing/here:1
    imagePullPolicy: IfNotPresent
"#,
    )?;
    // httpGet readiness, tcpSocket liveness and a postStart hook on a web server.
    node.write_manifest(
        "probed.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: probed
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "echo up > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp"]
    readinessProbe:
      httpGet: {path: /index.html, port: 8080}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
    lifecycle:
      postStart:
        exec: {command: [sh, -c, "echo hooked > /tmp/post-start"]}
"#,
        ),
    )?;
    // runAsNonRoot with an image that runs as root (busybox has no USER).
    node.write_manifest(
        "nonroot.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: nonroot
spec:
  securityContext: {runAsNonRoot: true}
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command: [sleep, "3600"]
"#,
        ),
    )?;
    let pod = node
        .wait_pod("nopull", LIMIT, |p| {
            waiting_reason(p, "app") == "ImagePullBackOff"
        })
        .await?;
    assert_eq!(phase(&pod), "Pending");
    let log = node.log_text();
    assert!(
        log.contains("127.0.0.1:9/nothing/here:1"),
        "the pull error names the image"
    );

    let nonroot = node
        .wait_pod("nonroot", LIMIT, |p| {
            waiting_reason(p, "app") == "CreateContainerConfigError"
        })
        .await?;
    assert_eq!(phase(&nonroot), "Pending");
    assert!(
        node.log_text().contains("the image runs as root"),
        "the error says why"
    );

    let pod = node.wait_ready("probed", LIMIT).await?;
    assert_eq!(condition(&pod, "Ready"), "True", "httpGet readiness passed");
    let mut c = node.runtime().await?;
    let id = container_id(&pod, "web");
    let (code, out, _) = exec(&mut c, &id, &["cat", "/tmp/post-start"]).await?;
    assert_eq!((code, out.trim()), (0, "hooked"), "postStart ran");
    // The tcpSocket liveness probe keeps passing: no restarts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = node.wait_ready("probed", LIMIT).await?;
    assert_eq!(restart_count(&pod, "web"), 0);
    Ok(())
}

/// A one-container pod whose container declares `resources` (a YAML flow mapping).
fn with_resources(name: &str, resources: &str) -> String {
    format!(
        "{}    resources: {resources}\n",
        one_container(name, "exec sleep 3600")
    )
}

/// The value of a cgroup file of `rel` in the hierarchy of `controller` (v1) or the
/// unified one (v2, where `v2_file` names it).
fn cgroup_value(rel: &str, controller: &str, v1_file: &str, v2_file: &str) -> R<String> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let path = if root.join("cgroup.controllers").exists() {
        root.join(rel).join(v2_file)
    } else {
        root.join(controller).join(rel).join(v1_file)
    };
    Ok(std::fs::read_to_string(&path)
        .with_context(|| path.display().to_string())?
        .trim()
        .to_string())
}

/// Whether any cgroup at or below `dir` holds a process.
fn holds_processes(dir: &std::path::Path) -> bool {
    let here = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    !here.trim().is_empty()
        || std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()) && holds_processes(&e.path()))
}

#[tokio::test]
async fn pods_get_qos_cgroups_with_their_limits_until_they_are_removed() -> R {
    let mut node = KubeletNode::start().await?;
    node.write_manifest(
        "g.yaml",
        &with_resources("guaranteed", "{limits: {cpu: 250m, memory: 32Mi}}"),
    )?;
    node.write_manifest(
        "b.yaml",
        &with_resources("burstable", "{requests: {cpu: 100m}}"),
    )?;
    node.write_manifest("e.yaml", &one_container("besteffort", "exec sleep 3600"))?;
    let g = node.wait_ready("guaranteed", LIMIT).await?;
    let b = node.wait_ready("burstable", LIMIT).await?;
    let e = node.wait_ready("besteffort", LIMIT).await?;
    let pods = format!("{}/kubepods", node.cgroup_root.trim_start_matches('/'));
    let of = |tier: &str, pod: &Pod| format!("{pods}{tier}/pod{}", uid(pod));
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();

    // The Guaranteed pod's own cgroup carries its limits, and its containers run in it.
    let gpath = of("", &g);
    if v2 {
        assert_eq!(cgroup_value(&gpath, "", "", "cpu.max")?, "25000 100000");
    } else {
        assert_eq!(
            cgroup_value(&gpath, "cpu", "cpu.cfs_quota_us", "")?,
            "25000"
        );
    }
    assert_eq!(
        cgroup_value(&gpath, "memory", "memory.limit_in_bytes", "memory.max")?,
        (32u64 << 20).to_string()
    );
    for path in e2e::kubelet::cgroup_dirs(&gpath) {
        if path.starts_with("/sys/fs/cgroup/memory") || v2 {
            assert!(
                holds_processes(&path),
                "no process under {}",
                path.display()
            );
        }
    }
    // The tiers: BestEffort at the least cpu weight, Burstable sized by its pods.
    let (least, burstable) = if v2 { ("1", "4") } else { ("2", "102") };
    assert_eq!(
        cgroup_value(
            &format!("{pods}/besteffort"),
            "cpu",
            "cpu.shares",
            "cpu.weight"
        )?,
        least
    );
    assert_eq!(
        cgroup_value(
            &format!("{pods}/burstable"),
            "cpu",
            "cpu.shares",
            "cpu.weight"
        )?,
        burstable
    );
    for (tier, pod) in [("/burstable", &b), ("/besteffort", &e)] {
        assert!(
            !e2e::kubelet::cgroup_dirs(&of(tier, pod)).is_empty(),
            "{} has no cgroup in its tier",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
    }

    // Removed pods take their cgroups along, from every hierarchy.
    for file in ["g.yaml", "b.yaml", "e.yaml"] {
        node.remove_manifest(file)?;
    }
    node.wait_for(LIMIT, |pods| pods.is_empty()).await?;
    for (tier, pod) in [("", &g), ("/burstable", &b), ("/besteffort", &e)] {
        let left = e2e::kubelet::cgroup_dirs(&of(tier, pod));
        assert!(left.is_empty(), "pod cgroups left: {left:?}");
    }

    // A pod cgroup nothing runs in any more (its pod removed behind the agent's back)
    // is swept at start; `--pod-max-pids` limits every new pod.
    let stale = format!("{pods}/besteffort/podstale-uid");
    for dir in e2e::kubelet::cgroup_dirs(&format!("{pods}/besteffort")) {
        std::fs::create_dir(dir.join("podstale-uid"))?;
    }
    assert!(!e2e::kubelet::cgroup_dirs(&stale).is_empty());
    node.terminate()?;
    node.add_args(&["--pod-max-pids", "50"]);
    node.spawn().await?;
    node.write_manifest("e.yaml", &one_container("besteffort", "exec sleep 3600"))?;
    let e = node.wait_ready("besteffort", LIMIT).await?;
    let left = e2e::kubelet::cgroup_dirs(&stale);
    assert!(left.is_empty(), "stale pod cgroups left: {left:?}");
    assert_eq!(
        cgroup_value(&of("/besteffort", &e), "pids", "pids.max", "pids.max")?,
        "50"
    );
    Ok(())
}

#[tokio::test]
async fn a_replaced_static_pod_starts_once_the_old_one_is_gone() -> R {
    // As upstream: one instance of a static pod at a time, so the new one never meets
    // the old one on its host ports, host network or hostPath files.
    let node = KubeletNode::start().await?;
    let markers = node.dir().join("markers");
    std::fs::create_dir_all(&markers)?;
    let version = |v: &str| {
        manifest(&format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: single
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: app
    image: IMAGE
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - "trap 'sleep 1; echo {v} stopped >> /markers/log; exit 0' TERM; echo {v} started >> /markers/log; while true; do sleep 1; done"
    volumeMounts: [{{name: markers, mountPath: /markers}}]
  volumes:
  - name: markers
    hostPath: {{path: {}, type: Directory}}
"#,
            markers.display()
        ))
    };
    node.write_manifest("single.yaml", &version("v1"))?;
    let old = node.wait_ready("single", LIMIT).await?;
    let log = markers.join("log");
    wait_for_text(&log, "v1 started", LIMIT).await?;

    node.write_manifest("single.yaml", &version("v2"))?;
    let new = node
        .wait_pod("single", LIMIT, |p| {
            uid(p) != uid(&old) && running_and_ready(p)
        })
        .await?;
    wait_for_text(&log, "v2 started", LIMIT).await?;
    assert_eq!(
        std::fs::read_to_string(&log)?,
        "v1 started\nv1 stopped\nv2 started\n",
        "the new instance started only after the old one stopped"
    );
    let pods = node.pods()?;
    assert!(!has_uid(&pods, &uid(&old)), "the old instance is gone");
    assert!(has_uid(&pods, &uid(&new)));
    Ok(())
}

#[tokio::test]
async fn a_pod_sees_its_fields_as_configured() -> R {
    // What the translation promises, checked from inside the containers: downward env
    // and files, $(VAR) expansion, hostname, a shared PID namespace, a memory-backed
    // emptyDir with its size, a startup probe; and a job-like pod under OnFailure.
    let node = KubeletNode::start().await?;
    node.write_manifest(
        "fields.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: fields
  labels: {tier: demo}
spec:
  terminationGracePeriodSeconds: 2
  hostname: box
  subdomain: sub
  shareProcessNamespace: true
  containers:
  - name: main
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "exec sleep 3600"]
    env:
    - {name: MEM_LIMIT, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: GREETING, value: "hi $(POD_NAME)"}
    resources: {limits: {cpu: 100m, memory: 64Mi}}
    startupProbe: {exec: {command: ["true"]}, periodSeconds: 1}
    volumeMounts:
    - {name: mem, mountPath: /mem}
    - {name: info, mountPath: /info}
  - name: peer
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "exec sleep 3601"]
  volumes:
  - name: mem
    emptyDir: {medium: Memory, sizeLimit: 8Mi}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
"#,
        ),
    )?;
    node.write_manifest(
        "job.yaml",
        &manifest(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: job
spec:
  restartPolicy: OnFailure
  containers:
  - name: work
    image: IMAGE
    imagePullPolicy: Never
    command: [sh, -c, "if [ -f /scratch/tried ]; then exit 0; fi; touch /scratch/tried; exit 3"]
    volumeMounts: [{name: scratch, mountPath: /scratch}]
  volumes:
  - {name: scratch, emptyDir: {}}
"#,
        ),
    )?;
    let pod = node.wait_ready("fields", LIMIT).await?;
    assert_eq!(container(&pod, "main").and_then(|c| c.started), Some(true));
    let main = container_id(&pod, "main");
    let c = node.runtime().await?;
    let run = |cmd: &'static str| {
        let main = main.clone();
        let mut c = c.clone();
        async move {
            let (code, out, err) = exec(&mut c, &main, &["sh", "-c", cmd]).await?;
            anyhow::ensure!(code == 0, "{cmd}: exit {code}: {err}");
            Ok::<String, anyhow::Error>(out.trim().to_string())
        }
    };
    assert_eq!(run("echo $MEM_LIMIT").await?, "64");
    assert_eq!(run("echo $GREETING").await?, "hi fields-testnode");
    assert_eq!(run("hostname").await?, "box");
    let procs = run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").await?;
    assert!(
        procs.contains("sleep 3601"),
        "the peer's process is visible: {procs}"
    );
    let mount = run("grep ' /mem ' /proc/mounts").await?;
    assert!(
        mount.starts_with("tmpfs ") && mount.contains("size=8192k"),
        "{mount}"
    );
    assert_eq!(run("cat /info/labels").await?, "tier=\"demo\"");

    let job = node
        .wait_pod("job", LIMIT, |p| phase(p) == "Succeeded")
        .await?;
    assert_eq!(
        restart_count(&job, "work"),
        1,
        "failed once, then succeeded"
    );
    let t = container(&job, "work")
        .and_then(|c| c.state.clone())
        .and_then(|s| s.terminated)
        .context("terminated")?;
    assert_eq!(t.exit_code, 0);
    Ok(())
}
