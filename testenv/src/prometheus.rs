//! A real Prometheus (`$PROMETHEUS`, Debian's build) per test: its own
//! configuration, rules and data in a temporary directory, listening on a
//! free 127.0.0.1 port, stopped and removed when dropped. Never the
//! package's system service.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often a test Prometheus scrapes and evaluates its rules: short, so
/// that tests of alerts take seconds, not minutes.
pub const INTERVAL: &str = "1s";

/// How long Prometheus may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:<port>` of its HTTP API.
    pub address: String,
    dir: PathBuf,
}

/// One scrape job: its name, static targets (`host:port`) and the labels
/// the targets get, as a scrape configuration's relabeling would set them in
/// a cluster (`namespace`, `bridge`, `pod`, …).
pub struct ScrapeJob<'a> {
    pub name: &'a str,
    pub targets: Vec<String>,
    pub labels: Vec<(&'a str, String)>,
    /// Keep the target's own label values where they clash with the
    /// job's (`honor_labels`).
    pub honor_labels: bool,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every [`INTERVAL`] and evaluating the
    /// rule files `rules` (name, YAML text) as often; returns once it is ready.
    pub fn start(name: &str, jobs: &[ScrapeJob<'_>], rules: &[(&str, &str)]) -> Prometheus {
        let dir = std::env::temp_dir().join(crate::unique_name(&format!("prometheus-{name}")));
        std::fs::create_dir_all(dir.join("data")).expect("create the Prometheus directory");
        let mut config = format!(
            "global:\n  scrape_interval: {INTERVAL}\n  scrape_timeout: {INTERVAL}\n  evaluation_interval: {INTERVAL}\nrule_files:\n"
        );
        for (file, text) in rules {
            std::fs::write(dir.join(file), text).expect("write a rule file");
            config.push_str(&format!("  - {file}\n"));
        }
        config.push_str("scrape_configs:\n");
        for job in jobs {
            config.push_str(&format!(
                "  - job_name: {}\n    honor_labels: {}\n    static_configs:\n      - targets: [{}]\n        labels: {{{}}}\n",
                job.name,
                job.honor_labels,
                job.targets
                    .iter()
                    .map(|t| format!("'{t}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                job.labels
                    .iter()
                    .map(|(k, v)| format!("{k}: '{v}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, &config).expect("write prometheus.yml");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let address = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("Prometheus log");
        let child = Command::new(crate::var("PROMETHEUS"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .args(["--storage.tsdb.retention.time=1h", "--log.level=warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("Prometheus log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus {
            child,
            address,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!(
                    "prometheus exited with {status}:\n{}\nconfiguration:\n{config}",
                    prometheus.log()
                );
            }
            if http_get(&prometheus.address, "/-/ready").is_some_and(|(code, _)| code == 200) {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {START_TIMEOUT:?}:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The result of an instant query (`data.result`, a list of series),
    /// or the error Prometheus gave.
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (code, body) = http_get(&self.address, &path)
            .ok_or_else(|| format!("no answer from prometheus at {}", self.address))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {code}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The alerts Prometheus holds now (`/api/v1/alerts`): pending, while
    /// the expression is true but not yet for the rule's `for`, or firing.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let (_, body) = http_get(&self.address, "/api/v1/alerts").unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["alerts"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Every scrape target and its health (`up`, `down`, `unknown`) with its last error.
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let (_, body) = http_get(&self.address, "/api/v1/targets").unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["activeTargets"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The end of its log.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET over HTTP/1.0 (no chunked answer), its status and body.
fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
