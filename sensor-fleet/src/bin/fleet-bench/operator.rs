//! Operator scale: N bridges created at once against the test control plane
//! (kwok marks their pods Ready), reconciled by the operator binary running
//! as its own process so /proc tells its CPU and RSS.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crds::MqttKafkaBridge;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::procs::{self, Proc};
use crate::{Args, machine, run_id, table, write_result};

const CRD_YAML: &str = include_str!("../../../../crds/mqttkafkabridges.yaml");

async fn client() -> Result<kube::Client> {
    let path = std::env::var("KUBECONFIG").context("KUBECONFIG is not set")?;
    let kc = kube::config::Kubeconfig::read_from(&path).context("read KUBECONFIG")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("load KUBECONFIG")?;
    kube::Client::try_from(cfg).context("kube client")
}

fn bridge(name: &str) -> Result<MqttKafkaBridge> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "mqttkafka.io/v1alpha1",
        "kind": "MqttKafkaBridge",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "mqtt": {"url": "mqtt://mosquitto:1883", "clientIdPrefix": name},
            "kafka": {"bootstrapServers": "kafka:9092"},
            "routes": [{"name": "readings", "mqttToKafka": {
                "mqttTopicFilter": format!("{name}/+/temperature"), "kafkaTopic": "sensor_data", "qos": 1}}]
        }
    }))?)
}

fn is_ready(b: &MqttKafkaBridge) -> bool {
    b.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Counts Deployments and Ready bridges in `ns`, from the apiserver's watch
/// cache so that the counting loads the measured apiserver as little as possible.
async fn counts(deps: &Api<Deployment>, mkbs: &Api<MqttKafkaBridge>) -> Result<(usize, usize)> {
    let d = deps
        .list_metadata(&ListParams::default().match_any())
        .await?
        .items
        .len();
    let r = mkbs
        .list(&ListParams::default().match_any())
        .await?
        .items
        .iter()
        .filter(|b| is_ready(b))
        .count();
    Ok((d, r))
}

pub async fn scale(args: &Args) -> Result<()> {
    let name = "operator-scale";
    let n = args.bridges;
    let client = client().await?;
    let crd: CustomResourceDefinition = serde_yaml::from_str(CRD_YAML)?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            "mqttkafkabridges.mqttkafka.io",
            &PatchParams::apply("fleet-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .context("apply the CRD")?;
    wait_established(&client).await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    wait_namespaces_gone(&nss).await?;
    let ns = format!("bench-op-{}", run_id());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
    )
    .await?;
    let result = scale_in(args, &client, &ns, n, name).await;
    let _ = nss.delete(&ns, &DeleteParams::background()).await;
    // Deleting 500 bridges' objects loads the apiserver for a minute or two:
    // the next scenario must not run into it.
    let waited = wait_namespaces_gone(&nss).await;
    result.and(waited)
}

/// Waits until no namespace of an earlier operator-scale run is left.
async fn wait_namespaces_gone(nss: &Api<Namespace>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left: Vec<String> = nss
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .filter(|n| n.starts_with("bench-op-"))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("namespaces {left:?} still terminating after 300 s");
        }
        eprintln!("waiting for namespace(s) {left:?} of an operator-scale run to be deleted");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The operator refuses to start while its CRD is not served yet, and on a
/// fresh test environment the CRD was applied a moment ago.
async fn wait_established(client: &kube::Client) -> Result<()> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crd = crds.get("mqttkafkabridges.mqttkafka.io").await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the CRD mqttkafkabridges.mqttkafka.io was not Established within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scale_in(
    args: &Args,
    client: &kube::Client,
    ns: &str,
    n: usize,
    name: &str,
) -> Result<()> {
    let dir = args.out.join(name);
    std::fs::create_dir_all(&dir)?;
    let http = format!("127.0.0.1:{}", procs::free_port()?);
    let mut op = Proc::spawn(
        "operator",
        std::process::Command::new(&args.operator_bin)
            .args([
                "--namespace",
                ns,
                "--bridge-image",
                "bench/bridge-runtime:dev",
                "--http-address",
                &http,
                "--log-format",
                "text",
            ])
            .env("RUST_LOG", "warn"),
        &dir.join("operator.log"),
    )?;
    // Ready = caches synced and leading: the clock should not run while the
    // operator is still starting.
    op.wait_until(Duration::from_secs(60), || {
        matches!(procs::http_get(&http, "/readyz"), Some((200, _)))
    })?;
    let machine = machine();
    let mkbs: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);

    let cpu0 = procs::cpu_sample(op.pid())?;
    let t0 = Instant::now();
    let names: Vec<String> = (0..n).map(|i| format!("b{i:04}")).collect();
    futures::stream::iter(names.iter().map(|b| {
        let mkbs = mkbs.clone();
        async move {
            mkbs.create(&PostParams::default(), &bridge(b)?)
                .await
                .with_context(|| format!("create {b}"))
        }
    }))
    .buffer_unordered(16)
    .try_collect::<Vec<_>>()
    .await?;
    let created = t0.elapsed();

    let deadline = Duration::from_secs(180);
    let (mut all_deployments, mut all_ready) = (None, None);
    let mut last = (0, 0);
    while t0.elapsed() < deadline && all_ready.is_none() {
        op.check_alive()?;
        let (d, r) = counts(&deps, &mkbs).await?;
        if d >= n && all_deployments.is_none() {
            all_deployments = Some(t0.elapsed());
        }
        if r >= n {
            all_ready = Some(t0.elapsed());
        }
        if (d, r) != last {
            eprintln!(
                "[{:>5.1}s] deployments {d}/{n}, ready bridges {r}/{n}",
                t0.elapsed().as_secs_f64()
            );
            last = (d, r);
        }
        // Once a second: listing 500 bridges loads the same apiserver being measured.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu1 = procs::cpu_sample(op.pid())?;
    let cores = procs::cores(cpu0, cpu1);

    // One spec change with the others present: time until b0000's Deployment has a new generation.
    let target = &names[0];
    let owned = |d: &Deployment| {
        d.metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|r| &r.name == target))
    };
    let before: Vec<(String, i64)> = deps
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|d| owned(d))
        .map(|d| {
            (
                d.metadata.name.clone().unwrap_or_default(),
                d.metadata.generation.unwrap_or(0),
            )
        })
        .collect();
    let Some((dep_name, gen0)) = before.first().cloned() else {
        bail!("no Deployment owned by {target}");
    };
    let t1 = Instant::now();
    mkbs.patch(
        target,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"mqtt": {"keepAliveSeconds": 45}}})),
    )
    .await?;
    let mut change = None;
    while t1.elapsed() < Duration::from_secs(30) {
        let d = deps.get(&dep_name).await?;
        if d.metadata.generation.unwrap_or(0) > gen0 {
            change = Some(t1.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mem = procs::memory(op.pid());
    op.stop(Duration::from_secs(10));

    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let met = all_ready.is_some_and(|d| d <= Duration::from_secs(60))
        && mem.peak_rss_mib < 100.0
        && change.is_some_and(|d| d <= Duration::from_secs(2));
    let fmt = |d: Option<Duration>| {
        d.map_or("not reached".to_owned(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        })
    };
    table(
        &format!("{name}: {n} bridges (1 replica each), operator as a separate process"),
        &[
            (
                "bridges created (API calls)".into(),
                format!("{:.1} s", created.as_secs_f64()),
            ),
            ("all Deployments exist".into(), fmt(all_deployments)),
            ("all bridges Ready".into(), fmt(all_ready)),
            (
                "operator CPU until then".into(),
                format!("{cores:.2} cores"),
            ),
            (
                "operator peak RSS".into(),
                format!("{:.1} MiB", mem.peak_rss_mib),
            ),
            (
                "spec change -> new Deployment generation".into(),
                change.map_or("not within 30 s".into(), |d| {
                    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
                }),
            ),
            (
                "target (Ready <= 60 s, RSS < 100 MiB, change <= 2 s)".into(),
                if met { "met".into() } else { "NOT met".into() },
            ),
        ],
    );
    write_result(
        args,
        name,
        &json!({
            "scenario": name, "machine": machine, "bridges": n,
            "create_s": created.as_secs_f64(),
            "all_deployments_s": secs(all_deployments), "all_ready_s": secs(all_ready),
            "operator_cpu_cores": cores, "operator_memory": mem,
            "change_to_new_generation_s": secs(change), "targets_met": met,
        }),
    )
}
