//! What users see: `BridgeFailing` with a crashed pod's termination message,
//! the `kubectl get mkb` columns, and `kubectl explain` descriptions.
//!
//! kwok never crashes a container, so the test writes the crash into the fake
//! pod's status itself. kwok's default stages only set a pod's status while
//! it has no pod IP, so a status written afterwards is left alone.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const CURRENT: &str = include_str!("../../deploy/examples/current-sensor.yaml");

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run kubectl");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `kubectl get mkb <name>` as (header cells, row cells).
fn get_mkb(ns: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let text = run(kubectl().args(["get", "mkb", name, "-n", ns]));
    let mut lines = text
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>());
    (lines.next().unwrap(), lines.next().unwrap())
}

/// The bridge container's status as the kubelet reports a crash loop, or
/// as it reports a running, ready container.
fn bridge_status(image: &str, crashed: bool) -> serde_json::Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let ready = if crashed { "False" } else { "True" };
    let state = if crashed {
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}})
    } else {
        json!({"running": {"startedAt": now}})
    };
    json!({"status": {
        "conditions": [
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
        ],
        "containerStatuses": [{
            "name": "bridge", "image": image, "imageID": "", "ready": !crashed,
            "started": !crashed, "restartCount": 3, "state": state,
            "lastState": {"terminated": {
                "exitCode": 1, "reason": "Error",
                "message": "MQTT authentication refused\n",
                "startedAt": now, "finishedAt": now,
            }},
        }],
    }})
}

#[tokio::test]
async fn a_crashing_pod_makes_the_bridge_fail_with_its_message() {
    let client = client().await;
    let ns = namespace(&client, "failing").await;
    let op = Operator::start(&client, &ns).await;
    let name = "current-sensor";
    apply_bridge(&client, &ns, CURRENT).await;
    wait_ready(&client, &ns, name, "True", "Available").await;

    let (header, row) = get_mkb(&ns, name);
    assert_eq!(header, ["NAME", "READY", "REPLICAS", "REASON", "AGE"]);
    assert_eq!(row[..4], [name, "True", "1/1", "Available"]);
    assert!(
        row[4].ends_with('s') || row[4].ends_with('m'),
        "age {row:?}"
    );

    // The running pod (kwok has given it an IP, so it is done with it).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = ListParams::default().labels("mqttkafka.io/bridge=current-sensor");
    let pod = wait_for(
        "the bridge pod running",
        Duration::from_secs(60),
        || async {
            let items = pods.list(&selector).await.ok()?.items;
            let pod = items.into_iter().next()?;
            pod.status.as_ref()?.pod_ip.as_ref()?;
            Some(pod)
        },
    )
    .await;
    let image = pod.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(bridge_status(&image, true)),
    )
    .await
    .unwrap();

    let message = wait_ready(&client, &ns, name, "False", "BridgeFailing").await;
    assert_eq!(
        message,
        format!("pod {}: MQTT authentication refused", pod.name_any())
    );
    // The crash is still there a while later (kwok left the status alone).
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_ready(&client, &ns, name, "False", "BridgeFailing").await;
    let row = wait_for(
        "kubectl showing the failure",
        Duration::from_secs(30),
        || async {
            let (h, r) = get_mkb(&ns, name);
            (h.len() == r.len() && r[1..4] == ["False", "0/1", "BridgeFailing"]).then_some(r)
        },
    )
    .await;
    assert_eq!(row[0], name);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let failing = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("BridgeFailing"))
        .expect("a BridgeFailing event");
    assert_eq!(failing.type_.as_deref(), Some("Warning"));
    assert!(
        failing
            .note
            .as_deref()
            .is_some_and(|n| n.contains("MQTT authentication refused")),
        "{failing:?}"
    );

    // The container comes back and passes readiness: the old termination
    // is history, the bridge is Ready again.
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(bridge_status(&image, false)),
    )
    .await
    .unwrap();
    wait_ready(&client, &ns, name, "True", "Available").await;
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

/// `kubectl explain` output of `path`: its field names, and those without
/// a description.
fn explain(path: &str) -> (Vec<(String, String)>, Vec<String>) {
    let text = run(kubectl().args(["explain", path]));
    let description = text
        .split_once("DESCRIPTION:")
        .map(|(_, d)| d.split("FIELDS:").next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    assert!(
        !description.is_empty() && description != "<empty>",
        "{path} has no description:\n{text}"
    );
    let mut fields = Vec::new();
    let mut undescribed = Vec::new();
    let lines: Vec<&str> = text
        .split_once("FIELDS:")
        .map(|(_, f)| f.lines().collect())
        .unwrap_or_default();
    for (i, line) in lines.iter().enumerate() {
        // A field is "  name\t<type>"; its description the indented lines after it.
        let Some((field, kind)) = line
            .strip_prefix("  ")
            .filter(|l| !l.starts_with(' '))
            .and_then(|l| l.split_once('\t'))
        else {
            continue;
        };
        let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or("");
        if next.is_empty() || next.starts_with('<') {
            undescribed.push(field.to_string());
        }
        fields.push((field.to_string(), kind.to_string()));
    }
    (fields, undescribed)
}

#[tokio::test]
async fn kubectl_explain_describes_every_route_field() {
    // The CRD must be installed and served (OpenAPI published) first.
    let _client = client().await;
    let (fields, undescribed) = wait_for(
        "kubectl explain mqttkafkabridge.spec.routes",
        Duration::from_secs(60),
        || async {
            let out = kubectl()
                .args(["explain", "mqttkafkabridge.spec.routes"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| explain("mqttkafkabridge.spec.routes"))
        },
    )
    .await;
    let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
    for expected in ["name", "mqttToKafka", "kafkaToMqtt", "deadLetterTopic"] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    assert!(undescribed.is_empty(), "no description: {undescribed:?}");

    // One level further down, every object's fields are described too.
    let mut missing = Vec::new();
    let mut queue: Vec<String> = fields
        .iter()
        .filter(|(_, kind)| kind.contains("Object"))
        .map(|(f, _)| format!("mkb.spec.routes.{f}"))
        .collect();
    let mut explained = 0;
    while let Some(path) = queue.pop() {
        let (fields, undescribed) = explain(&path);
        explained += 1;
        missing.extend(undescribed.into_iter().map(|f| format!("{path}.{f}")));
        // Bounded: the route types nest two levels deep.
        if path.matches('.').count() < 4 {
            queue.extend(
                fields
                    .iter()
                    .filter(|(_, kind)| kind.contains("Object"))
                    .map(|(f, _)| format!("{path}.{f}")),
            );
        }
    }
    assert!(explained >= 2, "explained {explained} objects");
    assert!(
        missing.is_empty(),
        "fields without description: {missing:?}"
    );
}
