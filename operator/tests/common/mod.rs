//! Shared helpers of the operator's integration tests: the CRD, a temporary
//! namespace, the operator running in-process, and bounded polling.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use crds::MqttKafkaBridge;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::oneshot;

/// Field manager of the tests (the "user").
pub const USER: &str = "integration-test";

/// An admin client with the CRD installed and established.
pub async fn client() -> Client {
    let client = testenv::kube_client().await;
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(include_str!("../../../crds/mqttkafkabridges.yaml")).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "mqttkafkabridges.mqttkafka.io",
        &PatchParams::apply(USER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    wait_for("CRD established", Duration::from_secs(30), || async {
        let crd = crds.get("mqttkafkabridges.mqttkafka.io").await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    client
}

/// A fresh namespace.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = testenv::unique_name(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    name
}

/// Deletes a namespace (best effort, not awaited to completion).
pub async fn drop_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// The operator running in-process on one namespace; stops when dropped.
pub struct Operator {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<operator::Result<()>>,
}

/// The configuration tests run the operator with: one namespace, an HTTP
/// endpoint on a free port, no leader election.
pub fn test_config(namespace: &str) -> operator::Config {
    operator::Config {
        namespace: Some(namespace.to_string()),
        default_image: "registry.example/bridge-runtime:test".into(),
        http_address: Some("127.0.0.1:0".parse().unwrap()),
        leader_election: None,
        instance: format!("test-{namespace}"),
    }
}

impl Operator {
    /// Starts an operator watching `namespace` with `client`'s identity.
    pub fn start(client: Client, namespace: &str) -> Self {
        Self::start_with(client, test_config(namespace))
    }

    /// Starts an operator with any configuration.
    pub fn start_with(client: Client, config: operator::Config) -> Self {
        // Operator logs in the test output (shown for failing tests), RUST_LOG-filtered.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "operator=info".into()),
            )
            .with_test_writer()
            .try_init();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(operator::run(client, config, async move {
            let _ = rx.await;
        }));
        Self {
            stop: Some(tx),
            task,
        }
    }

    /// Stops it and returns how it ended.
    pub async fn stop(mut self) -> operator::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("operator stops within 20 s")
            .expect("operator task")
    }
}

impl Operator {
    /// Waits up to `limit` for it to end by itself, and returns how it ended.
    pub async fn join(mut self, limit: Duration) -> operator::Result<()> {
        tokio::time::timeout(limit, &mut self.task)
            .await
            .unwrap_or_else(|_| panic!("operator still running after {limit:?}"))
            .expect("operator task")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 250 ms until it returns `Some`, panicking after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates or replaces an Opaque Secret.
pub async fn put_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &str)]) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    let mut value = serde_json::to_value(&secret).unwrap();
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    api.patch(
        name,
        &PatchParams::apply(USER).force(),
        &Patch::Apply(&value),
    )
    .await
    .unwrap();
}

/// Server-side applies a bridge manifest (YAML) into `ns` as the user.
pub async fn apply_bridge(client: &Client, ns: &str, yaml: &str) -> MqttKafkaBridge {
    let mut value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    value["metadata"]["namespace"] = ns.into();
    let name = value["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(USER).force(),
        &Patch::Apply(&value),
    )
    .await
    .unwrap()
}

/// The bridge's Ready condition as (status, reason, message), once it
/// describes the current generation.
pub async fn ready(client: &Client, ns: &str, name: &str) -> Option<(String, String, String)> {
    let api: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), ns);
    let b = api.get(name).await.ok()?;
    let status = b.status?;
    let c = status.condition("Ready")?;
    (c.observed_generation == b.metadata.generation)
        .then(|| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until Ready has `status` and `reason` for the current generation.
pub async fn wait_ready(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> String {
    let last = std::sync::Mutex::new(None);
    let what = || format!("{ns}/{name} Ready={status}/{reason}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let seen = ready(client, ns, name).await;
        if let Some((s, r, m)) = &seen
            && s == status
            && r == reason
        {
            return m.clone();
        }
        if let Ok(mut l) = last.lock() {
            *l = seen;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {}; last seen {:?}",
                what(),
                last.lock().ok()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The slot Deployments of a bridge, by name.
pub async fn deployments(client: &Client, ns: &str, bridge: &str) -> Vec<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let mut items = api
        .list(&ListParams::default().labels(&format!("mqttkafka.io/bridge={bridge}")))
        .await
        .unwrap()
        .items;
    items.sort_by_key(|d| d.metadata.name.clone());
    items
}

/// The value of env var `name` in a Deployment's bridge container.
pub fn env(d: &Deployment, name: &str) -> Option<String> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// A local address with a port that was free a moment ago.
pub fn free_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Status code and body of `GET http://{address}{path}`; `None` when the
/// endpoint does not answer within 10 s.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// The value of an unlabelled metric (or one with exactly `labels`) in a
/// Prometheus text exposition.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `$KUBECTL` (or `kubectl`) with the test kubeconfig.
pub fn kubectl() -> std::process::Command {
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut cmd = std::process::Command::new(program);
    cmd.env("KUBECONFIG", testenv::var("KUBECONFIG"));
    cmd
}
