//! Helpers of the install-path tests: run helm and kubectl against the test
//! control plane, temporary namespaces, rendered manifests.
//!
//! The tests drive the real command-line tools users run (`helm`, `kubectl`)
//! rather than a client library, so they check exactly the documented commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use testenv::{unique_name, var};

/// Kubernetes version given to `helm template`/`lint` (helm built from the Go
/// proxy otherwise assumes 1.20); the test control plane's release.
pub const KUBE_VERSION: &str = "v1.35.4";
/// Release name and namespace of the plain manifests in `deploy/`.
pub const DEPLOY_RELEASE: &str = "mqtt-kafka-operator";
pub const DEPLOY_NAMESPACE: &str = "mqtt-kafka-system";
/// Bounds every helm/kubectl wait so a broken install fails instead of hanging.
pub const WAIT: &str = "180s";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    workspace().join("helm/mqtt-kafka-operator")
}

/// A values file under `install-tests/values/`.
pub fn values_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("values")
        .join(name)
}

/// `helm` from the cache `cargo xtask test` fills (`$HELM`).
pub fn helm() -> Command {
    let mut cmd = Command::new(var("HELM"));
    cmd.env("KUBECONFIG", var("KUBECONFIG"));
    // Keep helm's caches and config out of $HOME and away from other runs.
    let home = std::env::temp_dir().join(format!("install-tests-helm-{}", std::process::id()));
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// `kubectl` as admin.
pub fn kubectl() -> Command {
    let mut cmd = Command::new(var("KUBECTL"));
    cmd.env("KUBECONFIG", var("KUBECONFIG"));
    cmd
}

/// Runs `cmd` (with `stdin` if given) and returns its output, whatever the exit status.
pub fn output(cmd: &mut Command, stdin: Option<&str>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", describe(cmd)));
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin piped");
        let input = input.to_string();
        // A thread, so a large input cannot deadlock against a full stdout pipe.
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    child.wait_with_output().expect("wait for command")
}

/// Runs `cmd` and returns stdout; panics with its stderr when it fails.
pub fn run_ok(cmd: &mut Command, stdin: Option<&str>) -> String {
    let out = output(cmd, stdin);
    assert!(
        out.status.success(),
        "`{}` failed ({}):\n{}\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `cmd`, expecting failure; returns stderr + stdout.
pub fn run_err(cmd: &mut Command, stdin: Option<&str>) -> String {
    let out = output(cmd, stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !out.status.success(),
        "`{}` succeeded but should have failed:\n{text}",
        describe(cmd)
    );
    text
}

/// The program and its arguments, for messages (no environment: it may hold secrets).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `helm template` of the chart with `args` (e.g. `--set`, `-f`).
pub fn render(release: &str, namespace: &str, args: &[&str]) -> String {
    run_ok(
        helm()
            .args(["template", release])
            .arg(chart_dir())
            .args(["--namespace", namespace, "--kube-version", KUBE_VERSION])
            .args(args),
        None,
    )
}

/// The YAML documents of a multi-document stream, without empty ones.
pub fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `(kind, namespace, name)` of a document.
pub fn identity(doc: &serde_yaml::Value) -> (String, String, String) {
    let s = |v: &serde_yaml::Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&doc["kind"]),
        s(&doc["metadata"]["namespace"]),
        s(&doc["metadata"]["name"]),
    )
}

/// A namespace deleted (without waiting) when dropped, so failed tests clean up too.
pub struct TempNamespace {
    pub name: String,
}

impl TempNamespace {
    /// A fresh namespace enforcing the "restricted" Pod Security Standard, so
    /// pods that are not locked down are refused.
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        let manifest = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
             pod-security.kubernetes.io/enforce: restricted\n    \
             pod-security.kubernetes.io/warn: restricted\n"
        );
        run_ok(kubectl().args(["apply", "-f", "-"]), Some(&manifest));
        Self { name }
    }
}

impl TempNamespace {
    /// A fresh namespace for pods on the test environment's real node: they
    /// use the host network (the node has no pod network), which only the
    /// "privileged" Pod Security level admits.
    pub fn for_real_node(prefix: &str) -> Self {
        let name = unique_name(prefix);
        let manifest = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
             pod-security.kubernetes.io/enforce: privileged\n"
        );
        run_ok(kubectl().args(["apply", "-f", "-"]), Some(&manifest));
        Self { name }
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        let _ = output(
            kubectl().args(["delete", "namespace", &self.name, "--wait=false"]),
            None,
        );
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until a Deployment reports Available.
pub fn wait_available(namespace: &str, deployment: &str) {
    run_ok(
        kubectl().args([
            "wait",
            "-n",
            namespace,
            "--for=condition=Available",
            &format!("deployment/{deployment}"),
            &format!("--timeout={WAIT}"),
        ]),
        None,
    );
}

/// `kubectl wait --for=condition=Ready mkb/<bridge>`: its outcome, for a
/// test to report together with the operator's log when it failed.
pub fn wait_bridge_ready(namespace: &str, bridge: &str) -> Output {
    output(
        kubectl().args([
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            &format!("mkb/{bridge}"),
            &format!("--timeout={WAIT}"),
        ]),
        None,
    )
}

/// `kubectl get -o json` of one object, or `None` when it does not exist.
pub fn get(kind: &str, namespace: Option<&str>, name: &str) -> Option<serde_json::Value> {
    let mut cmd = kubectl();
    cmd.args(["get", kind, name, "-o", "json", "--ignore-not-found"]);
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    let out = run_ok(&mut cmd, None);
    (!out.trim().is_empty()).then(|| serde_json::from_str(&out).expect("kubectl JSON"))
}

/// Directory of the binaries `cargo test` built next to this test executable
/// (`target/<profile>`).
pub fn cargo_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// A binary of the workspace built by `cargo test --workspace`.
pub use testenv::cargo_bin;

/// The files of `deploy/` for `kubectl apply -f deploy/`: the chart rendered
/// with default values, split by purpose. kubectl applies a directory's files
/// in name order, so the CRD and the namespace come first.
pub fn plain_manifests() -> Vec<(&'static str, String)> {
    let header = |what: &str| {
        format!(
            "# {what} of the MQTT-Kafka operator, for `kubectl apply --server-side -f deploy/`.\n\
             # Generated: `helm template {DEPLOY_RELEASE} helm/mqtt-kafka-operator --namespace {DEPLOY_NAMESPACE}`\n\
             # with default values; do not edit. Regenerate with\n\
             # `UPDATE_MANIFESTS=1 cargo test -p install-tests --test chart` (see README, Installing).\n"
        )
    };
    let rendered = render(DEPLOY_RELEASE, DEPLOY_NAMESPACE, &[]);
    let (mut rbac, mut operator) = (String::new(), String::new());
    for doc in rendered.split("\n---\n") {
        let doc = doc.trim_start_matches("---\n").trim();
        if doc.is_empty() {
            continue;
        }
        let source = doc
            .lines()
            .find_map(|l| l.strip_prefix("# Source: mqtt-kafka-operator/templates/"))
            .unwrap_or_else(|| panic!("no `# Source:` line in rendered document:\n{doc}"));
        let target = match source {
            "serviceaccount.yaml" | "rbac.yaml" => &mut rbac,
            _ => &mut operator,
        };
        target.push_str("---\n");
        target.push_str(doc);
        target.push('\n');
    }
    let crd =
        std::fs::read_to_string(chart_dir().join("crds/mqttkafkabridges.yaml")).expect("chart CRD");
    vec![
        (
            "crd.yaml",
            format!("{}{crd}", header("The MqttKafkaBridge CRD")),
        ),
        (
            "namespace.yaml",
            format!(
                "{}apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {DEPLOY_NAMESPACE}\n  labels:\n    \
                 # The operator's pod meets the restricted Pod Security Standard.\n    \
                 pod-security.kubernetes.io/enforce: restricted\n",
                header(
                    "The namespace (not part of the chart: `helm install --create-namespace` makes it)"
                )
            ),
        ),
        (
            "operator.yaml",
            format!(
                "{}{operator}",
                header("The operator Deployment and metrics Service")
            ),
        ),
        (
            "rbac.yaml",
            format!(
                "{}{rbac}",
                header("ServiceAccount and least-privilege RBAC")
            ),
        ),
    ]
}

/// The rules file of the chart's alert rules, for a Prometheus without the
/// Prometheus Operator (`rule_files:`): the `spec` of the PrometheusRule the
/// chart renders with `args` (e.g. `--set alerts.brokerMaxQueuedMessages=…`),
/// its text as rendered.
pub fn rendered_alert_rules(args: &[&str]) -> String {
    let mut all = vec![
        "--set",
        "alerts.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ];
    all.extend_from_slice(args);
    let rendered = render(DEPLOY_RELEASE, DEPLOY_NAMESPACE, &all);
    let spec = rendered
        .split_once("\nspec:\n")
        .map(|(_, spec)| spec)
        .unwrap_or_else(|| panic!("no spec in the rendered PrometheusRule:\n{rendered}"));
    spec.lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_string()
        + "\n"
}

/// The chart's Grafana dashboard (the JSON its ConfigMap carries).
pub fn chart_dashboard() -> String {
    std::fs::read_to_string(chart_dir().join("dashboards/mqtt-kafka-bridge.json"))
        .expect("the chart's dashboard")
}

/// The files of `deploy/monitoring/`: the alert rules rendered with the
/// chart's default values and the dashboard, for users without the
/// Prometheus Operator or Grafana's sidecar. Not for `kubectl apply`.
pub fn monitoring_files() -> Vec<(&'static str, String)> {
    let rules = format!(
        "# Alert rules of the MQTT-Kafka bridges and operator, for a Prometheus `rule_files:` entry.\n\
         # Generated from the chart's PrometheusRule (alerts.enabled=true, default values:\n\
         # the broker's max_queued_messages is taken as 1000, Mosquitto's default; change it\n\
         # in MqttKafkaBridgeBrokerQueueFilling to your broker's). Do not edit; regenerate with\n\
         # `UPDATE_MANIFESTS=1 cargo test -p install-tests --test chart`. README, \"Alerts and dashboards\".\n{}",
        rendered_alert_rules(&[])
    );
    vec![
        ("mqtt-kafka-bridge.rules.yaml", rules),
        ("grafana-dashboard.json", chart_dashboard()),
    ]
}

/// `deploy/examples/current-sensor.yaml` pointed at the test servers with
/// unique names, its pod on the real node. The route's Kafka topic is a
/// template, so readiness needs no topic created first.
pub fn current_sensor_on_the_real_node(id: &str, http_port: u16) -> String {
    let example =
        std::fs::read_to_string(workspace().join("deploy/examples/current-sensor.yaml")).unwrap();
    let mut v: serde_yaml::Value = serde_yaml::from_str(&example).unwrap();
    v["spec"]["mqtt"]["url"] = var("MQTT_URL").into();
    v["spec"]["mqtt"]["clientIdPrefix"] = id.into();
    v["spec"]["kafka"]["bootstrapServers"] = var("KAFKA_BOOTSTRAP").into();
    let route = &mut v["spec"]["routes"][0]["mqttToKafka"];
    route["mqttTopicFilter"] = format!("{id}/+").into();
    route["kafkaTopic"] = format!("{id}.{{1}}").into();
    let extra: serde_yaml::Value = serde_json::from_value(serde_json::json!({
        "http": {"port": http_port},
        "template": {"pod": {
            "hostNetwork": true,
            "nodeSelector": {"kubernetes.io/hostname": var("REAL_NODE")},
            "tolerations": [{"key": var("REAL_NODE_TAINT"), "operator": "Exists", "effect": "NoSchedule"}],
        }},
    }))
    .unwrap();
    if let (Some(spec), serde_yaml::Value::Mapping(extra)) = (v["spec"].as_mapping_mut(), extra) {
        spec.extend(extra);
    }
    serde_yaml::to_string(&v).unwrap()
}

/// Builds both images from the test binaries with `cargo xtask images`
/// (tag `tag`, a private store under `storage`), which imports them into the
/// real node's containerd.
pub fn images_into_the_real_node(tag: &str, storage: &Path) {
    run_ok(
        Command::new(var("TESTENV_CTL"))
            .args(["images", "--tag", tag, "--bin-dir"])
            .arg(cargo_bin_dir())
            .arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("runroot")),
        None,
    );
}

/// A free TCP port on 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}
