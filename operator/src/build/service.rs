//! The metrics Service: one stable name for Prometheus to scrape every slot.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{BRIDGE_LABEL, HTTP_PORT, Owner, service_name};

/// The Service selecting all pods of the bridge.
pub fn service(owner: &Owner) -> Service {
    Service {
        metadata: owner.meta(service_name(&owner.name)),
        spec: Some(ServiceSpec {
            selector: Some([(BRIDGE_LABEL.to_string(), owner.name.clone())].into()),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
