//! The operator binary as it runs in a pod: probes and metrics on its HTTP
//! endpoint, JSON logs that never carry a Secret value, exit 0 on SIGTERM,
//! and a one-line error when the CRD is missing or RBAC hides it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use crds::MqttKafkaBridge;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;

const HIVEMQ: &str = include_str!("../../deploy/examples/hivemq-confluent.yaml");

/// Secret values that must never leave the Secrets.
const MARKERS: [&str; 3] = [
    "mqtt-marker-5b1e0c7d",
    "kafka-marker-9a4f2e18",
    "rotated-marker-3c6d7a20",
];

/// The operator binary, its stdout and stderr collected line by line;
/// killed when dropped.
struct Binary {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn spawn(kubeconfig: &Path, args: &[&str], rust_log: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_operator"))
            .args(["--bridge-image=registry.example/bridge-runtime:test"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", rust_log)
            .env_remove("WATCH_NAMESPACE")
            .env_remove("LEADER_ELECTION")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the operator binary");
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            // Drained continuously so a full pipe never blocks the operator.
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `limit` for the process to exit.
    async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let child = &mut self.child;
        let status = wait_for("operator exit", limit, || {
            let status = child.try_wait().unwrap();
            async move { status }
        })
        .await;
        // Let the reader threads take the last lines.
        tokio::time::sleep(Duration::from_millis(200)).await;
        status
    }

    /// The address the operator logged it serves on.
    async fn http_address(&self) -> SocketAddr {
        wait_for("the 'serving' log line", Duration::from_secs(60), || {
            let found = self.stdout().iter().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                v["fields"]["bound"].as_str()?.parse().ok()
            });
            async move { found }
        })
        .await
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubeconfig file derived from the admin one; removed when dropped.
struct TempKubeconfig(PathBuf);

impl TempKubeconfig {
    fn new(edit: impl FnOnce(&mut serde_yaml::Value)) -> Self {
        let admin = std::fs::read_to_string(testenv::var("KUBECONFIG")).unwrap();
        let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
        edit(&mut config);
        Self::write(&serde_yaml::to_string(&config).unwrap())
    }

    /// The chart's ServiceAccount in `ns`, with the chart's RBAC there.
    async fn service_account(admin: &kube::Client, ns: &str) -> Self {
        install_chart_rbac(admin, ns).await;
        let token = service_account_token(admin, ns).await;
        Self::write(&token_kubeconfig(&token, None).to_string())
    }

    fn write(text: &str) -> Self {
        let path = std::env::temp_dir().join(testenv::unique_name("operator-kubeconfig"));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempKubeconfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM");
}

/// No marker, nor its base64, hex or digests, in `text`.
#[track_caller]
fn assert_no_marker(what: &str, text: &str) {
    for marker in MARKERS {
        assert_no_form(what, text, &derived_forms(marker, marker.as_bytes()));
    }
}

async fn replica_sets(client: &kube::Client, ns: &str) -> usize {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels("mqttkafka.io/bridge=hivemq-confluent"))
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test]
async fn binary_serves_probes_and_metrics_logs_no_secret_and_stops_on_sigterm() {
    let client = client().await;
    let ns = namespace(&client, "process").await;
    let kubeconfig = TempKubeconfig::service_account(&client, &ns).await;
    let kubeconfig = &kubeconfig.0;
    // Debug level, the operator's and kube's: the most a user would turn on.
    let mut op = Binary::spawn(
        kubeconfig,
        &[
            &format!("--namespace={ns}"),
            "--http-address=127.0.0.1:0",
            "--log-format=json",
        ],
        "info,operator=debug,kube=debug",
    );
    let address = op.http_address().await;
    assert_eq!(
        http_get(address, "/healthz").await.map(|r| r.0),
        Some(200),
        "/healthz"
    );
    // Ready once the caches synced: the watches of one namespace sync quickly.
    wait_for("/readyz 200", Duration::from_secs(60), || async {
        (http_get(address, "/readyz").await?.0 == 200).then_some(())
    })
    .await;

    // A bridge created before its Secrets fails with SecretNotFound, then
    // becomes Ready once they exist.
    let name = "hivemq-confluent";
    apply_bridge(&client, &ns, HIVEMQ).await;
    wait_ready(&client, &ns, name, "False", "SecretNotFound").await;
    put_secret(
        &client,
        &ns,
        "hivemq-credentials",
        &[("password", MARKERS[0])],
    )
    .await;
    put_secret(
        &client,
        &ns,
        "confluent-credentials",
        &[("api-secret", MARKERS[1])],
    )
    .await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    // A rotated Secret rolls the pods (its new resourceVersion on the template).
    let before = replica_sets(&client, &ns).await;
    put_secret(
        &client,
        &ns,
        "hivemq-credentials",
        &[("password", MARKERS[2])],
    )
    .await;
    wait_for(
        "rollout after the rotation",
        Duration::from_secs(60),
        || async { (replica_sets(&client, &ns).await > before).then_some(()) },
    )
    .await;
    wait_ready(&client, &ns, name, "True", "Available").await;

    let (code, head, metrics) = http_get_with_head(address, "/metrics")
        .await
        .expect("/metrics");
    assert_eq!(code, 200);
    // OpenMetrics, as the body is (a scraper picks its parser by this).
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    let value = |name: &str, labels: &str| {
        metric(&metrics, name, labels).unwrap_or_else(|| panic!("{name}{{{labels}}} in\n{metrics}"))
    };
    assert!(value("mqtt_kafka_operator_reconciles_total", "") >= 3.0);
    assert!(
        value(
            "mqtt_kafka_operator_reconcile_failures_total",
            "reason=\"SecretNotFound\""
        ) >= 1.0
    );
    assert!(value("mqtt_kafka_operator_reconcile_duration_seconds_count", "") >= 3.0);
    assert!(metrics.contains("mqtt_kafka_operator_reconcile_duration_seconds_bucket{le="));

    // Nothing the operator wrote holds a Secret value either.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let bridges: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default();
    assert_no_marker(
        "ConfigMaps",
        &serde_json::to_string(&cms.list(&lp).await.unwrap().items).unwrap(),
    );
    assert_no_marker(
        "events",
        &serde_json::to_string(&events.list(&lp).await.unwrap().items).unwrap(),
    );
    assert_no_marker(
        "bridges (status)",
        &serde_json::to_string(&bridges.list(&lp).await.unwrap().items).unwrap(),
    );
    assert_no_marker(
        "Deployments",
        &serde_json::to_string(&deployments.list(&lp).await.unwrap().items).unwrap(),
    );

    // SIGTERM: a prompt, clean exit.
    sigterm(&op.child);
    let status = op.exit_within(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        http_get(address, "/healthz").await.is_none(),
        "endpoint still serving after exit"
    );

    // Every log line is JSON; the reconciles were logged; no Secret value.
    let stdout = op.stdout();
    for line in &stdout {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
    let all = stdout.join("\n");
    assert!(
        all.contains("\"reconciled\""),
        "no reconcile in the logs:\n{all}"
    );
    assert!(all.contains("shutting down"), "{all}");
    assert_no_marker("the operator's logs", &all);
    assert_no_marker("the operator's stderr", &op.stderr().join("\n"));
    drop_namespace(&client, &ns).await;
}

#[tokio::test]
async fn missing_crd_or_rbac_fails_at_startup_with_one_clear_line() {
    // Asks for the shared CRD on a path the apiserver does not serve: the
    // same bare 404 as a cluster without the CRD, without removing it.
    let not_installed = TempKubeconfig::new(|c| {
        let server = c["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap()
            .to_string();
        c["clusters"][0]["cluster"]["server"] = format!("{server}/crd-not-installed").into();
    });
    // A user no role is bound to: the CRD is there but not listable.
    let forbidden = TempKubeconfig::new(|c| {
        c["users"][0]["user"]["as"] = testenv::unique_name("nobody").into();
    });
    let mut missing = Binary::spawn(
        &not_installed.0,
        &["--http-address=127.0.0.1:0", "--log-format=json"],
        "info",
    );
    let mut denied = Binary::spawn(
        &forbidden.0,
        &["--http-address=127.0.0.1:0", "--log-format=json"],
        "info",
    );

    for (op, expected) in [
        (
            &mut missing,
            &[
                "mqttkafkabridges.mqttkafka.io",
                "is not installed",
                "kubectl apply --server-side -f deploy/crd.yaml",
                "helm",
            ][..],
        ),
        (
            &mut denied,
            &[
                "not allowed to list mqttkafkabridges.mqttkafka.io",
                "deploy/rbac.yaml",
            ][..],
        ),
    ] {
        let status = op.exit_within(Duration::from_secs(60)).await;
        assert!(!status.success(), "exit status {status}");
        let stderr = op.stderr();
        assert_eq!(stderr.len(), 1, "one line on stderr: {stderr:#?}");
        for part in expected {
            assert!(stderr[0].contains(part), "{part:?} in {:?}", stderr[0]);
        }
    }
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_known_ones() {
    let out = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["--bridge-image=x", "--log-format=yaml"])
        .env_remove("LOG_FORMAT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in ["--log-format", "yaml", "json", "text"] {
        assert!(stderr.contains(part), "{part:?} in {stderr}");
    }
}
