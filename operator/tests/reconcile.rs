//! The reconciler against the real control plane (kube-apiserver,
//! controller-manager, scheduler, kwok node): each test has its own namespace
//! and its own in-process operator watching only that namespace, signed in
//! with a token of the Helm chart's ServiceAccount and holding only the
//! chart's RBAC, so every API call the operator makes must be allowed by it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use crds::MqttKafkaBridge;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const CURRENT: &str = include_str!("../../deploy/examples/current-sensor.yaml");
const HIVEMQ: &str = include_str!("../../deploy/examples/hivemq-confluent.yaml");
const FLEET: &str = include_str!("../../deploy/examples/sensor-fleet.yaml");

/// Secret values no output may contain.
const MQTT_PASSWORD: &str = "mqtt-pw-7f3a91";
const KAFKA_SECRET: &str = "kafka-secret-c0ffee";

/// Neither the Secret values nor anything a reader could compute from a
/// guess of them (encodings, digests, the concatenations once hashed) is
/// in anything the operator wrote in `ns`.
async fn assert_nothing_derived_from_secrets(client: &kube::Client, ns: &str) {
    let forms = secret_forms(&[
        ("hivemq-credentials", "password", MQTT_PASSWORD),
        ("confluent-credentials", "api-secret", KAFKA_SECRET),
    ]);
    assert!(forms.len() > 100, "{} forms", forms.len());
    let output = operator_output(client, ns).await;
    assert_no_form(&format!("the objects in {ns}"), &output, &forms);
}

#[tokio::test]
async fn examples_produce_their_children_and_become_ready() {
    let client = client().await;
    let ns = namespace(&client, "examples").await;
    let op = Operator::start(&client, &ns).await;
    put_secret(
        &client,
        &ns,
        "hivemq-credentials",
        &[("password", MQTT_PASSWORD)],
    )
    .await;
    put_secret(
        &client,
        &ns,
        "confluent-credentials",
        &[("api-secret", KAFKA_SECRET)],
    )
    .await;

    for (yaml, name, replicas) in [
        (CURRENT, "current-sensor", 1),
        (HIVEMQ, "hivemq-confluent", 2),
        (FLEET, "sensor-fleet", 2),
    ] {
        apply_bridge(&client, &ns, yaml).await;
        wait_ready(&client, &ns, name, "True", "Available").await;

        let cm = current_config_map(&client, &ns, name).await;
        let config = &cm.data.unwrap()["bridge.yaml"];
        let parsed: crds::BridgeConfig = serde_yaml::from_str(config).unwrap();
        assert_eq!(parsed.mqtt.client_id_prefix, name);

        let ds = deployments(&client, &ns, name).await;
        assert_eq!(ds.len(), replicas, "{name}: one Deployment per slot");
        let slots: BTreeSet<String> = ds.iter().filter_map(|d| env(d, "BRIDGE_SLOT")).collect();
        assert_eq!(slots.len(), replicas, "{name}: distinct slots");
        for d in &ds {
            assert_eq!(d.owner_references()[0].kind, "MqttKafkaBridge");
        }
        let svc: Api<Service> = Api::namespaced(client.clone(), &ns);
        svc.get(&format!("{name}-metrics")).await.unwrap();
    }
    let text = current_config_map(&client, &ns, "hivemq-confluent")
        .await
        .data
        .unwrap()["bridge.yaml"]
        .clone();
    assert!(text.contains("/etc/bridge/secrets/hivemq-credentials/password"));
    assert!(text.contains("/etc/bridge/secrets/confluent-credentials/api-secret"));

    // kubectl wait returns for a Ready bridge.
    let status = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            &testenv::var("KUBECONFIG"),
            "-n",
            &ns,
            "wait",
            "--for=condition=Ready",
            "mkb/sensor-fleet",
            "--timeout=30s",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "kubectl wait");
    assert_nothing_derived_from_secrets(&client, &ns).await;
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

async fn replica_sets(client: &kube::Client, ns: &str, bridge: &str) -> usize {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("mqttkafka.io/bridge={bridge}")))
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test]
async fn changes_roll_the_deployment_and_nothing_else_does() {
    let client = client().await;
    let ns = namespace(&client, "rollout").await;
    let op = Operator::start(&client, &ns).await;
    put_secret(
        &client,
        &ns,
        "hivemq-credentials",
        &[("password", MQTT_PASSWORD)],
    )
    .await;
    put_secret(
        &client,
        &ns,
        "confluent-credentials",
        &[("api-secret", KAFKA_SECRET)],
    )
    .await;
    let name = "hivemq-confluent";
    apply_bridge(&client, &ns, &HIVEMQ.replace("replicas: 2", "replicas: 1")).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let bridges: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // Unchanged: re-apply and poke the bridge (a metadata change triggers a
    // reconcile); no Deployment write, no new ReplicaSet, no status write.
    let d0 = deploy.get(&format!("{name}-0")).await.unwrap();
    let rs0 = replica_sets(&client, &ns, name).await;
    apply_bridge(&client, &ns, &HIVEMQ.replace("replicas: 2", "replicas: 1")).await;
    bridges
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    let poked = bridges.get(name).await.unwrap().resource_version();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        bridges.get(name).await.unwrap().resource_version(),
        poked,
        "status written"
    );
    let d1 = deploy.get(&format!("{name}-0")).await.unwrap();
    assert_eq!(
        d0.resource_version(),
        d1.resource_version(),
        "Deployment written"
    );
    assert_eq!(replica_sets(&client, &ns, name).await, rs0);

    // A route change rolls.
    let changed = HIVEMQ.replace("replicas: 2", "replicas: 1").replace(
        "kafkaTopic: sensor-temperature",
        "kafkaTopic: sensor-temperature-v2",
    );
    apply_bridge(&client, &ns, &changed).await;
    wait_for(
        "new ReplicaSet after route change",
        Duration::from_secs(60),
        || async { (replica_sets(&client, &ns, name).await > rs0).then_some(()) },
    )
    .await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let rs1 = replica_sets(&client, &ns, name).await;

    // A change of a referenced Secret's data rolls.
    put_secret(
        &client,
        &ns,
        "hivemq-credentials",
        &[("password", "rotated-pw-123")],
    )
    .await;
    wait_for(
        "new ReplicaSet after Secret change",
        Duration::from_secs(60),
        || async { (replica_sets(&client, &ns, name).await > rs1).then_some(()) },
    )
    .await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let rs2 = replica_sets(&client, &ns, name).await;
    let annotation = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[operator::build::SECRET_VERSIONS_ANNOTATION]
            .clone()
    };
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let rotated = secrets.get("hivemq-credentials").await.unwrap();
    let versions = annotation(&deploy.get(&format!("{name}-0")).await.unwrap());
    assert!(
        versions.contains(&format!(
            "hivemq-credentials={}/{}",
            rotated.uid().unwrap(),
            rotated.resource_version().unwrap()
        )),
        "{versions}"
    );

    // Writing the same data again changes nothing on the server, and a
    // Secret the bridge does not reference may change at will: no rollout.
    put_secret(
        &client,
        &ns,
        "hivemq-credentials",
        &[("password", "rotated-pw-123")],
    )
    .await;
    put_secret(&client, &ns, "unrelated", &[("x", "1")]).await;
    put_secret(&client, &ns, "unrelated", &[("x", "2")]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replica_sets(&client, &ns, name).await, rs2);
    assert_eq!(
        annotation(&deploy.get(&format!("{name}-0")).await.unwrap()),
        versions
    );
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

#[tokio::test]
async fn missing_secret_then_recovers() {
    let client = client().await;
    let ns = namespace(&client, "secrets").await;
    let op = Operator::start(&client, &ns).await;
    let name = "hivemq-confluent";
    apply_bridge(&client, &ns, HIVEMQ).await;
    let msg = wait_ready(&client, &ns, name, "False", "SecretNotFound").await;
    assert!(msg.contains("confluent-credentials") || msg.contains("hivemq-credentials"));
    assert!(deployments(&client, &ns, name).await.is_empty());

    put_secret(
        &client,
        &ns,
        "hivemq-credentials",
        &[("password", MQTT_PASSWORD)],
    )
    .await;
    put_secret(
        &client,
        &ns,
        "confluent-credentials",
        &[("wrong-key", KAFKA_SECRET)],
    )
    .await;
    let msg = wait_ready(&client, &ns, name, "False", "SecretKeyNotFound").await;
    assert!(msg.contains("api-secret"), "{msg}");

    put_secret(
        &client,
        &ns,
        "confluent-credentials",
        &[("api-secret", KAFKA_SECRET)],
    )
    .await;
    wait_ready(&client, &ns, name, "True", "Available").await;

    // A warning event names the problem, never the value.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "SecretNotFound"), "{reasons:?}");
    assert_nothing_derived_from_secrets(&client, &ns).await;
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

#[tokio::test]
async fn invalid_spec_leaves_the_running_deployment_alone() {
    let client = client().await;
    let ns = namespace(&client, "invalid").await;
    let op = Operator::start(&client, &ns).await;
    let name = "sensor-fleet";
    apply_bridge(&client, &ns, FLEET).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let before: Vec<Option<String>> = deployments(&client, &ns, name)
        .await
        .iter()
        .map(|d| d.resource_version())
        .collect();
    // A spec that passed an older CRD (one without the rule refusing
    // properties the bridge manages; admission now refuses it): the
    // operator's own check, the same rules as bridge-runtime's, reports it.
    let invalid = FLEET.replace(
        "  kafka:\n",
        "  kafka:\n    properties:\n      linger.ms: \"5\"\n",
    );
    assert_ne!(invalid, FLEET);
    apply_bridge_past_rule(
        &client,
        &ns,
        &invalid,
        &bridge_core::rules::managed_property_rule(),
    )
    .await;
    let msg = wait_ready(&client, &ns, name, "False", "InvalidSpec").await;
    assert!(
        msg.contains("spec.kafka.properties") && msg.contains("linger.ms"),
        "{msg}"
    );
    let after: Vec<Option<String>> = deployments(&client, &ns, name)
        .await
        .iter()
        .map(|d| d.resource_version())
        .collect();
    assert_eq!(before, after);
    apply_bridge(&client, &ns, FLEET).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

#[tokio::test]
async fn scale_keeps_slots_stable_and_unique() {
    let client = client().await;
    let ns = namespace(&client, "scale").await;
    let op = Operator::start(&client, &ns).await;
    let name = "sensor-fleet";
    apply_bridge(&client, &ns, FLEET).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let slot0_uid = deployments(&client, &ns, name).await[0].uid();

    // kubectl scale goes through the scale subresource.
    let status = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            &testenv::var("KUBECONFIG"),
            "-n",
            &ns,
            "scale",
            "mkb/sensor-fleet",
            "--replicas=4",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "kubectl scale");
    wait_ready(&client, &ns, name, "True", "Available").await;
    let ds = deployments(&client, &ns, name).await;
    let slots: Vec<String> = ds.iter().filter_map(|d| env(d, "BRIDGE_SLOT")).collect();
    assert_eq!(slots, ["0", "1", "2", "3"]);
    assert_eq!(ds[0].uid(), slot0_uid, "slot 0 untouched by scale-up");
    let bridges: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
    let st = bridges.get(name).await.unwrap().status.unwrap();
    assert_eq!((st.replicas, st.ready_replicas), (4, 4));
    assert_eq!(
        st.label_selector.as_deref(),
        Some("mqttkafka.io/bridge=sensor-fleet")
    );
    let scale = bridges.get_scale(name).await.unwrap();
    assert_eq!(scale.status.unwrap().replicas, 4);

    // Scale down removes the highest slots only.
    bridges
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    wait_for("scale-down to 1", Duration::from_secs(60), || async {
        (deployments(&client, &ns, name).await.len() == 1).then_some(())
    })
    .await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let ds = deployments(&client, &ns, name).await;
    assert_eq!(ds[0].uid(), slot0_uid);
    assert_eq!(env(&ds[0], "BRIDGE_SLOT").as_deref(), Some("0"));

    // A rollout keeps the slot and never overlaps pods of one slot.
    let changed = FLEET
        .replace("replicas: 2", "replicas: 1")
        .replace("lingerMs: 10", "lingerMs: 20");
    apply_bridge(&client, &ns, &changed).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let ds = deployments(&client, &ns, name).await;
    assert_eq!(ds[0].uid(), slot0_uid);
    let strategy = ds[0].spec.as_ref().unwrap().strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

/// A metrics Service left by an operator version before it was headless
/// keeps its ClusterIP (which cannot be removed): the operator applies it
/// without one instead of deleting it, which the chart's RBAC does not
/// allow, and the bridge's Deployments still follow spec changes.
#[tokio::test]
async fn a_metrics_service_with_a_cluster_ip_is_kept_and_rollouts_go_on() {
    let client = client().await;
    let ns = namespace(&client, "headless").await;
    let name = "current-sensor";
    let svc_name = operator::build::service_name(name);
    // As an earlier operator version left it: a ClusterIP Service.
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let old = svcs
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": svc_name},
                "spec": {"ports": [{"name": "metrics", "port": 8080}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let op = Operator::start(&client, &ns).await;
    apply_bridge(&client, &ns, CURRENT).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let svc = svcs.get(&svc_name).await.unwrap();
    assert_eq!(svc.uid(), old.uid(), "the Service was re-created");
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip, old.spec.unwrap().cluster_ip);
    assert_eq!(
        spec.selector
            .unwrap()
            .get("mqttkafka.io/bridge")
            .map(String::as_str),
        Some(name),
        "the operator's fields were applied"
    );

    // A spec change still reaches the Deployment.
    let before = deployments(&client, &ns, name).await[0].metadata.generation;
    apply_bridge(
        &client,
        &ns,
        &CURRENT.replace("replicas: 1", "replicas: 1\n  image: bridge:v2"),
    )
    .await;
    wait_for(
        "the new image rolled out",
        Duration::from_secs(60),
        || async {
            let d = deployments(&client, &ns, name).await.into_iter().next()?;
            let image = d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                .image
                .clone();
            (d.metadata.generation > before && image.as_deref() == Some("bridge:v2")).then_some(())
        },
    )
    .await;
    wait_ready(&client, &ns, name, "True", "Available").await;

    // Deleted by hand, it comes back headless.
    svcs.delete(&svc_name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("a headless Service", Duration::from_secs(60), || async {
        let svc = svcs.get_opt(&svc_name).await.ok()??;
        (svc.spec?.cluster_ip.as_deref() == Some("None")).then_some(())
    })
    .await;
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

#[tokio::test]
async fn hand_edits_of_children_are_undone() {
    let client = client().await;
    let ns = namespace(&client, "drift").await;
    let op = Operator::start(&client, &ns).await;
    let name = "current-sensor";
    apply_bridge(&client, &ns, CURRENT).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let deploy: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let dep_name = operator::build::deployment_name(name, 0);
    let cm_name = current_config_map(&client, &ns, name)
        .await
        .metadata
        .name
        .unwrap();
    let cm_before = cms.get(&cm_name).await.unwrap().data;

    // Someone scales the slot Deployment to 0 and edits the configuration.
    deploy
        .patch(
            &dep_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    cms.patch(
        &cm_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"bridge.yaml": "edited: by hand"}})),
    )
    .await
    .unwrap();

    wait_for(
        "the operator to undo the edits",
        Duration::from_secs(30),
        || async {
            let replicas = deploy.get(&dep_name).await.ok()?.spec?.replicas;
            let data = cms.get(&cm_name).await.ok()?.data;
            (replicas == Some(1) && data == cm_before).then_some(())
        },
    )
    .await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

#[tokio::test]
async fn ready_follows_the_deployment() {
    let client = client().await;
    let ns = namespace(&client, "ready").await;
    let op = Operator::start(&client, &ns).await;
    let name = "current-sensor";
    // No node matches: the pod stays Pending, the Deployment unavailable.
    let unschedulable = CURRENT.replace(
        "  routes:",
        "  template:\n    pod:\n      nodeSelector:\n        no-such-node: \"true\"\n  routes:",
    );
    apply_bridge(&client, &ns, &unschedulable).await;
    wait_ready(&client, &ns, name, "False", "ReplicasUnavailable").await;
    apply_bridge(&client, &ns, CURRENT).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

#[tokio::test]
async fn deleting_the_bridge_deletes_its_children() {
    let client = client().await;
    let ns = namespace(&client, "gc").await;
    let op = Operator::start(&client, &ns).await;
    let name = "current-sensor";
    apply_bridge(&client, &ns, CURRENT).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let bridges: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
    bridges
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    wait_for("garbage collection", Duration::from_secs(60), || async {
        let gone = deployments(&client, &ns, name).await.is_empty()
            && config_map_names(&client, &ns, name).await.is_empty()
            && svcs.get_opt("current-sensor-metrics").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}

/// A bridge being deleted (here held by a finalizer while the garbage
/// collector removes its children in the foreground) is left alone: its
/// children are not applied again.
#[tokio::test]
async fn a_bridge_being_deleted_gets_no_new_children() {
    let client = client().await;
    let ns = namespace(&client, "deleting").await;
    let op = Operator::start(&client, &ns).await;
    let name = "current-sensor";
    apply_bridge(&client, &ns, CURRENT).await;
    wait_ready(&client, &ns, name, "True", "Available").await;
    let bridges: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
    bridges
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
        )
        .await
        .unwrap();
    bridges
        .delete(name, &DeleteParams::foreground())
        .await
        .unwrap();
    let children_gone = || async {
        deployments(&client, &ns, name).await.is_empty()
            && config_map_names(&client, &ns, name).await.is_empty()
    };
    wait_for("garbage collection", Duration::from_secs(60), || async {
        children_gone().await.then_some(())
    })
    .await;
    // The deletions trigger reconciles of the bridge; an edit another.
    bridges
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(children_gone().await, "children re-created while deleting");
    }
    bridges
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    op.stop().await.unwrap();
    drop_namespace(&client, &ns).await;
}
