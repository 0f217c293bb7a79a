//! Test-only builders: the shipped examples, parsed.

use crds::{MqttKafkaBridge, MqttKafkaBridgeSpec};

/// An example from `deploy/examples`, with a namespace, uid and generation
/// as the apiserver would set them.
pub fn example(yaml: &str) -> MqttKafkaBridge {
    let mut bridge: MqttKafkaBridge = serde_yaml::from_str(yaml).expect("example parses");
    bridge.metadata.namespace = Some("ns".into());
    bridge.metadata.uid = Some("0000-uid".into());
    bridge.metadata.generation = Some(3);
    bridge
}

/// `deploy/examples/current-sensor.yaml`.
pub fn current_sensor() -> MqttKafkaBridge {
    example(include_str!("../../deploy/examples/current-sensor.yaml"))
}

/// `deploy/examples/hivemq-confluent.yaml`.
pub fn hivemq_confluent() -> MqttKafkaBridge {
    example(include_str!("../../deploy/examples/hivemq-confluent.yaml"))
}

/// `deploy/examples/sensor-fleet.yaml`.
pub fn sensor_fleet() -> MqttKafkaBridge {
    example(include_str!("../../deploy/examples/sensor-fleet.yaml"))
}

/// A spec with an MQTT password in Secret `mqtt-credentials`, key `password`.
pub fn password_spec() -> MqttKafkaBridgeSpec {
    let mut bridge = hivemq_confluent();
    bridge.spec.kafka.authentication = None;
    bridge.spec.kafka.tls = None;
    if let Some(a) = bridge.spec.mqtt.authentication.as_mut()
        && let Some(s) = a.password_secret.as_mut()
    {
        s.secret_name = "mqtt-credentials".into();
    }
    bridge.spec
}

/// A fixture bridge through `validate` (test fixtures are valid).
pub fn validated(
    bridge: &crds::MqttKafkaBridge,
    secrets: crate::resolve::ResolvedSecrets,
) -> crate::validate::ValidatedBridge {
    crate::validate::validate(bridge, secrets).unwrap()
}
