//! Step 2: the one check of a bridge, `bridge_core::validate` — the rules
//! bridge-runtime runs on its file and the CRD's schema is built from — so
//! a spec the runtime would refuse is reported here (`InvalidSpec`) and
//! changes nothing that runs. What passes becomes a [`ValidatedBridge`],
//! the only input of `build`.

use bridge_core::routes::RouteTable;
use bridge_core::validate::{MqttEndpoint, validate_bridge};
use crds::{MqttKafkaBridge, MqttKafkaBridgeSpec};

use crate::build::Owner;
use crate::error::{Error, Result};
use crate::resolve::ResolvedSecrets;

/// A bridge that passed every check, with what the checks produced.
#[derive(Clone, Debug)]
pub struct ValidatedBridge {
    /// Name, namespace and owner reference of the bridge.
    pub owner: Owner,
    /// The spec as checked.
    pub spec: MqttKafkaBridgeSpec,
    /// The referenced Secrets (versions and keys, never values).
    pub secrets: ResolvedSecrets,
    /// The broker address parsed from `spec.mqtt.url`.
    pub mqtt_endpoint: MqttEndpoint,
    /// The compiled routes.
    pub routes: RouteTable,
}

/// Checks a bridge whose Secrets are resolved.
pub fn validate(bridge: &MqttKafkaBridge, secrets: ResolvedSecrets) -> Result<ValidatedBridge> {
    let owner = Owner::of(bridge)?;
    let checked = check_spec(&bridge.spec)?;
    Ok(ValidatedBridge {
        owner,
        spec: bridge.spec.clone(),
        secrets,
        mqtt_endpoint: checked.mqtt_endpoint,
        routes: checked.routes,
    })
}

/// The verdict of `bridge_core` on a spec, fields named `spec.…`.
pub fn check_spec(spec: &MqttKafkaBridgeSpec) -> Result<bridge_core::validate::ValidatedSpec> {
    validate_bridge(spec.replicas, &spec.mqtt, &spec.kafka, &spec.routes)
        .map_err(|e| Error::invalid(format!("spec.{}", e.field), e.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn examples_are_valid() {
        for b in [
            fixtures::current_sensor(),
            fixtures::hivemq_confluent(),
            fixtures::sensor_fleet(),
        ] {
            check_spec(&b.spec).unwrap_or_else(|e| panic!("{:?}: {e}", b.metadata.name));
        }
    }

    #[test]
    fn a_route_pair_the_runtime_keeps_from_looping_is_accepted() {
        // The runtime marks what it publishes and drops its own messages
        // where they would come straight back, so such a pair is valid.
        let mut bridge = fixtures::sensor_fleet();
        if let Some(down) = bridge.spec.routes[1].kafka_to_mqtt.as_mut() {
            down.mqtt_topic = "sensors/{sensor_id}/temperature".into();
        }
        check_spec(&bridge.spec).unwrap();
    }

    #[test]
    fn errors_name_the_spec_field() {
        let mut bridge = fixtures::current_sensor();
        bridge
            .spec
            .kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        let err = check_spec(&bridge.spec).unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        let text = err.to_string();
        assert!(text.contains("spec.kafka.properties"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let mut bridge = fixtures::current_sensor();
        bridge
            .spec
            .kafka
            .properties
            .insert("linger.ms".into(), "5".into());
        let err = check_spec(&bridge.spec).unwrap_err().to_string();
        assert!(err.contains("linger.ms"), "{err}");

        let mut bridge = fixtures::current_sensor();
        bridge.spec.replicas = 2;
        let err = check_spec(&bridge.spec).unwrap_err();
        assert!(
            err.to_string()
                .contains("spec.mqtt.sharedSubscriptionGroup"),
            "{err}"
        );
    }
}
