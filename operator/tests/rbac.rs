//! The RBAC the Helm chart ships: the same rules cluster-wide (the default,
//! also `deploy/rbac.yaml`) and in one `watchNamespace`, and a
//! ServiceAccount holding them is refused what the operator never needs.
//! That it is enough for everything the operator does is shown by the other
//! tests of this crate, which all run the operator with it.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::json;

fn rules_of(docs: &[serde_yaml::Value], kind: &str) -> serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == RELEASE)
        .unwrap_or_else(|| panic!("{kind} {RELEASE} in {docs:?}"))["rules"]
        .clone()
}

#[tokio::test]
async fn the_chart_grants_the_same_rules_cluster_wide_and_in_one_namespace() {
    let admin = client().await;
    let version = kube_version(&admin).await;
    let cluster_wide = render_chart_rbac(&version, "mqtt-kafka-system", &[]);
    let one_namespace =
        render_chart_rbac(&version, "mqtt-kafka-system", &["watchNamespace=sensors"]);
    let shipped: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(include_str!("../../deploy/rbac.yaml"))
            .map(serde_yaml::Value::deserialize)
            .filter_map(Result::ok)
            .collect();
    let rules = rules_of(&cluster_wide, "ClusterRole");
    assert_eq!(rules, rules_of(&one_namespace, "Role"));
    assert_eq!(rules, rules_of(&shipped, "ClusterRole"));
    let role = one_namespace.iter().find(|d| d["kind"] == "Role").unwrap();
    assert_eq!(role["metadata"]["namespace"], "sensors");
}

#[tokio::test]
async fn the_service_account_is_refused_what_the_operator_never_needs() {
    let admin = client().await;
    let ns = namespace(&admin, "rbac").await;
    let operator = operator_client(&admin, &ns).await;
    put_secret(&admin, &ns, "creds", &[("password", "pw")]).await;
    let forbidden = |r: Result<_, kube::Error>, what: &str| match r {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: expected 403, got {other:?}"),
    };

    // Secrets: read in its namespace, never written, nothing elsewhere.
    let secrets: Api<Secret> = Api::namespaced(operator.clone(), &ns);
    secrets.get("creds").await.unwrap();
    forbidden(
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "planted"}, "stringData": {"k": "v"}
                }))
                .unwrap(),
            )
            .await
            .map(|_| ()),
        "create a Secret",
    );
    forbidden(
        secrets
            .delete("creds", &DeleteParams::default())
            .await
            .map(|_| ()),
        "delete a Secret",
    );
    let elsewhere: Api<Secret> = Api::namespaced(operator.clone(), "default");
    forbidden(
        elsewhere.list(&Default::default()).await.map(|_| ()),
        "list Secrets of another namespace",
    );

    // Services are never deleted (an old ClusterIP Service is kept).
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "someone-elses"},
                "spec": {"ports": [{"port": 80}]}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let as_operator: Api<Service> = Api::namespaced(operator.clone(), &ns);
    forbidden(
        as_operator
            .delete("someone-elses", &DeleteParams::default())
            .await
            .map(|_| ()),
        "delete a Service",
    );

    // A bridge's spec is the user's: only its status is written.
    apply_bridge(
        &admin,
        &ns,
        include_str!("../../deploy/examples/current-sensor.yaml"),
    )
    .await;
    let bridges: Api<crds::MqttKafkaBridge> = Api::namespaced(operator.clone(), &ns);
    forbidden(
        bridges
            .patch(
                "current-sensor",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 3}})),
            )
            .await
            .map(|_| ()),
        "patch a bridge's spec",
    );
    drop_namespace(&admin, &ns).await;
}
