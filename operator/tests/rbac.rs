//! The operator reconciles with the RBAC that ships in `deploy/rbac.yaml`,
//! not as admin: the ClusterRole is bound in a test namespace to a
//! ServiceAccount, and the operator's client impersonates it.

mod common;

use common::*;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;

#[tokio::test]
async fn operator_works_with_the_shipped_least_privilege_role() {
    let admin = client().await;
    let ns = namespace(&admin, "rbac").await;

    // The ClusterRole exactly as shipped.
    let role = serde_yaml::Deserializer::from_str(include_str!("../../deploy/rbac.yaml"))
        .map(serde_yaml::Value::deserialize)
        .filter_map(Result::ok)
        .find(|d| d["kind"] == "ClusterRole")
        .expect("ClusterRole in deploy/rbac.yaml");
    let role: ClusterRole = serde_yaml::from_value(role).unwrap();
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles
        .patch(
            "mqtt-kafka-operator",
            &PatchParams::apply(USER).force(),
            &Patch::Apply(&role),
        )
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    sas.patch(
        "mqtt-kafka-operator",
        &PatchParams::apply(USER).force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "mqtt-kafka-operator"}})),
    )
    .await
    .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &ns);
    bindings
        .patch(
            "mqtt-kafka-operator",
            &PatchParams::apply(USER).force(),
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "mqtt-kafka-operator"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "mqtt-kafka-operator"},
                "subjects": [{"kind": "ServiceAccount", "name": "mqtt-kafka-operator",
                    "namespace": ns}]
            })),
        )
        .await
        .unwrap();

    let path = std::path::PathBuf::from(testenv::var("KUBECONFIG"));
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:mqtt-kafka-operator"));
    let restricted = Client::try_from(config).unwrap();

    // The role really is restricted: no Secrets in other namespaces.
    let elsewhere: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(restricted.clone(), "default");
    assert!(elsewhere.list(&Default::default()).await.is_err());

    let op = Operator::start(restricted, &ns);
    put_secret(&admin, &ns, "hivemq-credentials", &[("password", "pw")]).await;
    put_secret(&admin, &ns, "confluent-credentials", &[("api-secret", "s")]).await;
    apply_bridge(
        &admin,
        &ns,
        include_str!("../../deploy/examples/hivemq-confluent.yaml"),
    )
    .await;
    wait_ready(&admin, &ns, "hivemq-confluent", "True", "Available").await;
    // Scale-down needs delete; events need create.
    let bridges: Api<crds::MqttKafkaBridge> = Api::namespaced(admin.clone(), &ns);
    bridges
        .patch_scale(
            "hivemq-confluent",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    wait_for(
        "scale-down under RBAC",
        std::time::Duration::from_secs(60),
        || async { (deployments(&admin, &ns, "hivemq-confluent").await.len() == 1).then_some(()) },
    )
    .await;
    wait_ready(&admin, &ns, "hivemq-confluent", "True", "Available").await;
    op.stop().await.unwrap();
    drop_namespace(&admin, &ns).await;
}
