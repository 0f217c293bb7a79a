//! Leader election on a Lease against the real apiserver: of two operators
//! only the leader reconciles; a stopped leader hands over to the standby;
//! an expired lease is taken over, judged by the local clock whatever time
//! its holder wrote; a leader that loses its lease stops. Both replicas run
//! as the chart's ServiceAccount with its RBAC (leader election included).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use crds::MqttKafkaBridge;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const CURRENT: &str = include_str!("../../deploy/examples/current-sensor.yaml");
const LEASE: &str = "mqtt-kafka-operator";
/// The operators' lease duration (the binary's default).
const LEASE_DURATION: Duration = Duration::from_secs(15);

struct Replica {
    identity: String,
    http: SocketAddr,
    operator: Operator,
}

fn start(client: &Client, ns: &str, identity: &str) -> Replica {
    let http = free_address();
    let mut config = test_config(ns);
    config.http_address = Some(http);
    config.instance = identity.into();
    config.leader_election = Some(operator::leader::LeaseSettings {
        namespace: ns.into(),
        name: LEASE.into(),
        identity: identity.into(),
        duration: LEASE_DURATION,
    });
    Replica {
        identity: identity.into(),
        http,
        operator: Operator::start_with(client.clone(), config),
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt(LEASE).await.ok()??.spec?.holder_identity
}

async fn reconciles(http: SocketAddr) -> f64 {
    let (_, text) = http_get(http, "/metrics").await.expect("/metrics");
    metric(&text, "mqtt_kafka_operator_reconciles_total", "").expect("reconciles_total")
}

async fn readyz(http: SocketAddr) -> u16 {
    http_get(http, "/readyz").await.expect("/readyz").0
}

/// Instances that reported events in `ns`.
async fn reporters(client: &Client, ns: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut r: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("mqtt-kafka-operator"))
        .filter_map(|e| e.reporting_instance)
        .collect();
    r.sort();
    r.dedup();
    r
}

#[tokio::test]
async fn only_the_leader_reconciles_and_the_standby_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "leader").await;
    let operator_client = operator_client(&client, &ns).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    // A replica that crashed while leading: its lease must expire first.
    // Its clock ran an hour ahead: the renewal time it wrote is in the
    // future, and yet the lease expires 5 s after the others first saw it.
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("crashed-replica".into()),
                    lease_duration_seconds: Some(5),
                    renew_time: Some(MicroTime(Timestamp::now() + SignedDuration::from_hours(1))),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    let a = start(&operator_client, &ns, "replica-a");
    let b = start(&operator_client, &ns, "replica-b");
    let leader = wait_for("a replica to lead", Duration::from_secs(60), || async {
        holder(&leases)
            .await
            .filter(|h| h == &a.identity || h == &b.identity)
    })
    .await;
    let (leader, standby) = if leader == a.identity { (a, b) } else { (b, a) };

    apply_bridge(&client, &ns, CURRENT).await;
    wait_ready(&client, &ns, "current-sensor", "True", "Available").await;
    assert!(reconciles(leader.http).await > 0.0);
    assert_eq!(
        reconciles(standby.http).await,
        0.0,
        "the standby reconciled"
    );
    assert_eq!(readyz(leader.http).await, 200);
    assert_eq!(readyz(standby.http).await, 503, "a standby is not ready");
    assert_eq!(reporters(&client, &ns).await, vec![leader.identity.clone()]);

    // The leader stops: the standby takes over within the lease duration
    // (the lease is released, so it need not wait for it to expire).
    leader.operator.stop().await.unwrap();
    wait_for("the standby to take the lease", LEASE_DURATION, || async {
        (holder(&leases).await.as_ref() == Some(&standby.identity)).then_some(())
    })
    .await;
    let bridges: Api<MqttKafkaBridge> = Api::namespaced(client.clone(), &ns);
    bridges
        .patch_scale(
            "current-sensor",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    wait_for("scale to zero", Duration::from_secs(60), || async {
        deployments(&client, &ns, "current-sensor")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    wait_ready(&client, &ns, "current-sensor", "True", "Available").await;
    assert!(reconciles(standby.http).await > 0.0);
    assert_eq!(readyz(standby.http).await, 200);

    // Someone else takes the lease (e.g. after a network partition): the
    // old leader stops reconciling and exits with an error.
    let mut lease = leases.get(LEASE).await.unwrap();
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace(LEASE, &PostParams::default(), &lease)
        .await
        .unwrap();
    let ended = standby.operator.join(LEASE_DURATION * 2).await;
    assert!(
        matches!(ended, Err(operator::Error::LeadershipLost)),
        "{ended:?}"
    );
    assert_eq!(holder(&leases).await.as_deref(), Some("intruder"));
    drop_namespace(&client, &ns).await;
}
