//! Starting and stopping one server process, detached from xtask so it keeps
//! running after the command returns, and stopped later by its process id.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// One server: how to start it, how to tell it is ready, and its pid once started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Server {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub ready: Ready,
    /// How long a clean shutdown may take before SIGKILL.
    pub stop_timeout_secs: u64,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// When a started server counts as ready.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Ready {
    /// Every port accepts TCP connections on 127.0.0.1.
    Ports(Vec<u16>),
    /// Every port accepts connections and the log contains this text
    /// (after the position the log had when the server was started).
    PortsAndLog(Vec<u16>, String),
    /// `kubectl get --raw /readyz` answers `ok`.
    ApiServer {
        kubectl: PathBuf,
        kubeconfig: PathBuf,
    },
    /// A unix socket accepts connections (containerd).
    Socket(PathBuf),
    /// The kubelet's healthz port accepts connections and its node reports
    /// `Ready=True` (after a restart the node may still say True from
    /// before, hence the port too).
    Node {
        kubectl: PathBuf,
        kubeconfig: PathBuf,
        node: String,
        healthz_port: u16,
    },
    /// Nothing to wait for (the server has no endpoint of its own).
    Started,
}

impl Server {
    pub fn log_path(&self, log_dir: &Path) -> PathBuf {
        log_dir.join(format!("{}.log", self.name))
    }

    /// Whether the recorded process is still this server (not a reused pid).
    pub fn is_running(&self) -> bool {
        let Some(pid) = self.pid else { return false };
        match exit_status_of_own_child(pid) {
            Some(status) => status.is_none(),
            None => pid_is_program(pid, &self.program),
        }
    }

    /// Starts the server in its own process group with output appended to its log.
    pub fn start(&mut self, log_dir: &Path) -> Result<()> {
        let log_path = self.log_path(log_dir);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: Ctrl-C in the terminal that ran xtask does not
            // reach the servers, and `stop` can signal the whole group.
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {} ({})", self.name, self.program.display()))?;
        self.pid = Some(child.id());
        // Kept so this process can reap it and report how it ended; once xtask
        // exits the server is reparented and found again by its pid.
        if let Ok(mut children) = SPAWNED.lock() {
            children
                .get_or_insert_with(HashMap::new)
                .insert(child.id(), child);
        }
        Ok(())
    }

    /// Waits until the server is ready, failing early if it exits.
    pub fn wait_ready(&self, log_dir: &Path, timeout: Duration, log_offset: u64) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                let how = self
                    .pid
                    .and_then(exit_status_of_own_child)
                    .flatten()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                bail!(
                    "{} exited during startup{how}; last lines of {}:\n{}",
                    self.name,
                    self.log_path(log_dir).display(),
                    tail(&self.log_path(log_dir), 15)
                );
            }
            if self.ready_now(log_dir, log_offset) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {}s; last lines of {}:\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.log_path(log_dir).display(),
                    tail(&self.log_path(log_dir), 15)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn ready_now(&self, log_dir: &Path, log_offset: u64) -> bool {
        match &self.ready {
            Ready::Ports(ports) => ports.iter().all(|p| port_open(*p)),
            Ready::PortsAndLog(ports, text) => {
                ports.iter().all(|p| port_open(*p))
                    && log_contains(&self.log_path(log_dir), log_offset, text)
            }
            Ready::ApiServer {
                kubectl,
                kubeconfig,
            } => Command::new(kubectl)
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["get", "--raw", "/readyz", "--request-timeout=2s"])
                .stderr(Stdio::null())
                .output()
                .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok")
                .unwrap_or(false),
            Ready::Socket(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            Ready::Node {
                kubectl,
                kubeconfig,
                node,
                healthz_port,
            } => {
                port_open(*healthz_port)
                    && Command::new(kubectl)
                        .arg("--kubeconfig")
                        .arg(kubeconfig)
                        .args(["get", "node", node, "--request-timeout=2s", "-o"])
                        .arg("jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")
                        .stderr(Stdio::null())
                        .output()
                        .map(|o| {
                            o.status.success()
                                && String::from_utf8_lossy(&o.stdout).trim() == "True"
                        })
                        .unwrap_or(false)
            }
            Ready::Started => true,
        }
    }

    /// SIGTERM to the process group, then SIGKILL after the stop timeout.
    /// Returns once the process is gone.
    pub fn stop(&mut self) -> Result<()> {
        let Some(pid) = self.pid else { return Ok(()) };
        if !self.is_running() {
            self.pid = None;
            return Ok(());
        }
        signal_group(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(self.stop_timeout_secs);
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.is_running() {
            signal_group(pid, libc::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if self.is_running() {
                bail!("{} (pid {pid}) did not exit after SIGKILL", self.name);
            }
        }
        self.pid = None;
        Ok(())
    }
}

/// Servers this xtask process started, by pid.
static SPAWNED: Mutex<Option<HashMap<u32, Child>>> = Mutex::new(None);

/// For a server this process started: `Some(None)` while it runs,
/// `Some(Some(status))` once it exited. `None` for other processes.
fn exit_status_of_own_child(pid: u32) -> Option<Option<ExitStatus>> {
    let mut guard = SPAWNED.lock().ok()?;
    let child = guard.as_mut()?.get_mut(&pid)?;
    child.try_wait().ok()
}

fn signal_group(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
    unsafe {
        if libc::kill(-pid, signal) != 0 {
            libc::kill(pid, signal);
        }
    }
}

/// True when `pid` is alive (not a zombie) and runs `program`.
fn pid_is_program(pid: u32, program: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X")) {
        // Reap it if it happens to be our child.
        let mut status = 0;
        // SAFETY: waitpid with WNOHANG only inspects our own children.
        unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if cmdline.is_empty() {
        // Between fork and exec (or while exec replaces the image) the command
        // line reads empty: the process is alive and about to be `program`.
        return true;
    }
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let want = program.as_os_str().as_encoded_bytes();
    argv0 == want
        || Path::new(std::str::from_utf8(argv0).unwrap_or("")).file_name() == program.file_name()
}

pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Size of a log file now, so readiness only looks at what comes after.
pub fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn log_contains(path: &Path, offset: u64, text: &str) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).contains(text)
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Free TCP ports on 127.0.0.1, all distinct.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Hold every listener until all are chosen so the kernel cannot hand out one twice.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("find free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<std::io::Result<_>>()
        .context("read local port")
}
