//! The ConfigMap holding bridge-runtime's configuration file. Secrets appear
//! in it only as file paths under [`SECRETS_DIR`], never as values.

use std::collections::BTreeMap;

use crds::{
    BridgeConfig, HttpSettings, KafkaAuthentication, KafkaSpec, KafkaTls, LogFormat, LogSettings,
    MqttAuthentication, MqttKafkaBridgeSpec, MqttSpec, MqttTls, SecretKeyRef, SecretSource,
};
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::{Owner, config_map_name};
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
///
/// One file for every slot, except with host networking: then each slot
/// listens on its own port (the pods share the node's ports), so each slot
/// gets its own file ([`config_key`]). The hash is that of slot 0's file,
/// which differs from the others only in the slot's port: scaling changes
/// no hash and rolls no pod.
pub fn config_map(owner: &Owner, spec: &MqttKafkaBridgeSpec) -> Result<(ConfigMap, String)> {
    let slot0 = serde_yaml::to_string(&bridge_config(spec, 0))?;
    let hash = hex(&Sha256::digest(slot0.as_bytes()));
    let data = if spec.pod_template().host_network {
        let slots = u32::try_from(spec.replicas).unwrap_or(0);
        (0..slots)
            .map(|slot| {
                Ok((
                    config_key(spec, slot),
                    serde_yaml::to_string(&bridge_config(spec, slot))?,
                ))
            })
            .collect::<Result<BTreeMap<_, _>>>()?
    } else {
        BTreeMap::from([(CONFIG_KEY.to_string(), slot0)])
    };
    let config_map = ConfigMap {
        metadata: owner.meta(config_map_name(&owner.name, &hash)),
        data: Some(data),
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

/// Key (file name) of `slot`'s configuration in the ConfigMap.
pub fn config_key(spec: &MqttKafkaBridgeSpec, slot: u32) -> String {
    if spec.pod_template().host_network {
        format!("bridge-{slot}.yaml")
    } else {
        CONFIG_KEY.into()
    }
}

/// Where `slot`'s HTTP endpoint listens: every address of the pod, or with
/// host networking the node's loopback only (not exposed on the node's
/// network; the probes go there).
pub fn http_address(spec: &MqttKafkaBridgeSpec, slot: u32) -> String {
    let host = if spec.pod_template().host_network {
        HOST_NETWORK_HTTP_HOST
    } else {
        "0.0.0.0"
    };
    format!("{host}:{}", spec.http_port(slot))
}

/// Host of the HTTP endpoint (and of its probes) with host networking.
pub const HOST_NETWORK_HTTP_HOST: &str = "127.0.0.1";

/// The runtime configuration of `slot`.
pub fn bridge_config(spec: &MqttKafkaBridgeSpec, slot: u32) -> BridgeConfig {
    BridgeConfig {
        mqtt: mqtt(&spec.mqtt),
        kafka: kafka(&spec.kafka),
        routes: spec.routes.clone(),
        http: HttpSettings {
            address: http_address(spec, slot),
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
        publish_connections: m.publish_connections,
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

    fn host_network(mut bridge: crds::MqttKafkaBridge) -> crds::MqttKafkaBridge {
        bridge.spec.template = Some(crds::BridgeTemplate {
            pod: Some(crds::PodTemplate {
                host_network: true,
                ..Default::default()
            }),
        });
        bridge.spec.http = Some(crds::HttpSpec { port: 18080 });
        bridge
    }

    #[test]
    fn host_network_slots_listen_on_their_own_loopback_port() {
        let bridge = host_network(fixtures::sensor_fleet());
        let owner = Owner::of(&bridge).unwrap();
        let (cm, hash) = config_map(&owner, &bridge.spec).unwrap();
        let data = cm.data.unwrap();
        assert_eq!(data.len(), bridge.spec.replicas as usize);
        for slot in 0..bridge.spec.replicas as u32 {
            let parsed: BridgeConfig =
                serde_yaml::from_str(&data[&config_key(&bridge.spec, slot)]).unwrap();
            assert_eq!(parsed.http.address, format!("127.0.0.1:{}", 18080 + slot));
        }
        // Scaling adds a file but changes no hash.
        let mut more = bridge.clone();
        more.spec.replicas += 1;
        assert_eq!(hash, config_map(&owner, &more.spec).unwrap().1);
        // Without host networking: every address of the pod, one file.
        let (cm, other) = config_map(&owner, &fixtures::sensor_fleet().spec).unwrap();
        assert_ne!(hash, other);
        let yaml = &cm.data.unwrap()[CONFIG_KEY];
        assert!(yaml.contains("0.0.0.0:8080"), "{yaml}");
    }
}
