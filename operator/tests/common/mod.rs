//! Shared helpers of the operator's integration tests: the CRD, a temporary
//! namespace, the operator running in-process under the Helm chart's
//! ServiceAccount and RBAC (never as admin), and bounded polling.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use crds::MqttKafkaBridge;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use tokio::sync::oneshot;

/// Field manager of the tests (the "user").
pub const USER: &str = "integration-test";

/// An admin client with the CRD installed and established.
pub async fn client() -> Client {
    client_with_crd().await
}

async fn client_with_crd() -> Client {
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
    /// Starts an operator watching `namespace` as the chart's ServiceAccount
    /// there, with the chart's RBAC (see [`operator_client`]); `admin` sets it up.
    pub async fn start(admin: &Client, namespace: &str) -> Self {
        let client = operator_client(admin, namespace).await;
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

/// Applies a bridge the way an older CRD (one without the CEL `rule`)
/// admitted it: installs such a CRD, applies, and installs the current CRD
/// again. Other tests re-install the current CRD whenever they start, so
/// the apply is retried until it slips through.
pub async fn apply_bridge_past_rule(client: &Client, ns: &str, yaml: &str, rule: &str) {
    fn strip(v: &mut serde_json::Value, rule: &str) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Array(rules)) = m.get_mut("x-kubernetes-validations")
                {
                    rules.retain(|r| r["rule"] != rule);
                }
                m.values_mut().for_each(|v| strip(v, rule));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| strip(v, rule)),
            _ => {}
        }
    }
    let mut older: serde_json::Value =
        serde_yaml::from_str(include_str!("../../../crds/mqttkafkabridges.yaml")).unwrap();
    strip(&mut older, rule);
    let older: CustomResourceDefinition = serde_json::from_value(older).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    value["metadata"]["namespace"] = ns.into();
    let name = value["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the bridge admitted by an older CRD",
        Duration::from_secs(60),
        || async {
            crds.patch(
                "mqttkafkabridges.mqttkafka.io",
                &PatchParams::apply(USER).force(),
                &Patch::Apply(&older),
            )
            .await
            .ok()?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            api.patch(
                &name,
                &PatchParams::apply(USER).force(),
                &Patch::Apply(&value),
            )
            .await
            .ok()
        },
    )
    .await;
    // The current CRD again.
    let _ = client_with_crd().await;
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
    http_get_with_head(address, path)
        .await
        .map(|(code, _, body)| (code, body))
}

/// Status code, response head (status line and headers) and body of
/// `GET http://{address}{path}`.
pub async fn http_get_with_head(
    address: std::net::SocketAddr,
    path: &str,
) -> Option<(u16, String, String)> {
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
        Some((code, head.to_string(), body.to_string()))
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

/// Name of the chart's release in the tests, which makes the chart's
/// ServiceAccount, Roles and bindings all `mqtt-kafka-operator`.
pub const RELEASE: &str = "mqtt-kafka-operator";

/// `$HELM` with its caches and configuration out of `$HOME`.
pub fn helm() -> std::process::Command {
    let mut cmd = std::process::Command::new(testenv::var("HELM"));
    let home = std::env::temp_dir().join(format!("operator-tests-helm-{}", std::process::id()));
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// The chart directory.
pub fn chart_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/mqtt-kafka-operator")
}

/// The chart's ServiceAccount and RBAC templates rendered with `values`
/// (`key=value` for `--set`) into release namespace `ns`, as YAML documents.
pub fn render_chart_rbac(kube_version: &str, ns: &str, values: &[&str]) -> Vec<serde_yaml::Value> {
    let mut cmd = helm();
    cmd.args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", ns, "--kube-version", kube_version])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/rbac.yaml"]);
    for v in values {
        cmd.args(["--set", v]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(serde_yaml::Value::deserialize)
        .filter_map(Result::ok)
        .filter(|d| !d.is_null())
        .collect()
}

/// The Kubernetes version of the test apiserver (for `helm --kube-version`).
pub async fn kube_version(client: &Client) -> String {
    client.apiserver_version().await.unwrap().git_version
}

/// Installs what the chart installs for an operator watching only `ns`
/// (`watchNamespace`, leader election on, released into `ns`): its
/// ServiceAccount, Roles and RoleBindings, applied as admin.
pub async fn install_chart_rbac(admin: &Client, ns: &str) {
    let version = kube_version(admin).await;
    let docs = render_chart_rbac(
        &version,
        ns,
        &[
            &format!("watchNamespace={ns}"),
            "leaderElection.enabled=true",
        ],
    );
    let params = PatchParams::apply(USER).force();
    for doc in docs {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        match doc["kind"].as_str() {
            Some("ServiceAccount") => {
                let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
                api.patch(&name, &params, &Patch::Apply(&doc))
                    .await
                    .unwrap();
            }
            Some("Role") => {
                let api: Api<Role> = Api::namespaced(admin.clone(), ns);
                api.patch(&name, &params, &Patch::Apply(&doc))
                    .await
                    .unwrap();
            }
            Some("RoleBinding") => {
                let api: Api<RoleBinding> = Api::namespaced(admin.clone(), ns);
                api.patch(&name, &params, &Patch::Apply(&doc))
                    .await
                    .unwrap();
            }
            other => panic!("unexpected {other:?} in the chart's RBAC for watchNamespace"),
        }
    }
}

/// A kubeconfig (as JSON) for the test apiserver, or for `server` instead
/// of its address, that authenticates with `token` only.
pub fn token_kubeconfig(token: &str, server: Option<&str>) -> serde_json::Value {
    let admin = std::fs::read_to_string(testenv::var("KUBECONFIG")).unwrap();
    let admin: serde_json::Value = serde_yaml::from_str(&admin).unwrap();
    let context = admin["current-context"].as_str().unwrap();
    let cluster_name = admin["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == context)
        .map(|c| c["context"]["cluster"].clone())
        .unwrap();
    let mut cluster = admin["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster_name)
        .map(|c| c["cluster"].clone())
        .unwrap();
    if let Some(server) = server {
        cluster["server"] = server.into();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "testenv", "user": "operator"}}],
        "current-context": "operator",
    })
}

/// A fresh token of the chart's ServiceAccount in `ns` (installed by
/// [`install_chart_rbac`]), once RBAC lets it list bridges there.
pub async fn service_account_token(admin: &Client, ns: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(RELEASE, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    // RBAC reaches the authorizer's cache a moment after the bindings exist.
    let client = token_client(&token_kubeconfig(&token, None)).await;
    let bridges: Api<MqttKafkaBridge> = Api::namespaced(client, ns);
    wait_for(
        "the chart's RBAC to apply",
        Duration::from_secs(30),
        || async {
            bridges
                .list(&ListParams::default().limit(1))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    token
}

/// A client from a kubeconfig made by [`token_kubeconfig`].
pub async fn token_client(kubeconfig: &serde_json::Value) -> Client {
    let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(kubeconfig.clone()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A client authenticated as the chart's ServiceAccount in `ns`, with
/// exactly the RBAC the chart grants an operator watching `ns`.
pub async fn operator_client(admin: &Client, ns: &str) -> Client {
    install_chart_rbac(admin, ns).await;
    let token = service_account_token(admin, ns).await;
    token_client(&token_kubeconfig(&token, None)).await
}

/// Text forms of `bytes` a reader of the operator's output could compute
/// from a guess: the bytes themselves, their base64 (as Secret data is
/// serialized) and hex, and their SHA-1, SHA-256 and SHA-512 digests in hex
/// and base64. Each with a label saying what it is.
pub fn derived_forms(label: &str, bytes: &[u8]) -> Vec<(String, String)> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use sha2::Digest as _;
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
    let encodings = |what: &str, b: &[u8]| {
        vec![
            (format!("{what} as hex"), hex(b)),
            (format!("{what} as HEX"), hex(b).to_uppercase()),
            (format!("{what} as base64"), STANDARD.encode(b)),
            (
                format!("{what} as unpadded base64"),
                STANDARD_NO_PAD.encode(b),
            ),
            (format!("{what} as base64url"), URL_SAFE_NO_PAD.encode(b)),
        ]
    };
    let mut forms = Vec::new();
    if let Ok(text) = std::str::from_utf8(bytes) {
        forms.push((label.to_string(), text.to_string()));
    }
    forms.extend(encodings(label, bytes));
    forms.extend(encodings(
        &format!("SHA-1 of {label}"),
        &sha1::Sha1::digest(bytes),
    ));
    forms.extend(encodings(
        &format!("SHA-256 of {label}"),
        &sha2::Sha256::digest(bytes),
    ));
    forms.extend(encodings(
        &format!("SHA-512 of {label}"),
        &sha2::Sha512::digest(bytes),
    ));
    forms
}

/// The forms of each secret value and of the concatenations the operator
/// once hashed onto the pod template: every referenced (Secret name, key,
/// value) in name and key order, each part prefixed with its length as a
/// big-endian u64, and the same without the prefixes.
pub fn secret_forms(referenced: &[(&str, &str, &str)]) -> Vec<(String, String)> {
    let mut sorted = referenced.to_vec();
    sorted.sort();
    let mut prefixed = Vec::new();
    let mut plain = Vec::new();
    let mut values = Vec::new();
    for (name, key, value) in &sorted {
        for part in [name.as_bytes(), key.as_bytes(), value.as_bytes()] {
            prefixed.extend_from_slice(&(part.len() as u64).to_be_bytes());
            prefixed.extend_from_slice(part);
            plain.extend_from_slice(part);
        }
        values.extend_from_slice(value.as_bytes());
    }
    let mut forms = Vec::new();
    for (name, key, value) in &sorted {
        forms.extend(derived_forms(
            &format!("the value of {name}/{key}"),
            value.as_bytes(),
        ));
        let mut one = Vec::new();
        for part in [name.as_bytes(), key.as_bytes(), value.as_bytes()] {
            one.extend_from_slice(&(part.len() as u64).to_be_bytes());
            one.extend_from_slice(part);
        }
        forms.extend(derived_forms(
            &format!("length-prefixed {name}/{key}"),
            &one,
        ));
    }
    forms.extend(derived_forms("all length-prefixed entries", &prefixed));
    forms.extend(derived_forms("all entries concatenated", &plain));
    forms.extend(derived_forms("all values concatenated", &values));
    forms
}

/// Everything the operator wrote, or caused to be written, in `ns` as JSON
/// text: Deployments, ReplicaSets, Pods, ConfigMaps, Services, events (both
/// APIs) and the bridges with their status.
pub async fn operator_output(client: &Client, ns: &str) -> String {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Pod, Service};
    use k8s_openapi::api::events::v1::Event;
    async fn all<K>(client: &Client, ns: &str) -> String
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let items = api.list(&ListParams::default()).await.unwrap().items;
        assert!(
            !items.is_empty() || K::kind(&()) == "Event",
            "no {} in {ns}: nothing to check",
            K::kind(&())
        );
        serde_json::to_string(&items).unwrap()
    }
    [
        all::<Deployment>(client, ns).await,
        all::<ReplicaSet>(client, ns).await,
        all::<Pod>(client, ns).await,
        all::<ConfigMap>(client, ns).await,
        all::<Service>(client, ns).await,
        all::<Event>(client, ns).await,
        all::<CoreEvent>(client, ns).await,
        all::<MqttKafkaBridge>(client, ns).await,
    ]
    .join("\n")
}

/// Fails naming the form when any of `forms` appears in `text`.
#[track_caller]
pub fn assert_no_form(what: &str, text: &str, forms: &[(String, String)]) {
    for (label, form) in forms {
        assert!(!text.contains(form.as_str()), "{label} appears in {what}");
    }
}

/// The ConfigMap slot 0 of bridge `name` mounts (its configuration).
pub async fn current_config_map(client: &Client, ns: &str, name: &str) -> ConfigMap {
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deploy
        .get(&operator::build::deployment_name(name, 0))
        .await
        .unwrap();
    let cm = operator::build::mounted_config_map(&d).unwrap().to_owned();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.get(&cm).await.unwrap()
}

/// Names of the ConfigMaps of bridge `name`.
pub async fn config_map_names(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let params = ListParams::default().labels(&operator::build::pod_selector(name));
    cms.list(&params)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect()
}
