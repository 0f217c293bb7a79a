//! The test environment's real node (`cargo xtask testenv`: containerd and a
//! kubelet named `127.0.0.1` beside the kwok node): what a bridge needs to
//! run there, and what the tests read back from it.
//!
//! Pods land on it only when they ask: a nodeSelector on its hostname and a
//! toleration of its taint. The node has no pod network (loopback-only CNI),
//! so bridge pods use the host network, each slot on its own port
//! (`spec.http.port + slot`, see the bridge's `template.pod.hostNetwork`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;

use crate::{env, run};

/// The real node as the test environment describes it.
#[derive(Clone, Debug)]
pub struct RealNode {
    /// Node name (and address): `127.0.0.1`.
    pub name: String,
    /// Key of its NoSchedule taint.
    pub taint: String,
    /// `ctr` and containerd's socket.
    pub ctr: PathBuf,
    pub containerd: PathBuf,
    /// The kubelet's root directory (pod volumes).
    pub kubelet_root: PathBuf,
}

impl RealNode {
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            name: env("REAL_NODE")?,
            taint: env("REAL_NODE_TAINT")?,
            ctr: env("CTR")?.into(),
            containerd: env("CONTAINERD_ADDRESS")?.into(),
            kubelet_root: env("KUBELET_ROOT_DIR")?.into(),
        })
    }

    /// `spec.template.pod` of a bridge that runs on this node.
    pub fn bridge_pod_template(&self) -> serde_json::Value {
        serde_json::json!({
            "hostNetwork": true,
            "nodeSelector": {"kubernetes.io/hostname": self.name},
            "tolerations": [{"key": self.taint, "operator": "Exists", "effect": "NoSchedule"}],
        })
    }

    /// The process id of a running container (`containerd://<id>` as in a
    /// pod's container status).
    pub fn container_pid(&self, container_id: &str) -> Result<u32> {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let out = run(
            Command::new(&self.ctr)
                .arg("--address")
                .arg(&self.containerd)
                .args(["--namespace", "k8s.io", "tasks", "ls"]),
            None,
        )?;
        // TASK  PID  STATUS
        out.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?, f.next()?))
            })
            .find(|(task, _)| *task == id)
            .and_then(|(_, pid)| pid.parse().ok())
            .with_context(|| format!("no running task {id} in containerd"))
    }

    /// A file of a pod's Secret volume as the kubelet projected it.
    pub fn secret_volume_file(&self, pod_uid: &str, volume: &str, key: &str) -> PathBuf {
        self.kubelet_root
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~secret")
            .join(volume)
            .join(key)
    }
}

/// A user id and whether `/` is mounted read-only, for a process on this host.
pub fn process_identity(pid: u32) -> Result<(u32, bool)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no effective Uid in /proc/<pid>/status")?;
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .with_context(|| format!("read /proc/{pid}/mountinfo"))?;
    // Field 5 is the mount point, field 6 its options.
    let root_options = mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[4] == "/")
        .map(|f| f[5].to_owned())
        .next_back()
        .context("no / in the process's mountinfo")?;
    Ok((uid, root_options.split(',').any(|o| o == "ro")))
}

/// Builds the bridge (and operator) images from the binaries in `bin_dir`
/// with `cargo xtask images` in a private store under `storage`, which also
/// imports them into the real node's containerd.
pub fn build_images(tag: &str, bin_dir: &Path, storage: &Path) -> Result<()> {
    run(
        Command::new(env("TESTENV_CTL")?)
            .args(["images", "--tag", tag, "--bin-dir"])
            .arg(bin_dir)
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("runroot")),
        None,
    )?;
    Ok(())
}

/// Base port for a bridge's HTTP endpoints on the host network: `slots`
/// consecutive ports free now.
pub fn free_port_range(slots: u16) -> Result<u16> {
    for _ in 0..50 {
        let base = crate::free_port()?;
        if base.checked_add(slots).is_none() {
            continue;
        }
        let free = (0..slots).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return Ok(base);
        }
    }
    bail!("no {slots} consecutive free ports on 127.0.0.1")
}

/// The bridge container's status in a pod: (ready, restarts, last
/// termination message, container id).
pub fn bridge_container(pod: &Pod) -> Option<(bool, i32, Option<String>, Option<String>)> {
    let c = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == "bridge")?;
    let message = c
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| c.state.as_ref().and_then(|s| s.terminated.as_ref()))
        .and_then(|t| t.message.clone());
    Some((c.ready, c.restart_count, message, c.container_id.clone()))
}
