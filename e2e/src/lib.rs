//! End to end, from `kubectl apply` of a bridge to sensor data in Kafka and
//! back, shared by the end-to-end test (`tests/e2e.rs`) and the quickstart
//! (`mkb-demo`, run by `cargo xtask demo`).
//!
//! - [`install`]: the operator installed with the Helm chart (RBAC,
//!   ServiceAccount), its pod on the real node; the Secrets; the sample
//!   bridge pointed at the test servers.
//! - [`node`]: the test environment's real node (kubelet + containerd), where
//!   the operator and bridge pods run from their images (the bridge's through
//!   its pod template); what the tests read back from it.
//! - [`records`]: reads a Kafka topic back with keys and partitions.

pub mod install;
pub mod node;
pub mod records;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root (for the chart and the examples).
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// A required environment variable (the test environment's, see README).
pub fn env(name: &str) -> Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => bail!(
            "{name} is not set: run through `cargo xtask test` / `cargo xtask demo`, or \
             `eval \"$(cargo xtask testenv env)\"` first"
        ),
    }
}

/// How to reach the test servers, read from the environment.
#[derive(Clone, Debug)]
pub struct Servers {
    pub kubectl: String,
    pub helm: String,
    pub kubeconfig: String,
    /// PLAINTEXT listener (topic creation and checks).
    pub kafka_bootstrap: String,
    /// SASL listener the bridge uses (SCRAM).
    pub kafka_sasl_bootstrap: String,
    pub kafka_scram_user: String,
    pub kafka_scram_password: String,
    /// Anonymous listener (simulator and checks).
    pub mqtt_url: String,
    /// Password listener the bridge uses.
    pub mqtt_auth_url: String,
    pub mqtt_user: String,
    pub mqtt_password: String,
}

impl Servers {
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            kubectl: env("KUBECTL")?,
            helm: env("HELM")?,
            kubeconfig: env("KUBECONFIG")?,
            kafka_bootstrap: env("KAFKA_BOOTSTRAP")?,
            kafka_sasl_bootstrap: env("KAFKA_SASL_BOOTSTRAP")?,
            kafka_scram_user: env("KAFKA_SCRAM_USER")?,
            kafka_scram_password: env("KAFKA_SCRAM_PASSWORD")?,
            mqtt_url: env("MQTT_URL")?,
            mqtt_auth_url: env("MQTT_AUTH_URL")?,
            mqtt_user: env("MQTT_USER")?,
            mqtt_password: env("MQTT_PASSWORD")?,
        })
    }

    /// `kubectl` as admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// `helm` as admin, with its caches under `home` (away from $HOME and other runs).
    pub fn helm(&self, home: &Path) -> Command {
        let mut cmd = Command::new(&self.helm);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        cmd
    }

    pub fn kafka(&self) -> sensor_fleet::KafkaEndpoint {
        sensor_fleet::KafkaEndpoint::plain(&self.kafka_bootstrap)
    }

    pub fn mqtt(&self) -> sensor_fleet::MqttEndpoint {
        sensor_fleet::MqttEndpoint::plain(&self.mqtt_url)
    }

    /// An admin client of the test control plane.
    pub async fn kube_client(&self) -> Result<kube::Client> {
        sensor_fleet::install_crypto_provider();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("read {}", self.kubeconfig))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .context("load KUBECONFIG")?;
        kube::Client::try_from(config).context("build Kubernetes client")
    }
}

/// Runs `cmd` with `stdin` (if any); returns stdout, or fails with its stderr.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    let out = output(cmd, stdin)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` and returns its output whatever the exit status.
pub fn output(cmd: &mut Command, stdin: Option<&str>) -> Result<std::process::Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", describe(cmd)))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let input = input.to_owned();
        // A thread, so a large input cannot deadlock against a full stdout pipe.
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    child.wait_with_output().context("wait for command")
}

/// The program and its arguments, for messages (no environment: it may hold secrets).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a test's
/// listeners, which report a clash at bind time).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr().context("local address")?.port())
}

/// Sends SIGTERM to `pid` (graceful stop, as the kubelet does first).
pub fn terminate(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) with a pid this process started; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}
