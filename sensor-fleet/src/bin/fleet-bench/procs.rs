//! The processes a benchmark runs and measures: the bridge, the operator and
//! (for the peak scenario) a Mosquitto with pure default settings.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// A free loopback port (bound and released; good enough on a test machine).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET `path` on `addr`; status and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A child process we started, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Self {
            child,
            name: name.into(),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited with {status}:\n{}", self.name, self.tail(30));
        }
        Ok(())
    }

    /// Polls `probe` until it is true, the process dies, or `timeout`.
    pub fn wait_until(&mut self, timeout: Duration, mut probe: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.check_alive()?;
            if probe() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} not ready within {timeout:?}:\n{}",
            self.name,
            self.tail(30)
        )
    }

    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// CPU time (user + system) and memory of a process, from /proc.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub cpu_s: f64,
    pub at: Instant,
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn cpu_sample(pid: u32) -> Result<CpuSample> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("read /proc/<pid>/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(CpuSample {
        cpu_s: ticks / clock_ticks(),
        at: Instant::now(),
    })
}

/// Average cores used between two samples.
pub fn cores(a: CpuSample, b: CpuSample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall > 0.0 {
        (b.cpu_s - a.cpu_s) / wall
    } else {
        0.0
    }
}

/// Peak resident set (VmHWM) and current (VmRSS), MiB.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Memory {
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
}

pub fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Memory {
        peak_rss_mib: kib("VmHWM:") / 1024.0,
        rss_mib: kib("VmRSS:") / 1024.0,
    }
}

/// Starts bridge-runtime with `config` (YAML without the `http` section)
/// and waits until it is ready.
pub fn start_bridge(bin: &Path, dir: &Path, config: &str) -> Result<(Proc, String)> {
    let (mut p, http) = spawn_bridge_at(bin, dir, config)?;
    p.wait_until(Duration::from_secs(60), || {
        matches!(http_get(&http, "/readyz"), Some((200, _)))
    })?;
    Ok((p, http))
}

/// Starts bridge-runtime with `config` without waiting for it.
pub fn spawn_bridge(bin: &Path, dir: &Path, config: &str) -> Result<Proc> {
    Ok(spawn_bridge_at(bin, dir, config)?.0)
}

fn spawn_bridge_at(bin: &Path, dir: &Path, config: &str) -> Result<(Proc, String)> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let http = format!("127.0.0.1:{port}");
    let path = dir.join("bridge.yaml");
    std::fs::write(
        &path,
        format!("{config}http:\n  address: {http}\nshutdownGracePeriodSeconds: 5\n"),
    )?;
    let p = Proc::spawn(
        "bridge-runtime",
        Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn"),
        &dir.join("bridge.log"),
    )?;
    Ok((p, http))
}

/// A Mosquitto with nothing but a listener: every other setting at its
/// default (in-flight window 20, `max_queued_messages` 1000, no persistence).
pub fn start_default_mosquitto(dir: &Path) -> Result<(Proc, String)> {
    start_mosquitto(dir, "")
}

/// A Mosquitto with a listener and the `extra` lines of configuration.
pub fn start_mosquitto(dir: &Path, extra: &str) -> Result<(Proc, String)> {
    std::fs::create_dir_all(dir)?;
    let bin = [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or("mosquitto");
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n{extra}"),
    )?;
    let mut p = Proc::spawn(
        "mosquitto (defaults)",
        Command::new(bin).arg("-c").arg(&conf),
        &dir.join("mosquitto.log"),
    )?;
    let addr = format!("127.0.0.1:{port}");
    p.wait_until(Duration::from_secs(10), || {
        TcpStream::connect(&addr).is_ok()
    })?;
    Ok((p, format!("mqtt://{addr}")))
}
