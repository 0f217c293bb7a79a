//! The ConfigMap holding bridge-runtime's configuration file. Secrets appear
//! in it only as file paths under [`SECRETS_DIR`], never as values.

use std::collections::BTreeMap;

use crds::{
    BridgeConfig, HttpSettings, KafkaAuthentication, KafkaSpec, KafkaTls, LogFormat, LogSettings,
    MqttAuthentication, MqttKafkaBridgeSpec, MqttSpec, MqttTls, SecretKeyRef, SecretSource,
};
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::{HTTP_PORT, Owner, config_map_name};
use crate::error::Result;

/// Where Secret `<name>` is mounted in the pod.
pub const SECRETS_DIR: &str = "/etc/bridge/secrets";
/// Where the ConfigMap is mounted in the pod.
pub const CONFIG_DIR: &str = "/etc/bridge/config";
/// Key of the configuration file in the ConfigMap.
pub const CONFIG_KEY: &str = "bridge.yaml";
/// The container's termination-message file.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// How long bridge-runtime drains in-flight records on SIGTERM.
pub const SHUTDOWN_GRACE_SECONDS: u32 = 30;

/// The ConfigMap and the hash of its content (for the pod template).
pub fn config_map(owner: &Owner, spec: &MqttKafkaBridgeSpec) -> Result<(ConfigMap, String)> {
    let yaml = serde_yaml::to_string(&bridge_config(spec))?;
    let hash = hex(&Sha256::digest(yaml.as_bytes()));
    let config_map = ConfigMap {
        metadata: owner.meta(config_map_name(&owner.name)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..Default::default()
    };
    Ok((config_map, hash))
}

/// Lower-case hex of bytes.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The runtime configuration of a spec.
pub fn bridge_config(spec: &MqttKafkaBridgeSpec) -> BridgeConfig {
    BridgeConfig {
        mqtt: mqtt(&spec.mqtt),
        kafka: kafka(&spec.kafka),
        routes: spec.routes.clone(),
        http: HttpSettings {
            address: format!("0.0.0.0:{HTTP_PORT}"),
        },
        shutdown_grace_period_seconds: SHUTDOWN_GRACE_SECONDS,
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.into()),
        log: LogSettings {
            format: LogFormat::Json,
            level: "info".into(),
        },
        mqtt_receive_maximum: crds::DEFAULT_MQTT_RECEIVE_MAXIMUM,
        max_in_flight_publishes: 1000,
    }
}

/// The mounted file of a Secret key.
pub fn secret_file(r: &SecretKeyRef) -> SecretSource {
    SecretSource {
        file: Some(format!("{SECRETS_DIR}/{}/{}", r.secret_name, r.key).into()),
        env: None,
    }
}

fn file(r: &Option<SecretKeyRef>) -> Option<SecretSource> {
    r.as_ref().map(secret_file)
}

// Field-by-field so a field added to the shared types fails to compile here
// instead of being silently dropped from the configuration.
fn mqtt(m: &MqttSpec<SecretKeyRef>) -> MqttSpec<SecretSource> {
    MqttSpec {
        url: m.url.clone(),
        protocol_version: m.protocol_version,
        client_id_prefix: m.client_id_prefix.clone(),
        keep_alive_seconds: m.keep_alive_seconds,
        session_expiry_seconds: m.session_expiry_seconds,
        shared_subscription_group: m.shared_subscription_group.clone(),
        connections: m.connections,
        tls: m.tls.as_ref().map(|t| MqttTls {
            trusted_ca: file(&t.trusted_ca),
            client_certificate: file(&t.client_certificate),
            client_key: file(&t.client_key),
        }),
        authentication: m.authentication.as_ref().map(|a| MqttAuthentication {
            kind: a.kind,
            username: a.username.clone(),
            password_secret: file(&a.password_secret),
        }),
        max_packet_bytes: m.max_packet_bytes,
    }
}

fn kafka(k: &KafkaSpec<SecretKeyRef>) -> KafkaSpec<SecretSource> {
    KafkaSpec {
        bootstrap_servers: k.bootstrap_servers.clone(),
        tls: k.tls.as_ref().map(|t| KafkaTls {
            trusted_ca: file(&t.trusted_ca),
            client_certificate: file(&t.client_certificate),
            client_key: file(&t.client_key),
        }),
        authentication: k.authentication.as_ref().map(|a| KafkaAuthentication {
            kind: a.kind,
            username: a.username.clone(),
            password_secret: file(&a.password_secret),
        }),
        producer: k.producer.clone(),
        consumer: k.consumer.clone(),
        properties: k.properties.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn secrets_become_mounted_file_paths() {
        let bridge = fixtures::hivemq_confluent();
        let owner = Owner::of(&bridge).unwrap();
        let (cm, hash) = config_map(&owner, &bridge.spec).unwrap();
        let yaml = &cm.data.as_ref().unwrap()[CONFIG_KEY];
        assert!(yaml.contains("/etc/bridge/secrets/hivemq-credentials/password"));
        assert!(yaml.contains("/etc/bridge/secrets/confluent-credentials/api-secret"));
        assert_eq!(hash.len(), 64);
        // The runtime reads it back as the same routes.
        let parsed: BridgeConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(parsed.routes, bridge.spec.routes);
        assert_eq!(parsed.mqtt.client_id_prefix, "hivemq-confluent");
    }

    #[test]
    fn config_hash_follows_routes() {
        let a = fixtures::sensor_fleet();
        let mut b = a.clone();
        let owner = Owner::of(&a).unwrap();
        if let Some(r) = b.spec.routes[0].mqtt_to_kafka.as_mut() {
            r.kafka_topic = "other".into();
        }
        let (_, ha) = config_map(&owner, &a.spec).unwrap();
        let (_, ha2) = config_map(&owner, &a.spec).unwrap();
        let (_, hb) = config_map(&owner, &b.spec).unwrap();
        assert_eq!(ha, ha2);
        assert_ne!(ha, hb);
        // Replicas do not change the configuration, so scaling rolls nothing.
        b = a.clone();
        b.spec.replicas = 5;
        assert_eq!(ha, config_map(&owner, &b.spec).unwrap().1);
    }
}
