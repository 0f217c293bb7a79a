//! The test control plane is a real Kubernetes: it stores objects, runs
//! controllers, schedules Pods onto the fake node and reports Deployments available.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};

#[tokio::test]
async fn namespace_can_be_created_and_read_back() {
    let client = testenv::kube_client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = testenv::unique_name("smoke-ns");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "purpose": "smoke" } }
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let read = namespaces.get(&name).await.unwrap();
    assert_eq!(read.metadata.labels.unwrap()["purpose"], "smoke");
    assert!(read.metadata.uid.is_some(), "the apiserver assigns a uid");
    namespaces
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn apiserver_reports_its_real_version() {
    let client = testenv::kube_client().await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    assert!(version.minor.parse::<u32>().unwrap() >= 33, "{version:?}");
    assert!(version.git_version.starts_with("v1."), "{version:?}");
}

#[tokio::test]
async fn deployment_reaches_its_available_replicas_through_the_fake_node() {
    let client = testenv::kube_client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let name = testenv::unique_name("smoke-deploy");
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "main", "image": "example.invalid/none:1" }] }
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let available = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let d = deployments.get(&name).await.unwrap();
            let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            if available == 2 {
                return available;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await
    .expect("the Deployment never reported 2 available replicas: are kube-controller-manager, kube-scheduler and kwok running?");
    assert_eq!(available, 2);
    deployments
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}
