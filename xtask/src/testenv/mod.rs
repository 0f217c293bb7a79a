//! The local test environment: real servers on 127.0.0.1 with free ports,
//! started from cached binaries, recorded in `<state dir>/state.json` so that
//! later commands (and tests) find them again. Besides the servers: a real
//! node (containerd and a kubelet, see [`node`]) next to the kwok node.

mod certs;
mod kafka;
mod kubernetes;
mod mosquitto;
pub mod node;
pub mod process;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use crate::paths;
use crate::toolchain::Toolchain;
use process::Server;

#[derive(Subcommand, Clone, Debug)]
pub enum Action {
    /// Start every server (a no-op for those already running).
    Up,
    /// Stop every server this environment started and delete its data.
    Down,
    /// Show each server, its pid and whether it runs.
    Status,
    /// Print `export NAME=value` lines for `eval "$(cargo xtask testenv env)"`.
    Env,
    /// Stop one server, keeping its data (for fault tests).
    Stop { server: String },
    /// Start one stopped server again with the same ports and data.
    Start { server: String },
    /// Stop, then start one server.
    Restart { server: String },
    /// Grant or revoke a Kafka principal's ALLOW ACLs; returns once the broker shows the change.
    KafkaAcl(kafka::AclArgs),
    /// Replace the ACL of the `MQTT_ACL_URL` listener with standard input and reload it.
    MqttAcl {
        /// Restore the default ACL instead (both users may do anything).
        #[arg(long)]
        reset: bool,
    },
}

/// What `up` recorded: the servers and the variables tests read.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub servers: Vec<Server>,
    pub vars: BTreeMap<String, String>,
}

/// Set (non-empty, not `0`) for `up`: start everything but the real node
/// (containerd and the kubelet), leaving it to another checkout.
pub const NO_REAL_NODE: &str = "TESTENV_NO_REAL_NODE";

fn no_real_node() -> bool {
    std::env::var_os(NO_REAL_NODE).is_some_and(|v| !v.is_empty() && v != "0")
}

/// How long each server may take to become ready.
fn ready_timeout(name: &str) -> Duration {
    match name {
        "kafka" => Duration::from_secs(120),
        "apiserver" | "kubelet" => Duration::from_secs(90),
        _ => Duration::from_secs(60),
    }
}

pub fn run(action: Action) -> Result<()> {
    let dir = paths::state_dir();
    match action {
        Action::Up => {
            up(&dir)?;
            eprintln!(
                "xtask: test environment up; logs in {}",
                dir.join("logs").display()
            );
            eprintln!("xtask: use it from a shell with: eval \"$(cargo xtask testenv env)\"");
            Ok(())
        }
        Action::Down => down(&dir),
        Action::Status => status(&dir),
        Action::Env => {
            let state = load(&dir)?
                .context("the test environment is not up: run `cargo xtask testenv up`")?;
            for (k, v) in env_vars(&dir, &state) {
                println!("export {k}={}", shell_quote(&v));
            }
            Ok(())
        }
        Action::Stop { server } => with_server(&dir, &server, |s, _| s.stop()),
        Action::Start { server } => with_server(&dir, &server, start_and_wait),
        Action::Restart { server } => with_server(&dir, &server, |s, logs| {
            s.stop()?;
            start_and_wait(s, logs)
        }),
        Action::KafkaAcl(args) => kafka::acl(&dir, &args),
        Action::MqttAcl { reset } => mosquitto::set_acl_command(&dir, reset),
    }
}

/// Brings every server up; returns whether anything had to be started.
pub fn up(dir: &Path) -> Result<bool> {
    let _lock = lock(dir)?;
    let tools = Toolchain::ensure()?;
    let logs = dir.join("logs");
    let mut state = match load(dir)? {
        Some(state) => state,
        None => configure(dir, &tools)?,
    };
    if !state.servers.iter().any(|s| s.name == "kubelet") {
        // A state directory from before the real node existed: add it.
        let servers = configure_node(dir, &tools, &mut state.vars)?;
        state.servers.extend(servers);
        save(dir, &state)?;
    }
    // Another checkout's environment runs the host's one real node: the rest
    // comes up, tests that need the node say so.
    let node_elsewhere = node::other_owner(dir);
    if let Some(owner) = &node_elsewhere {
        eprintln!(
            "xtask: WARNING: the test environment in {owner} runs this host's real node \
             (one fits on a host); this one starts without it (REAL_NODE unset): \
             `cargo xtask testenv down` there, then `up` here"
        );
    }
    // A second checkout that leaves the host's real node to another one,
    // even while that one is down.
    let no_node = no_real_node();
    if no_node {
        eprintln!("xtask: {NO_REAL_NODE} set: starting without the real node (REAL_NODE unset)");
    }
    let skip = |name: &str| (no_node || node_elsewhere.is_some()) && node::is_node_server(name);
    let mut started = false;
    let mut offsets = BTreeMap::new();
    let names: Vec<String> = state.servers.iter().map(|s| s.name.clone()).collect();
    // Start in order; etcd and the apiserver are waited for at once because what
    // follows depends on them, the rest (Kafka is slow to boot) at the end.
    for name in &names {
        let Some(server) = state.servers.iter_mut().find(|s| &s.name == name) else {
            continue;
        };
        if server.is_running() || skip(name) {
            continue;
        }
        eprintln!("xtask: starting {name}");
        before_start(dir, name)?;
        let offset = process::log_len(&server.log_path(&logs));
        offsets.insert(name.clone(), offset);
        server.start(&logs)?;
        started = true;
        save(dir, &state)?;
        if name == "etcd" || name == "apiserver" || name == "containerd" {
            let server = state
                .servers
                .iter()
                .find(|s| &s.name == name)
                .context("server vanished")?;
            server.wait_ready(&logs, ready_timeout(name), offset)?;
            after_ready(&tools, name)?;
        }
    }
    for server in state.servers.iter().filter(|s| !skip(&s.name)) {
        let offset = offsets.get(&server.name).copied().unwrap_or(0);
        server.wait_ready(&logs, ready_timeout(&server.name), offset)?;
    }
    if started {
        let kubeconfig = PathBuf::from(
            state
                .vars
                .get("KUBECONFIG")
                .context("KUBECONFIG missing from state")?,
        );
        kubernetes::prepare_cluster(&tools, &kubeconfig)?;
    }
    Ok(started)
}

/// First `up` of this state directory: ports, certificates, configuration files.
fn configure(dir: &Path, tools: &Toolchain) -> Result<State> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let ports = process::free_ports(14)?;
    let pki = certs::generate(&dir.join("pki"))?;
    let mut vars = BTreeMap::new();
    let kafka = kafka::configure(
        &dir.join("kafka"),
        tools,
        &pki,
        &kafka::Ports {
            plaintext: ports[0],
            sasl_plaintext: ports[1],
            sasl_ssl: ports[2],
            controller: ports[3],
        },
        &mut vars,
    )?;
    let mqtt = mosquitto::configure(
        &dir.join("mosquitto"),
        tools,
        &pki,
        &mosquitto::Ports {
            anonymous: ports[4],
            password: ports[5],
            tls: ports[6],
            acl: ports[13],
        },
        &mut vars,
    )?;
    let k8s = kubernetes::configure(
        &dir.join("kubernetes"),
        tools,
        &pki,
        &kubernetes::Ports {
            etcd_client: ports[7],
            etcd_peer: ports[8],
            apiserver: ports[9],
            controller_manager: ports[10],
            scheduler: ports[11],
            kwok: ports[12],
        },
        &mut vars,
    )?;
    let mut servers = vec![kafka, mqtt];
    servers.extend(k8s);
    servers.extend(configure_node(dir, tools, &mut vars)?);
    let state = State { servers, vars };
    save(dir, &state)?;
    Ok(state)
}

/// containerd and the kubelet (after the control plane, which the kubelet registers with).
fn configure_node(
    dir: &Path,
    tools: &Toolchain,
    vars: &mut BTreeMap<String, String>,
) -> Result<Vec<Server>> {
    let ports = process::free_ports(2)?;
    let kubeconfig = PathBuf::from(
        vars.get("KUBECONFIG")
            .context("KUBECONFIG missing from state")?,
    );
    node::configure(
        &dir.join("node"),
        tools,
        &kubeconfig,
        &node::Ports {
            kubelet: ports[0],
            kubelet_healthz: ports[1],
        },
        vars,
    )
}

/// What has to happen before a server starts: the real node claims the host
/// (one per host) and notes what the kubelet will change on it.
fn before_start(dir: &Path, name: &str) -> Result<()> {
    if name == "containerd" || name == "kubelet" {
        node::claim_host(dir)?;
    }
    if name == "kubelet" {
        node::record_host(&dir.join("node"))?;
    }
    Ok(())
}

/// What has to happen once a server is ready: containerd gets the pause
/// image its pod sandboxes run (no registry to pull it from).
fn after_ready(tools: &Toolchain, name: &str) -> Result<()> {
    if name == "containerd" {
        node::import_image(&tools.ctr, &node::containerd_socket(), &tools.pause_archive)?;
    }
    Ok(())
}

pub fn down(dir: &Path) -> Result<()> {
    let _lock = lock(dir)?;
    let Some(mut state) = load(dir)? else {
        eprintln!("xtask: the test environment is not up");
        return Ok(());
    };
    // Reverse order: the kubelet, then containerd (once every container of
    // the node is gone), the fake node and controllers before the apiserver,
    // etcd last.
    let ctr = state.vars.get("CTR").map(PathBuf::from);
    for server in state.servers.iter_mut().rev() {
        if server.is_running() {
            eprintln!("xtask: stopping {}", server.name);
            if server.name == "containerd"
                && let Some(ctr) = &ctr
            {
                node::remove_pods(ctr, &node::containerd_socket())?;
            }
        }
        server.stop()?;
    }
    save(dir, &state)?;
    node::undo_host_changes(&dir.join("node"))?;
    // Everything it made lives in the state directory; the binary cache stays.
    std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    eprintln!("xtask: test environment down");
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let Some(state) = load(dir)? else {
        println!("not up (state directory {})", dir.display());
        return Ok(());
    };
    let mut all = true;
    let node_elsewhere = node::other_owner(dir);
    for s in &state.servers {
        let running = s.is_running();
        let pid = s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        match &node_elsewhere {
            Some(owner) if !running && node::is_node_server(&s.name) => {
                println!(
                    "{:<20} not here: the host's real node runs in {owner}",
                    s.name
                );
                continue;
            }
            None if !running && no_real_node() && node::is_node_server(&s.name) => {
                println!("{:<20} not here: {NO_REAL_NODE} is set", s.name);
                continue;
            }
            _ => all &= running,
        }
        println!(
            "{:<20} {:<8} pid {}",
            s.name,
            if running { "running" } else { "stopped" },
            pid
        );
    }
    println!("logs: {}", dir.join("logs").display());
    if !all {
        bail!("some servers are not running: `cargo xtask testenv up` starts them again");
    }
    Ok(())
}

fn start_and_wait(server: &mut Server, logs: &Path) -> Result<()> {
    if server.is_running() {
        return Ok(());
    }
    let dir = logs.parent().context("log directory has a parent")?;
    before_start(dir, &server.name)?;
    let offset = process::log_len(&server.log_path(logs));
    server.start(logs)?;
    server.wait_ready(logs, ready_timeout(&server.name), offset)?;
    if server.name == "containerd" {
        after_ready(&Toolchain::ensure()?, &server.name)?;
    }
    Ok(())
}

fn with_server(
    dir: &Path,
    name: &str,
    action: impl FnOnce(&mut Server, &Path) -> Result<()>,
) -> Result<()> {
    let _lock = lock(dir)?;
    let mut state =
        load(dir)?.context("the test environment is not up: run `cargo xtask testenv up`")?;
    let names: Vec<String> = state.servers.iter().map(|s| s.name.clone()).collect();
    let server = state
        .servers
        .iter_mut()
        .find(|s| s.name == name)
        .with_context(|| format!("no server named `{name}`; servers: {}", names.join(", ")))?;
    let result = action(server, &dir.join("logs"));
    save(dir, &state)?;
    result
}

/// The variables tests read, including where the logs are and how to control servers.
pub fn env_vars(dir: &Path, state: &State) -> BTreeMap<String, String> {
    let mut vars = state.vars.clone();
    if !state
        .servers
        .iter()
        .any(|s| s.name == "kubelet" && s.is_running())
    {
        // Tests that need the real node fail naming REAL_NODE.
        vars.remove("REAL_NODE");
    }
    vars.insert(
        "TESTENV_LOG_DIR".into(),
        dir.join("logs").display().to_string(),
    );
    vars.insert("TESTENV_DIR".into(), dir.display().to_string());
    if let Ok(exe) = std::env::current_exe() {
        vars.insert("TESTENV_CTL".into(), exe.display().to_string());
    }
    vars.insert(
        "KUBECTL".into(),
        crate::toolchain::kubernetes_bin_dir()
            .join("kubectl")
            .display()
            .to_string(),
    );
    vars.insert(
        "HELM".into(),
        crate::toolchain::helm_path().display().to_string(),
    );
    // Left out when missing: the tests that need them say which variable.
    if let Ok((prometheus, promtool)) = crate::toolchain::prometheus_programs() {
        vars.insert("PROMETHEUS".into(), prometheus.display().to_string());
        vars.insert("PROMTOOL".into(), promtool.display().to_string());
    }
    vars
}

pub fn load(dir: &Path) -> Result<Option<State>> {
    let path = dir.join("state.json");
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "read {}; `cargo xtask testenv down` resets it",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

fn save(dir: &Path, state: &State) -> Result<()> {
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, dir.join("state.json"))?;
    Ok(())
}

/// An exclusive lock on the state directory, so a test restarting Kafka and a
/// `testenv up` in another terminal do not interleave.
fn lock(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)?;
    let file = File::create(dir.join("state.lock"))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("lock {}", dir.join("state.lock").display());
    }
    Ok(file)
}

/// 16 random bytes.
pub fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes
}

/// A random hex string for passwords and tokens.
pub fn random_secret() -> String {
    random_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}
