//! Installing the operator with the chart, as a pod on the real node under
//! the chart's ServiceAccount; the Secrets and the sample bridge.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{Servers, run};

/// Kubernetes version for `helm template` (helm built from the Go proxy
/// assumes 1.20); the test control plane's release.
pub const KUBE_VERSION: &str = "v1.35.4";
/// Secret with the Kafka SCRAM password (key `password`).
pub const KAFKA_SECRET: &str = "kafka-credentials";
/// Secret with the MQTT password (key `password`).
pub const MQTT_SECRET: &str = "mqtt-credentials";

pub fn chart_dir() -> PathBuf {
    crate::workspace().join("helm/mqtt-kafka-operator")
}

/// A namespace for bridges on the real node. Their pods use the host
/// network (the node has no pod network), which only the "privileged" Pod
/// Security level admits; the pods' own lock-down (non-root, read-only root
/// file system) is checked on the running containers instead.
pub fn create_namespace(s: &Servers, name: &str) -> Result<()> {
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
         pod-security.kubernetes.io/enforce: privileged\n"
    );
    run(s.kubectl().args(["apply", "-f", "-"]), Some(&manifest))?;
    Ok(())
}

/// `helm install --wait` of the chart into `operator_ns`, watching
/// `bridge_ns` only, with the operator as a pod of the chart's Deployment on
/// the real node, from the operator image `cargo xtask images` imported
/// with `tag` (the bridges get the bridge image of the same tag). The node
/// has no pod network and the test apiserver listens on loopback only with
/// no kube-proxy behind the `kubernetes` Service, so the pod uses the host
/// network, listens on 127.0.0.1 (`metrics_port`) and reaches the
/// apiserver at its loopback address: the chart's values for such nodes.
#[allow(clippy::too_many_arguments)]
pub fn helm_install_on_node(
    s: &Servers,
    helm_home: &Path,
    release: &str,
    operator_ns: &str,
    bridge_ns: &str,
    tag: &str,
    node: &crate::node::RealNode,
    metrics_port: u16,
) -> Result<()> {
    let api = crate::env("KUBE_APISERVER_URL")?;
    let (host, port) = api
        .trim_start_matches("https://")
        .rsplit_once(':')
        .context("KUBE_APISERVER_URL is https://host:port")?;
    let values = serde_json::json!({
        "image": {"repository": "localhost/mqtt-kafka-operator", "tag": tag},
        "bridgeImage": {"repository": "localhost/mqtt-kafka-bridge", "tag": tag},
        "watchNamespace": bridge_ns,
        "log": {"format": "text"},
        "hostNetwork": true,
        "metrics": {"address": "127.0.0.1", "port": metrics_port},
        "apiServer": {"host": host, "port": port},
        "nodeSelector": {"kubernetes.io/hostname": node.name},
        "tolerations": [{"key": node.taint, "operator": "Exists", "effect": "NoSchedule"}],
    });
    std::fs::create_dir_all(helm_home)?;
    let values_file = helm_home.join("values.json");
    std::fs::write(&values_file, values.to_string())?;
    run(
        s.helm(helm_home)
            .args(["upgrade", "--install", release])
            .arg(chart_dir())
            .args(["--namespace", operator_ns, "--create-namespace", "-f"])
            .arg(&values_file)
            .args(["--wait", "--timeout", "180s"]),
        None,
    )?;
    Ok(())
}

/// The chart's ServiceAccount of `release` (its name depends on the release
/// name, as Helm's usual `fullname` does), found by the release's label.
pub fn service_account(s: &Servers, release: &str, operator_ns: &str) -> Result<String> {
    let out = run(
        s.kubectl().args([
            "get",
            "serviceaccounts",
            "-n",
            operator_ns,
            "-l",
            &format!("app.kubernetes.io/instance={release}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]),
        None,
    )?;
    match out.split_whitespace().collect::<Vec<_>>()[..] {
        [one] => Ok(one.to_owned()),
        ref other => anyhow::bail!(
            "expected one ServiceAccount of release {release} in {operator_ns}, found {other:?}"
        ),
    }
}

/// The Secrets the bridge references: the Kafka SCRAM password and the MQTT
/// password (values through stdin, never on a command line).
pub fn create_secrets(s: &Servers, ns: &str) -> Result<()> {
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": KAFKA_SECRET, "namespace": ns},
             "stringData": {"password": s.kafka_scram_password}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": MQTT_SECRET, "namespace": ns},
             "stringData": {"password": s.mqtt_password}},
        ]
    });
    run(
        s.kubectl().args(["apply", "-f", "-"]),
        Some(&manifest.to_string()),
    )?;
    Ok(())
}

/// Where the sample bridge's data goes.
#[derive(Clone, Debug)]
pub struct BridgeNames {
    pub name: String,
    /// Prefix of every MQTT topic (`""` or ending with `/`), so concurrent
    /// runs on one broker never see each other's sensors.
    pub mqtt_root: String,
    /// The Kafka topic (`sensor_data` in the example).
    pub kafka_topic: String,
    /// Client id prefix, shared-subscription group and consumer group.
    pub client_prefix: String,
    /// `spec.http.port`: slot N listens on this + N on the host network.
    pub http_port: u16,
    /// `spec.template.pod` (where the pods run: [`crate::node::RealNode`]).
    pub pod_template: serde_json::Value,
}

/// `deploy/examples/sensor-fleet.yaml`, pointed at the test servers: the
/// password listener of Mosquitto and the SASL listener of Kafka (SCRAM),
/// with passwords from [`create_secrets`]; names from `n`. The consumer
/// starts at the earliest offset: its group is new and the topic fresh, so
/// this is "everything", where `latest` would skip what arrives before the
/// group's first assignment.
pub fn sensor_fleet_bridge(s: &Servers, n: &BridgeNames) -> Result<String> {
    let path = crate::workspace().join("deploy/examples/sensor-fleet.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text).context("parse the example")?;
    let set = |v: &mut serde_yaml::Value, path: &[&str], value: serde_yaml::Value| {
        let mut cur = v;
        for p in path {
            cur = &mut cur[*p];
        }
        *cur = value;
    };
    let yaml = |s: &str| -> Result<serde_yaml::Value> { Ok(serde_yaml::from_str(s)?) };
    set(&mut v, &["metadata", "name"], n.name.as_str().into());
    set(
        &mut v,
        &["spec", "mqtt", "url"],
        s.mqtt_auth_url.as_str().into(),
    );
    set(
        &mut v,
        &["spec", "mqtt", "clientIdPrefix"],
        n.client_prefix.as_str().into(),
    );
    set(
        &mut v,
        &["spec", "mqtt", "sharedSubscriptionGroup"],
        n.client_prefix.as_str().into(),
    );
    set(
        &mut v,
        &["spec", "mqtt", "authentication"],
        yaml(&format!(
            "{{type: password, username: '{}', passwordSecret: {{secretName: {MQTT_SECRET}, key: password}}}}",
            s.mqtt_user
        ))?,
    );
    set(
        &mut v,
        &["spec", "kafka", "bootstrapServers"],
        s.kafka_sasl_bootstrap.as_str().into(),
    );
    set(
        &mut v,
        &["spec", "kafka", "authentication"],
        yaml(&format!(
            "{{type: scram-sha-512, username: '{}', passwordSecret: {{secretName: {KAFKA_SECRET}, key: password}}}}",
            s.kafka_scram_user
        ))?,
    );
    set(
        &mut v,
        &["spec", "kafka", "consumer", "groupId"],
        n.client_prefix.as_str().into(),
    );
    set(
        &mut v,
        &["spec", "kafka", "consumer", "autoOffsetReset"],
        "earliest".into(),
    );
    set(
        &mut v,
        &["spec", "http"],
        yaml(&format!("{{port: {}}}", n.http_port))?,
    );
    set(
        &mut v,
        &["spec", "template"],
        yaml(&serde_json::json!({"pod": n.pod_template}).to_string())?,
    );
    let routes = v["spec"]["routes"]
        .as_sequence_mut()
        .context("example without routes")?;
    for r in routes.iter_mut() {
        if let Some(m) = r.get_mut("mqttToKafka") {
            let filter = m["mqttTopicFilter"].as_str().unwrap_or_default().to_owned();
            m["mqttTopicFilter"] = format!("{}{filter}", n.mqtt_root).into();
            m["kafkaTopic"] = n.kafka_topic.as_str().into();
        }
        if let Some(k) = r.get_mut("kafkaToMqtt") {
            let topic = k["mqttTopic"].as_str().unwrap_or_default().to_owned();
            k["mqttTopic"] = format!("{}{topic}", n.mqtt_root).into();
            k["kafkaTopics"] = serde_yaml::Value::Sequence(vec![n.kafka_topic.as_str().into()]);
        }
    }
    Ok(serde_yaml::to_string(&v)?)
}
