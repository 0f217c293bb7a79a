//! The committed CRD YAML must be what the Rust types generate.
//! Regenerate with `UPDATE_CRD=1 cargo test -p crds --test crd_yaml`.

use std::path::PathBuf;

use kube::CustomResourceExt;

#[test]
fn committed_crd_matches_the_types() {
    let generated = crds::crd_yaml().expect("CRD serializes");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mqttkafkabridges.yaml");
    if std::env::var_os("UPDATE_CRD").is_some() {
        std::fs::write(&path, &generated).expect("write CRD YAML");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date: run `UPDATE_CRD=1 cargo test -p crds --test crd_yaml` and commit it",
        path.display()
    );
}

#[test]
fn crd_has_the_api_shape() {
    let crd = crds::MqttKafkaBridge::crd();
    assert_eq!(crd.spec.group, "mqttkafka.io");
    assert_eq!(crd.spec.names.plural, "mqttkafkabridges");
    assert_eq!(crd.spec.names.short_names, Some(vec!["mkb".to_string()]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    let sub = v.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    assert!(sub.scale.is_some());
}
