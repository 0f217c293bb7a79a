//! The real node: containerd and a kubelet named `127.0.0.1`, beside the kwok
//! node. Pods that select it (`kubernetes.io/hostname: 127.0.0.1`) and
//! tolerate its taint run as real containers of locally imported images,
//! with real probes, volumes, restarts and termination messages; every
//! other pod still goes to kwok.
//!
//! Settings and pitfalls are those of the shared guide on the real kubelet:
//! loopback only (node address 127.0.0.1, pods on the host network, a
//! loopback-only CNI configuration of our own), `restrict_oom_score_adj`
//! (root here may not lower an oom_score_adj), image GC that never collects
//! (imported images have no registry to come back from), a 10 s sync so
//! Secret and ConfigMap volumes follow changes within seconds.
//!
//! The kubelet changes the host beyond its own directories (sysctls,
//! `/var/log/containers`, the `kubepods` cgroups); [`record_host`] notes what
//! was there before it first starts and [`undo_host_changes`] restores it on
//! `down`, after [`remove_pods`] has stopped every container. Only one
//! kubelet can run on a host (the cgroup tree and `/var/log/containers` are
//! fixed paths): [`claim_host`] refuses a second test environment's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::process::{Ready, Server};
use crate::toolchain::{PAUSE_IMAGE, Toolchain};

/// Name (and address) of the real node.
pub const NODE_NAME: &str = "127.0.0.1";
/// Taint (NoSchedule) and label of the real node: only pods that ask land on it.
pub const TAINT_KEY: &str = "testenv/real-kubelet";
/// Host-wide directory of the one real node: containerd's socket (short, so
/// it fits a socket path wherever the checkout is) and who owns the node.
const HOST_DIR: &str = "/run/mqtt-kafka-bridge-node";
/// containerd namespace the kubelet's containers and images live in.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The sysctls the kubelet sets at start (`setupKernelTunables`).
const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// Fixed path the kubelet creates for log symlinks.
const CONTAINER_LOGS: &str = "/var/log/containers";
/// containerd 1.6 puts shim sockets here whatever its state directory.
const CONTAINERD_RUN: &str = "/run/containerd";

pub struct Ports {
    pub kubelet: u16,
    pub kubelet_healthz: u16,
}

/// containerd's socket.
pub fn containerd_socket() -> PathBuf {
    Path::new(HOST_DIR).join("containerd.sock")
}

/// Writes containerd's and the kubelet's configuration under `dir` and
/// returns their server definitions (containerd first).
pub fn configure(
    dir: &Path,
    tools: &Toolchain,
    kubeconfig: &Path,
    ports: &Ports,
    vars: &mut BTreeMap<String, String>,
) -> Result<Vec<Server>> {
    let s = |p: &Path| p.display().to_string();
    let containerd_dir = dir.join("containerd");
    let cni_dir = dir.join("cni");
    let kubelet_dir = dir.join("kubelet");
    for d in [&containerd_dir, &cni_dir, &kubelet_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let socket = containerd_socket();
    // The loopback plugin only: pods use the host network (podman's bridge
    // configuration in /etc/cni/net.d must not be picked up). Without any
    // configuration the node stays NotReady ("cni plugin not initialized").
    std::fs::write(
        cni_dir.join("10-loopback.conflist"),
        r#"{"cniVersion":"1.0.0","name":"loopback-only","plugins":[{"type":"loopback"}]}"#,
    )?;
    let config = containerd_dir.join("config.toml");
    std::fs::write(
        &config,
        containerd_config(&containerd_dir, &cni_dir, &socket),
    )?;
    let containerd = Server {
        name: "containerd".into(),
        program: tools.containerd.clone(),
        args: vec!["--config".into(), s(&config)],
        env: vec![],
        ready: Ready::Socket(socket.clone()),
        stop_timeout_secs: 15,
        pid: None,
    };

    let kubelet_config = kubelet_dir.join("config.yaml");
    std::fs::write(
        &kubelet_config,
        kubelet_config_yaml(&kubelet_dir, &socket, ports),
    )?;
    let kubelet = Server {
        name: "kubelet".into(),
        program: tools.kubelet.clone(),
        args: vec![
            format!("--config={}", s(&kubelet_config)),
            format!("--kubeconfig={}", s(kubeconfig)),
            // The node's name and InternalIP: hostNetwork pod IPs, probes and
            // the apiserver's calls (logs, exec) stay on loopback.
            format!("--hostname-override={NODE_NAME}"),
            format!("--root-dir={}", s(&kubelet_dir.join("root"))),
            format!("--cert-dir={}", s(&kubelet_dir.join("certs"))),
            format!("--node-labels={TAINT_KEY}=true"),
            "--v=1".into(),
        ],
        env: vec![],
        ready: Ready::Node {
            kubectl: tools.kubectl.clone(),
            kubeconfig: kubeconfig.to_path_buf(),
            node: NODE_NAME.into(),
            healthz_port: ports.kubelet_healthz,
        },
        stop_timeout_secs: 15,
        pid: None,
    };
    vars.insert("REAL_NODE".into(), NODE_NAME.into());
    vars.insert("REAL_NODE_TAINT".into(), TAINT_KEY.into());
    vars.insert("CONTAINERD_ADDRESS".into(), s(&socket));
    vars.insert("CTR".into(), s(&tools.ctr));
    vars.insert("KUBELET_ROOT_DIR".into(), s(&kubelet_dir.join("root")));
    Ok(vec![containerd, kubelet])
}

fn containerd_config(dir: &Path, cni_dir: &Path, socket: &Path) -> String {
    let d = |p: &str| dir.join(p).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: nothing may lower an oom_score_adj.
  restrict_oom_score_adj = true
  # exec, logs and port-forward stay on loopback.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = d("root"),
        state = d("state"),
        opt = d("opt"),
        socket = socket.display(),
        cni = cni_dir.display(),
    )
}

fn kubelet_config_yaml(dir: &Path, socket: &Path, ports: &Ports) -> String {
    let d = |p: &str| dir.join(p).display().to_string();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Loopback only.
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
# A test node: the apiserver's calls (logs, exec) need no credentials.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
# 1.35 refuses cgroup v1 otherwise; these machines have it.
failCgroupV1: false
failSwapOn: false
# Secret and ConfigMap volumes follow changes within about 10 s (default 1 min).
syncFrequency: 10s
# Imported images have no registry to come back from: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# A shared test disk: only evict when it is really full.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
podLogsDir: {logs}
volumePluginDir: {plugins}
registerWithTaints:
  - key: {TAINT_KEY}
    value: "true"
    effect: NoSchedule
"#,
        port = ports.kubelet,
        healthz = ports.kubelet_healthz,
        socket = socket.display(),
        logs = d("pod-logs"),
        plugins = d("volume-plugins"),
    )
}

/// Imports an image archive (docker-archive or OCI) into containerd's
/// `k8s.io` namespace, where the kubelet finds it.
pub fn import_image(ctr: &Path, socket: &Path, archive: &Path) -> Result<()> {
    let out = Command::new(ctr)
        .arg("--address")
        .arg(socket)
        .args(["--namespace", K8S_NAMESPACE, "images", "import"])
        .arg(archive)
        .output()
        .context("run ctr images import")?;
    if !out.status.success() {
        bail!(
            "ctr images import {} failed: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What the host looked like before the kubelet first started here.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HostBefore {
    sysctls: BTreeMap<String, String>,
    container_logs_existed: bool,
    containerd_run_existed: bool,
    kubepods_existed: Vec<PathBuf>,
}

fn host_file(dir: &Path) -> PathBuf {
    dir.join("host-before.json")
}

/// Servers of the real node.
pub fn is_node_server(name: &str) -> bool {
    name == "containerd" || name == "kubelet"
}

/// The state directory of another test environment whose real node runs on
/// this host, if any (one fits on a host).
pub fn other_owner(state_dir: &Path) -> Option<String> {
    let owner = std::fs::read_to_string(Path::new(HOST_DIR).join("owner")).ok()?;
    let owner = owner.trim();
    (owner != state_dir.display().to_string() && other_node_runs(Path::new(owner)))
        .then(|| owner.to_owned())
}

/// Makes this test environment the owner of the host's one real node, or
/// fails naming the other one.
pub fn claim_host(state_dir: &Path) -> Result<()> {
    if let Some(owner) = other_owner(state_dir) {
        bail!(
            "the test environment in {owner} runs this host's real node (kubelet and \
             containerd; only one fits on a host): `cargo xtask testenv down` there first"
        );
    }
    std::fs::create_dir_all(HOST_DIR).with_context(|| format!("create {HOST_DIR}"))?;
    let owner_file = Path::new(HOST_DIR).join("owner");
    std::fs::write(&owner_file, state_dir.display().to_string())
        .with_context(|| format!("write {}", owner_file.display()))
}

fn other_node_runs(state_dir: &Path) -> bool {
    let Ok(Some(state)) = super::load(state_dir) else {
        return false;
    };
    state
        .servers
        .iter()
        .any(|s| (s.name == "kubelet" || s.name == "containerd") && s.is_running())
}

/// Notes the host's state before the kubelet first starts (kept across
/// kubelet restarts, so what is restored is what was there before).
pub fn record_host(dir: &Path) -> Result<()> {
    let path = host_file(dir);
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let before = HostBefore {
        sysctls: SYSCTLS
            .iter()
            .filter_map(|k| {
                let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).ok()?;
                Some((k.to_string(), v.trim().to_owned()))
            })
            .collect(),
        container_logs_existed: Path::new(CONTAINER_LOGS).exists(),
        containerd_run_existed: Path::new(CONTAINERD_RUN).exists(),
        kubepods_existed: kubepods_dirs(),
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&before)?)
        .with_context(|| format!("write {}", path.display()))
}

/// `kubepods` cgroup directories (one per v1 controller, or the v2 one).
fn kubepods_dirs() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("kubepods")];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join("kubepods")));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Stops and deletes every container of the node (sandboxes included)
/// through containerd, so no shim or container outlives `down`. The kubelet
/// must be stopped first, or it would start them again.
pub fn remove_pods(ctr: &Path, socket: &Path) -> Result<()> {
    if !socket.exists() {
        return Ok(());
    }
    let ctr_cmd = |args: &[&str]| {
        let mut cmd = Command::new(ctr);
        cmd.arg("--address")
            .arg(socket)
            .args(["--namespace", K8S_NAMESPACE])
            .args(args);
        cmd
    };
    let list = |what: &str| -> Vec<String> {
        ctr_cmd(&[what, "ls", "-q"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let tasks = list("tasks");
    for id in &tasks {
        let _ = ctr_cmd(&["tasks", "kill", "--signal", "SIGKILL", id]).output();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &tasks {
        while ctr_cmd(&["tasks", "delete", id])
            .output()
            .is_ok_and(|o| !o.status.success())
            && list("tasks").contains(id)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let containers = list("containers");
    if !containers.is_empty() {
        let mut cmd = ctr_cmd(&["containers", "rm"]);
        cmd.args(&containers);
        let _ = cmd.output();
    }
    Ok(())
}

/// After kubelet and containerd stopped: unmounts what is left under `dir`
/// (volumes, sandbox shm, container root file systems), removes the
/// `kubepods` cgroups, restores the sysctls and removes the directories the
/// kubelet and containerd created outside `dir`.
pub fn undo_host_changes(dir: &Path) -> Result<()> {
    let mut problems = Vec::new();
    unmount_under(dir, &mut problems);
    let before: HostBefore = match std::fs::read(host_file(dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        // The kubelet never started: nothing outside `dir` changed.
        Err(_) => return finish(problems),
    };
    for cgroup in kubepods_dirs() {
        if !before.kubepods_existed.contains(&cgroup)
            && let Err(e) = remove_cgroup_tree(&cgroup)
        {
            problems.push(format!("remove cgroup {}: {e}", cgroup.display()));
        }
    }
    for (key, value) in &before.sysctls {
        let path = Path::new("/proc/sys").join(key);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.trim() != value
            && let Err(e) = std::fs::write(&path, value)
        {
            problems.push(format!("restore {} = {value}: {e}", path.display()));
        }
    }
    if !before.container_logs_existed {
        let _ = std::fs::remove_dir_all(CONTAINER_LOGS);
    }
    if !before.containerd_run_existed {
        // Shim sockets and runc's state: empty directories once every
        // container is gone (anything left in them stays, and is reported).
        if remove_empty_dirs(Path::new(CONTAINERD_RUN)).is_err() {
            problems.push(format!("{CONTAINERD_RUN} is not empty"));
        }
    }
    let _ = std::fs::remove_dir_all(HOST_DIR);
    finish(problems)
}

fn finish(problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "the real node left changes on the host: {}",
            problems.join("; ")
        )
    }
}

/// Unmounts every mount point below `dir`, deepest (latest) first.
fn unmount_under(dir: &Path, problems: &mut Vec<String>) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.reverse();
    for point in points {
        let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2 with a NUL-terminated path; no memory is shared.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
                problems.push(format!("unmount {}: {e}", point.display()));
            }
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(p: &str) -> String {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&p[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes `dir` and the directories below it if they hold no files.
fn remove_empty_dirs(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

/// cgroup directories go with rmdir, children first (their files are not
/// real files and need no removing).
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\134"), r"/end\");
    }
}
