//! A stand-in kubelet for the bridge pods on the kwok node.
//!
//! kwok binds pods to its fake node and marks them Running and Ready without
//! running anything. This loop does what a kubelet would for the pods a
//! label selector picks:
//!
//! - starts the pod's container as its spec says: the files of its ConfigMap
//!   and Secret volumes (only the listed items, under the mount paths), its
//!   env (literal and `secretKeyRef`/`configMapKeyRef`) and its
//!   command/args — either as a local process or, with [`Runtime::Podman`],
//!   as a container of the image with real read-only volume mounts;
//! - probes the container's readiness endpoint (`readinessProbe.httpGet`)
//!   and writes the result as the pod's `Ready`/`ContainersReady` conditions
//!   and container status. kwok's default `pod-ready` stage only acts on pods
//!   without a `status.podIP`, so once kwok has started a pod it leaves these
//!   conditions to us (checked against the test control plane);
//! - stops the container (SIGTERM, then SIGKILL after the grace period) when
//!   its pod is deleted, and restarts one that exits, reporting the
//!   termination message as the container's last state.
//!
//! Two deliberate differences from a real node, both because every pod here
//! shares the host's network and file system:
//! - a pod's own IP does not exist, so a listen address on a declared
//!   container port (`0.0.0.0:8080`) becomes `127.0.0.1:<free port>`;
//! - for a local process, absolute paths under a mount path (and the
//!   termination-message file) get the pod's directory as prefix — the only
//!   rewrite; file contents and names below the mount point are untouched.
//!
//! kwok deletes a terminating pod at once, which would let a `Recreate`
//! Deployment start the replacement while the old bridge still drains; two
//! bridges of one slot would then share MQTT client ids. So a new pod waits
//! until the old container of its slot label has exited, as the real
//! `Recreate` + kubelet sequence guarantees.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

/// How a container runs.
#[derive(Clone, Debug)]
pub enum Runtime {
    /// The bridge binary as a local process (the pod's image is not used).
    Process { binary: PathBuf },
    /// The pod's image with podman, in a private containers-storage.
    Podman(Podman),
}

/// podman settings (see the shared guide on containers, and install-tests).
#[derive(Clone, Debug)]
pub struct Podman {
    /// Private storage: `<dir>/root`, `<dir>/runroot`, `<dir>/containers.conf`.
    pub storage: PathBuf,
}

impl Podman {
    /// A private store under `dir` (short: podman refuses long run roots).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        // podman's default ulimits cannot be set in this sandbox.
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )
        .context("write containers.conf")?;
        Ok(Self {
            storage: dir.to_path_buf(),
        })
    }

    /// `--root`/`--runroot` for buildah and podman.
    pub fn root_args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.storage.join("root").display().to_string(),
            "--runroot".into(),
            self.storage.join("runroot").display().to_string(),
        ]
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.storage.join("containers.conf"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(self.root_args());
        cmd
    }
}

/// What the kubelet runs and where.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    /// Label selector of the pods to run (e.g. `mqttkafka.io/bridge=<name>`).
    pub selector: String,
    /// Pods with the same value of this label never run at once (the slot).
    pub exclusive_label: Option<String>,
    pub runtime: Runtime,
    /// Per-pod directories (files, logs) go here.
    pub work_dir: PathBuf,
    /// How often pods are listed and probed.
    pub period: Duration,
}

/// A container as it runs now, for callers to look at.
#[derive(Clone, Debug)]
pub struct Running {
    pub pod: String,
    /// Value of the exclusive label (the slot).
    pub slot: String,
    /// Where the container's declared port listens.
    pub http: SocketAddr,
    /// The pod-template annotation with the configuration hash, if any.
    pub config_hash: Option<String>,
    pub log: PathBuf,
    /// Last probe: ready, and the endpoint's answer.
    pub ready: Option<bool>,
    pub probe: String,
    pub restarts: i32,
    /// Asked to stop (its pod is gone) and not exited yet.
    pub stopping: bool,
    /// The Ready value last written to the pod's status.
    pub reported: Option<bool>,
}

/// Shared view of the running containers, by pod name.
pub type View = Arc<Mutex<BTreeMap<String, Running>>>;

struct Proc {
    child: Child,
    /// podman and the container name, to remove it after a SIGKILL.
    podman: Option<(Podman, String)>,
    pod_uid: String,
    info: Running,
    probe_path: String,
    started: Instant,
    /// Last Ready value written to the pod status.
    reported: Option<bool>,
    /// When SIGTERM was sent, and the grace period.
    stopping: Option<(Instant, Duration)>,
    root: PathBuf,
    termination_path: Option<String>,
}

/// The running kubelet loop.
pub struct Kubelet {
    pub view: View,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    pub fn start(client: kube::Client, settings: Settings) -> Self {
        let view: View = Arc::default();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(client, settings, view.clone(), rx));
        Self { view, stop, task }
    }

    /// The containers now running, stopping ones included (a snapshot).
    pub fn running(&self) -> Vec<Running> {
        self.view
            .lock()
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops every container (SIGTERM, grace period) and the loop.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    client: kube::Client,
    s: Settings,
    view: View,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &s.namespace);
    let mut procs: BTreeMap<String, Proc> = BTreeMap::new();
    let mut backoff: BTreeMap<String, (Instant, i32)> = BTreeMap::new();
    loop {
        if *stop.borrow() {
            break;
        }
        if let Err(e) = turn(&client, &pods, &s, &mut procs, &mut backoff).await {
            eprintln!("kubelet: {e:#}");
        }
        if let Ok(mut v) = view.lock() {
            *v = procs
                .iter()
                .map(|(k, p)| {
                    let mut info = p.info.clone();
                    info.stopping = p.stopping.is_some();
                    info.reported = p.reported;
                    (k.clone(), info)
                })
                .collect();
        }
        tokio::select! {
            _ = tokio::time::sleep(s.period) => {}
            _ = stop.changed() => {}
        }
    }
    // Graceful stop of everything, bounded by the grace periods.
    for p in procs.values_mut() {
        if p.stopping.is_none() {
            begin_stop(p, Duration::from_secs(30));
        }
    }
    while !procs.is_empty() {
        reap(&mut procs);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Ok(mut v) = view.lock() {
        v.clear();
    }
}

/// One pass: stop what lost its pod, start what has none, probe the rest.
async fn turn(
    client: &kube::Client,
    pods: &Api<Pod>,
    s: &Settings,
    procs: &mut BTreeMap<String, Proc>,
    backoff: &mut BTreeMap<String, (Instant, i32)>,
) -> Result<()> {
    let list = pods
        .list(&ListParams::default().labels(&s.selector))
        .await
        .context("list pods")?;
    let live: BTreeMap<String, &Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name.clone()?, p)))
        .collect();

    // Deleted (or replaced under the same name): stop, as a kubelet does.
    for (name, p) in procs.iter_mut() {
        let gone = live
            .get(name)
            .is_none_or(|pod| pod.metadata.uid.as_deref() != Some(p.pod_uid.as_str()));
        if gone && p.stopping.is_none() {
            let grace = list
                .items
                .iter()
                .find(|pod| pod.metadata.name.as_deref() == Some(name))
                .and_then(|pod| pod.spec.as_ref()?.termination_grace_period_seconds)
                .unwrap_or(30);
            begin_stop(p, Duration::from_secs(grace.max(1) as u64));
        }
    }
    let exited = reap(procs);

    // Exited on its own: report it, restart after a backoff (restartPolicy Always).
    for (name, code, message) in exited {
        let restarts = backoff.get(&name).map_or(0, |b| b.1) + 1;
        backoff.insert(
            name.clone(),
            (
                Instant::now() + Duration::from_secs(2u64.pow(restarts.min(4) as u32)),
                restarts,
            ),
        );
        if live.contains_key(&name) {
            let patch = terminated_status(code, &message, restarts);
            let _ = pods
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await;
        }
    }

    for (name, pod) in &live {
        if procs.contains_key(name) {
            continue;
        }
        // kwok is done with a pod once it has an IP; from then on its status is ours.
        let started_by_kwok = pod.status.as_ref().and_then(|s| s.pod_ip.as_ref());
        if started_by_kwok.is_none() {
            continue;
        }
        if backoff.get(name).is_some_and(|b| Instant::now() < b.0) {
            continue;
        }
        let slot = s
            .exclusive_label
            .as_ref()
            .and_then(|l| pod.metadata.labels.as_ref()?.get(l).cloned())
            .unwrap_or_else(|| name.clone());
        // One container per slot at a time (see the module docs).
        if procs.values().any(|p| p.info.slot == slot) {
            continue;
        }
        let restarts = backoff.get(name).map_or(0, |b| b.1);
        match start(client, s, pod, slot, restarts).await {
            Ok(mut p) => {
                // Not ready until the probe says so (kwok said Ready already).
                let patch = ready_status(false, "starting", restarts, p.started);
                if pods
                    .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
                    .await
                    .is_ok()
                {
                    p.reported = Some(false);
                }
                eprintln!(
                    "kubelet: started pod {name} (slot {}), http {}, log {}",
                    p.info.slot,
                    p.info.http,
                    p.info.log.display()
                );
                procs.insert(name.clone(), p);
            }
            Err(e) => {
                eprintln!("kubelet: cannot start pod {name}: {e:#}");
                backoff.insert(
                    name.clone(),
                    (Instant::now() + Duration::from_secs(5), restarts),
                );
            }
        }
    }
    backoff.retain(|name, _| live.contains_key(name));

    // Readiness probe → pod status.
    for (name, p) in procs.iter_mut() {
        if p.stopping.is_some() {
            continue;
        }
        let (ready, text) = match crate::http_get(p.info.http, &p.probe_path).await {
            Ok((code, body)) => ((200..400).contains(&code), body.trim().to_owned()),
            Err(e) => (false, format!("{e:#}")),
        };
        p.info.ready = Some(ready);
        p.info.probe = text.clone();
        if p.reported != Some(ready) {
            let patch = ready_status(ready, &text, p.info.restarts, p.started);
            match pods
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                Ok(_) => p.reported = Some(ready),
                Err(e) => eprintln!("kubelet: patch status of pod {name}: {e}"),
            }
        }
    }
    Ok(())
}

fn begin_stop(p: &mut Proc, grace: Duration) {
    crate::terminate(p.child.id());
    p.stopping = Some((Instant::now(), grace));
}

/// Collects exited containers; returns (pod, exit code, termination message)
/// of those that exited without being asked to.
fn reap(procs: &mut BTreeMap<String, Proc>) -> Vec<(String, i32, String)> {
    let mut exited = Vec::new();
    let mut done = Vec::new();
    for (name, p) in procs.iter_mut() {
        match p.child.try_wait() {
            Ok(Some(status)) => {
                if p.stopping.is_none() {
                    let message = p
                        .termination_path
                        .as_ref()
                        .and_then(|t| {
                            std::fs::read_to_string(p.root.join(t.trim_start_matches('/'))).ok()
                        })
                        .unwrap_or_default();
                    exited.push((name.clone(), status.code().unwrap_or(-1), message));
                }
                done.push(name.clone());
            }
            Ok(None) => {
                if let Some((since, grace)) = p.stopping
                    && since.elapsed() > grace
                {
                    let _ = p.child.kill();
                }
            }
            Err(_) => done.push(name.clone()),
        }
    }
    for name in done {
        if let Some(mut p) = procs.remove(&name) {
            let _ = p.child.wait();
            if let Some((pm, c)) = &p.podman {
                // --rm removes it; this only cleans up after a SIGKILL of podman.
                let _ = crate::output(pm.command().args(["rm", "--force", c]), None);
            }
        }
    }
    exited
}

fn ready_status(ready: bool, probe: &str, restarts: i32, started: Instant) -> serde_json::Value {
    let status = if ready { "True" } else { "False" };
    let (reason, message) = if ready {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!("containers with unready status: [bridge]: {probe}")),
        )
    };
    let now = now_rfc3339();
    let started_at = {
        let ago = started.elapsed().as_secs() as i64;
        k8s_openapi::jiff::Timestamp::now()
            .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(ago))
            .map(|t| Timestamp(t).rfc3339())
            .unwrap_or_else(|_| now.clone())
    };
    serde_json::json!({
        "status": {
            "conditions": [
                {"type": "Ready", "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": now},
                {"type": "ContainersReady", "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": "bridge",
                "ready": ready,
                "started": true,
                "restartCount": restarts,
                "image": "",
                "imageID": "",
                "state": {"running": {"startedAt": started_at}},
            }],
        }
    })
}

fn terminated_status(code: i32, message: &str, restarts: i32) -> serde_json::Value {
    let now = now_rfc3339();
    let message = message.trim();
    serde_json::json!({
        "status": {
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                 "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                 "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": "bridge",
                "ready": false,
                "started": false,
                "restartCount": restarts,
                "image": "",
                "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {
                    "exitCode": code,
                    "reason": "Error",
                    "message": if message.is_empty() { None } else { Some(message) },
                    "finishedAt": now,
                }},
            }],
        }
    })
}

struct Timestamp(k8s_openapi::jiff::Timestamp);

impl Timestamp {
    fn rfc3339(&self) -> String {
        // Whole seconds, as the apiserver stores them.
        let secs = self.0.as_second();
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .unwrap_or(self.0)
            .to_string()
    }
}

fn now_rfc3339() -> String {
    Timestamp(k8s_openapi::jiff::Timestamp::now()).rfc3339()
}

/// Writes the pod's volumes, resolves its env and starts its first container.
async fn start(
    client: &kube::Client,
    s: &Settings,
    pod: &Pod,
    slot: String,
    restarts: i32,
) -> Result<Proc> {
    let name = pod.metadata.name.clone().context("pod without name")?;
    let uid = pod.metadata.uid.clone().context("pod without uid")?;
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let container = spec.containers.first().context("pod without containers")?;
    let root = s.work_dir.join(&name);
    // A fresh directory per start: no file of an earlier configuration survives.
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;

    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &s.namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let podman = matches!(s.runtime, Runtime::Podman(_));

    // The declared container port → a free local port (see the module docs).
    let port = container
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .next();
    let local_port = crate::free_port()?;
    let http: SocketAddr = ([127, 0, 0, 1], local_port).into();
    let probe = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.path.clone())
        .unwrap_or_else(|| "/".into());

    let mounts: Vec<(String, String, bool)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.name.clone(),
                m.mount_path.clone(),
                m.read_only.unwrap_or(false),
            )
        })
        .collect();
    let mount_paths: Vec<String> = mounts.iter().map(|m| m.1.clone()).collect();
    let termination = container.termination_message_path.clone();
    let rewrite = Rewrite {
        root: root.clone(),
        prefixes: if podman {
            Vec::new()
        } else {
            mount_paths
                .iter()
                .cloned()
                .chain(termination.clone())
                .collect()
        },
        port: port.map(|p| (p, local_port)),
    };

    let mut volumes_args = Vec::new();
    for (vol_name, mount_path, read_only) in &mounts {
        let vol = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| &v.name == vol_name)
            .with_context(|| format!("volume {vol_name} not in the pod spec"))?;
        let dir = root.join(mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let files: Vec<(String, Vec<u8>)> = if let Some(cm) = &vol.config_map {
            let obj = configs
                .get(&cm.name)
                .await
                .with_context(|| format!("ConfigMap {}", cm.name))?;
            let data = obj.data.unwrap_or_default();
            let items: Vec<(String, String)> = match &cm.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            let mut files = Vec::new();
            for (key, path) in items {
                let text = data
                    .get(&key)
                    .with_context(|| format!("ConfigMap {} has no key {key}", cm.name))?;
                files.push((path, rewrite.apply(text)?.into_bytes()));
            }
            files
        } else if let Some(sec) = &vol.secret {
            let secret_name = sec
                .secret_name
                .clone()
                .context("secret volume without name")?;
            let obj = secrets
                .get(&secret_name)
                .await
                .with_context(|| format!("Secret {secret_name}"))?;
            let data = obj.data.unwrap_or_default();
            let items: Vec<(String, String)> = match &sec.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            let mut files = Vec::new();
            for (key, path) in items {
                let bytes = data
                    .get(&key)
                    .with_context(|| format!("Secret {secret_name} has no key {key}"))?;
                files.push((path, bytes.0.clone()));
            }
            files
        } else if vol.empty_dir.is_some() {
            Vec::new()
        } else {
            bail!("volume {vol_name}: only configMap, secret and emptyDir volumes are supported");
        };
        for (path, bytes) in files {
            let file = dir.join(&path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&file, bytes).with_context(|| format!("write {}", file.display()))?;
        }
        if podman {
            chown_tree(&dir, spec_user(pod))?;
            volumes_args.push(format!(
                "{}:{mount_path}{}",
                dir.display(),
                if *read_only { ":ro" } else { "" }
            ));
        }
    }
    if let Some(t) = &termination {
        let file = root.join(t.trim_start_matches('/'));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, b"")?;
        if podman {
            chown_tree(&file, spec_user(pod))?;
            volumes_args.push(format!("{}:{t}", file.display()));
        }
    }

    let env = resolve_env(container, &configs, &secrets, &rewrite).await?;
    let log = s.work_dir.join(format!("{name}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let mut args: Vec<String> = container.args.clone().unwrap_or_default();
    let (mut cmd, podman) = match &s.runtime {
        Runtime::Process { binary } => {
            let mut cmd = match &container.command {
                // The image's entrypoint is the bridge binary.
                None => Command::new(binary),
                Some(c) => {
                    let cmd = Command::new(c.first().context("empty command")?);
                    args = c[1..].iter().cloned().chain(args).collect();
                    cmd
                }
            };
            cmd.args(&args).env_clear().envs(env.iter().cloned());
            // The kubelet's working directory is the container root.
            cmd.current_dir(&root);
            (cmd, None)
        }
        Runtime::Podman(pm) => {
            let cname = format!("{name}-{}", restarts);
            let mut cmd = pm.command();
            cmd.args(["run", "--rm", "--name", &cname, "--network", "host"]);
            let (uid, gid) = spec_user(pod);
            cmd.args(["--user", &format!("{uid}:{gid}")]);
            if let Some(sc) = &container.security_context {
                if sc.read_only_root_filesystem == Some(true) {
                    cmd.arg("--read-only");
                }
                if sc.allow_privilege_escalation == Some(false) {
                    cmd.args(["--security-opt", "no-new-privileges"]);
                }
                if let Some(caps) = sc.capabilities.as_ref().and_then(|c| c.drop.as_ref()) {
                    for c in caps {
                        cmd.args(["--cap-drop", c]);
                    }
                }
            }
            for v in &volumes_args {
                cmd.args(["--volume", v]);
            }
            for (k, v) in &env {
                cmd.args(["--env", &format!("{k}={v}")]);
            }
            if let Some(c) = &container.command {
                cmd.args(["--entrypoint", &serde_json::to_string(c)?]);
            }
            cmd.arg(
                container
                    .image
                    .as_deref()
                    .context("container without image")?,
            );
            cmd.args(&args);
            (cmd, Some((pm.clone(), cname)))
        }
    };
    {
        use std::os::unix::process::CommandExt;
        // If the kubelet's thread dies (a failed test), so does the container.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("start {}", crate::describe(&cmd)))?;
    Ok(Proc {
        child,
        podman,
        pod_uid: uid,
        info: Running {
            pod: name,
            slot,
            http,
            config_hash: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("mqttkafka.io/config-hash").cloned()),
            log,
            ready: None,
            probe: String::new(),
            restarts,
            stopping: false,
            reported: None,
        },
        probe_path: probe,
        started: Instant::now(),
        reported: None,
        stopping: None,
        root,
        termination_path: termination,
    })
}

/// The pod's run-as user and group (the image's 65532 by default).
fn spec_user(pod: &Pod) -> (i64, i64) {
    let sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    (
        sc.and_then(|s| s.run_as_user).unwrap_or(65532),
        sc.and_then(|s| s.run_as_group).unwrap_or(65532),
    )
}

fn chown_tree(path: &Path, (uid, gid): (i64, i64)) -> Result<()> {
    let (uid, gid) = (uid as u32, gid as u32);
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), (uid as i64, gid as i64))?;
        }
    }
    Ok(())
}

async fn resolve_env(
    c: &Container,
    configs: &Api<ConfigMap>,
    secrets: &Api<Secret>,
    rewrite: &Rewrite,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            v.clone()
        } else if let Some(from) = &e.value_from {
            if let Some(r) = &from.secret_key_ref {
                let s = secrets.get(&r.name).await?;
                let bytes = s
                    .data
                    .unwrap_or_default()
                    .remove(&r.key)
                    .with_context(|| format!("Secret {} has no key {}", r.name, r.key))?;
                String::from_utf8(bytes.0).context("secret value is not UTF-8")?
            } else if let Some(r) = &from.config_map_key_ref {
                let m = configs.get(&r.name).await?;
                m.data
                    .unwrap_or_default()
                    .remove(&r.key)
                    .with_context(|| format!("ConfigMap {} has no key {}", r.name, r.key))?
            } else {
                bail!(
                    "env {}: only value, secretKeyRef and configMapKeyRef are supported",
                    e.name
                );
            }
        } else {
            String::new()
        };
        out.push((e.name.clone(), rewrite.path(&value)));
    }
    Ok(out)
}

/// The two rewrites of the module docs.
struct Rewrite {
    root: PathBuf,
    /// Mount paths (and the termination file) to prefix with `root`.
    prefixes: Vec<String>,
    /// (container port, local port).
    port: Option<(i32, u16)>,
}

impl Rewrite {
    fn path(&self, s: &str) -> String {
        let hit = self
            .prefixes
            .iter()
            .filter(|p| s == p.as_str() || s.starts_with(&format!("{}/", p.trim_end_matches('/'))))
            .max_by_key(|p| p.len());
        match hit {
            Some(_) => self
                .root
                .join(s.trim_start_matches('/'))
                .display()
                .to_string(),
            None => s.to_owned(),
        }
    }

    fn listen(&self, s: &str) -> String {
        if let Some((container, local)) = self.port
            && let Some(host) = s.strip_suffix(&format!(":{container}"))
            && matches!(host, "0.0.0.0" | "[::]" | "::")
        {
            return format!("127.0.0.1:{local}");
        }
        s.to_owned()
    }

    /// Applies both to every string of a YAML document (other text unchanged).
    fn apply(&self, text: &str) -> Result<String> {
        let Ok(mut v) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
            return Ok(text.to_owned());
        };
        if !v.is_mapping() {
            return Ok(text.to_owned());
        }
        self.walk(&mut v);
        Ok(serde_yaml::to_string(&v)?)
    }

    fn walk(&self, v: &mut serde_yaml::Value) {
        match v {
            serde_yaml::Value::String(s) => *s = self.listen(&self.path(s)),
            serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(|i| self.walk(i)),
            serde_yaml::Value::Mapping(m) => m.iter_mut().for_each(|(_, i)| self.walk(i)),
            serde_yaml::Value::Tagged(t) => self.walk(&mut t.value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_mount_roots_and_the_listen_port() {
        let r = Rewrite {
            root: "/tmp/pod".into(),
            prefixes: vec![
                "/etc/bridge/secrets/k".into(),
                "/dev/termination-log".into(),
            ],
            port: Some((8080, 41000)),
        };
        let yaml = "a: /etc/bridge/secrets/k/password\nb: /etc/bridge/secrets/kx\nhttp:\n  address: 0.0.0.0:8080\nt: /dev/termination-log\nn: 3\n";
        let out: serde_yaml::Value = serde_yaml::from_str(&r.apply(yaml).unwrap()).unwrap();
        assert_eq!(out["a"], "/tmp/pod/etc/bridge/secrets/k/password");
        assert_eq!(out["b"], "/etc/bridge/secrets/kx");
        assert_eq!(out["http"]["address"], "127.0.0.1:41000");
        assert_eq!(out["t"], "/tmp/pod/dev/termination-log");
        assert_eq!(out["n"], 3);
    }
}
