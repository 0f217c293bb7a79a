//! Loading and checking the configuration file. Everything that can be
//! wrong with it is found here, before any connection, and reported with the
//! path of the offending field (exit code 2).

use std::fmt;
use std::path::Path;

use bridge_core::{
    BridgeConfig, KafkaAuthenticationType, MqttAuthenticationType, MqttProtocolVersion,
    SecretSource,
};

pub use bridge_core::rules::SLOT_ENV;
pub use bridge_core::validate::MqttEndpoint;

use crate::error::BridgeError;
use bridge_core::routes::RouteTable;

/// A secret value. Its `Debug` never shows the value, so it cannot leak
/// into logs or error messages by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
    /// The value as text (secrets given to librdkafka and MQTT CONNECT are text).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0)
            .trim_end_matches(['\n', '\r'])
            .to_owned()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

/// The secret values named by the configuration, read once at start.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// MQTT password.
    pub mqtt_password: Option<SecretValue>,
    /// MQTT CA certificate (PEM).
    pub mqtt_ca: Option<SecretValue>,
    /// MQTT client certificate (PEM).
    pub mqtt_client_certificate: Option<SecretValue>,
    /// MQTT client key (PEM).
    pub mqtt_client_key: Option<SecretValue>,
    /// Kafka SASL password.
    pub kafka_password: Option<SecretValue>,
    /// Kafka CA certificate (PEM).
    pub kafka_ca: Option<SecretValue>,
    /// Kafka client certificate (PEM).
    pub kafka_client_certificate: Option<SecretValue>,
    /// Kafka client key (PEM).
    pub kafka_client_key: Option<SecretValue>,
}

/// A configuration that passed every check.
#[derive(Clone, Debug)]
pub struct ValidatedConfig {
    /// The file as written.
    pub config: BridgeConfig,
    /// Secret values it names.
    pub secrets: Secrets,
    /// The parsed broker URL.
    pub mqtt_endpoint: MqttEndpoint,
    /// This replica's slot (from `BRIDGE_SLOT`).
    pub slot: u32,
    /// The compiled routes.
    pub routes: RouteTable,
}

impl ValidatedConfig {
    /// Client id of MQTT connection `index`: `<clientIdPrefix>-<slot>-<index>`.
    pub fn client_id(&self, index: impl fmt::Display) -> String {
        format!(
            "{}-{}-{}",
            self.config.mqtt.client_id_prefix, self.slot, index
        )
    }

    /// Kafka consumer group of the Kafka→MQTT routes.
    pub fn group_id(&self) -> String {
        self.config
            .kafka
            .consumer
            .group_id
            .clone()
            .unwrap_or_else(|| self.config.mqtt.client_id_prefix.clone())
    }

    /// Value of the loop-prevention marker this bridge puts on what it publishes.
    pub fn origin(&self) -> &str {
        &self.config.mqtt.client_id_prefix
    }
}

/// Reads, parses and checks a configuration file.
pub fn load(path: &Path) -> Result<ValidatedConfig, BridgeError> {
    let text = std::fs::read_to_string(path).map_err(|source| BridgeError::ConfigUnreadable {
        path: path.to_owned(),
        source,
    })?;
    let slot = match std::env::var(SLOT_ENV) {
        Ok(s) if !s.is_empty() => s
            .parse()
            .map_err(|_| BridgeError::invalid(SLOT_ENV, format!("`{s}` is not a number")))?,
        _ => 0,
    };
    validate(parse(&text)?, slot)
}

/// Parses YAML; the error names the field (serde_yaml reports its path).
pub fn parse(text: &str) -> Result<BridgeConfig, BridgeError> {
    parse_as(text)
}

/// Parses YAML into `T`, with [`parse`]'s errors.
pub fn parse_as<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, BridgeError> {
    serde_yaml::from_str(text)
        .map_err(|e| BridgeError::ConfigSyntax(hide_input_values(&e.to_string())))
}

/// serde's message without the input values it quotes (`invalid type:
/// string "hunter2"`, `unknown variant `hunter2``, `integer `1234``): a
/// password pasted where `{file|env}` belongs would otherwise reach stderr
/// and the termination message. Field names and the expected forms stay.
fn hide_input_values(message: &str) -> String {
    const HIDDEN: &str = "(value hidden)";
    // Quoted with backticks right after these words: an input value.
    const BEFORE_VALUE: &[&str] = &["integer ", "floating point ", "boolean ", "character "];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        out.push_str(&rest[..start]);
        let quote = &rest[start..=start];
        let body = &rest[start + 1..];
        if quote == "`" && out.ends_with("unknown variant ") {
            // Raw, may hold backticks itself: up to serde's ", expected".
            out.push_str(HIDDEN);
            rest = body.find("`, expected").map_or("", |end| &body[end + 1..]);
            continue;
        }
        let end = if quote == "\"" {
            debug_string_end(body)
        } else {
            body.find('`')
        };
        let Some(end) = end else {
            out.push_str(HIDDEN);
            return out;
        };
        if quote == "\"" || BEFORE_VALUE.iter().any(|w| out.ends_with(w)) {
            out.push_str(HIDDEN);
        } else {
            out.push_str(&rest[start..start + end + 2]);
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Index of the quote closing a Debug-escaped string whose body starts `body`.
fn debug_string_end(body: &str) -> Option<usize> {
    let mut escaped = false;
    body.char_indices().find_map(|(i, c)| match c {
        _ if escaped => {
            escaped = false;
            None
        }
        '\\' => {
            escaped = true;
            None
        }
        '"' => Some(i),
        _ => None,
    })
}

/// Checks every field and reads the secrets: first the rules every bridge
/// must pass (`bridge_core::validate`, the operator's very check), then
/// what only this process knows (its own settings, the secret files).
pub fn validate(config: BridgeConfig, slot: u32) -> Result<ValidatedConfig, BridgeError> {
    let checked = bridge_core::validate::validate(&config.mqtt, &config.kafka, &config.routes, 1)?;
    if config.mqtt.protocol_version == MqttProtocolVersion::V5 && config.mqtt_receive_maximum == 0 {
        return Err(BridgeError::invalid(
            "mqttReceiveMaximum",
            "must be at least 1",
        ));
    }
    if config.max_in_flight_publishes == 0 {
        return Err(BridgeError::invalid(
            "maxInFlightPublishes",
            "must be at least 1",
        ));
    }
    if config.http.address.parse::<std::net::SocketAddr>().is_err() {
        return Err(BridgeError::invalid(
            "http.address",
            format!("`{}` is not ip:port", config.http.address),
        ));
    }
    if tracing_subscriber::EnvFilter::try_new(&config.log.level).is_err() {
        return Err(BridgeError::invalid(
            "log.level",
            format!("`{}` is not a log filter", config.log.level),
        ));
    }
    let secrets = read_secrets(&config)?;
    Ok(ValidatedConfig {
        config,
        secrets,
        mqtt_endpoint: checked.mqtt_endpoint,
        slot,
        routes: checked.routes,
    })
}

/// Reads every secret the configuration names (its presence and pairing
/// already checked).
fn read_secrets(config: &BridgeConfig) -> Result<Secrets, BridgeError> {
    let mut secrets = Secrets::default();
    if let Some(tls) = &config.mqtt.tls {
        secrets.mqtt_ca = read_optional(&tls.trusted_ca, "mqtt.tls.trustedCa")?;
        secrets.mqtt_client_certificate =
            read_optional(&tls.client_certificate, "mqtt.tls.clientCertificate")?;
        secrets.mqtt_client_key = read_optional(&tls.client_key, "mqtt.tls.clientKey")?;
    }
    if let Some(auth) = &config.mqtt.authentication
        && auth.kind == MqttAuthenticationType::Password
    {
        secrets.mqtt_password =
            read_optional(&auth.password_secret, "mqtt.authentication.passwordSecret")?;
    }
    if let Some(tls) = &config.kafka.tls {
        secrets.kafka_ca = read_optional(&tls.trusted_ca, "kafka.tls.trustedCa")?;
        secrets.kafka_client_certificate =
            read_optional(&tls.client_certificate, "kafka.tls.clientCertificate")?;
        secrets.kafka_client_key = read_optional(&tls.client_key, "kafka.tls.clientKey")?;
    }
    if let Some(auth) = &config.kafka.authentication
        && auth.kind != KafkaAuthenticationType::None
    {
        secrets.kafka_password =
            read_optional(&auth.password_secret, "kafka.authentication.passwordSecret")?;
    }
    Ok(secrets)
}

fn read_optional(
    source: &Option<SecretSource>,
    field: &str,
) -> Result<Option<SecretValue>, BridgeError> {
    source.as_ref().map(|s| read_secret(s, field)).transpose()
}

/// Reads a secret from its file or environment variable.
pub fn read_secret(source: &SecretSource, field: &str) -> Result<SecretValue, BridgeError> {
    let unreadable = |message: String| BridgeError::SecretUnreadable {
        field: field.to_owned(),
        message,
    };
    let value = match (&source.file, &source.env) {
        (Some(file), None) => {
            std::fs::read(file).map_err(|e| unreadable(format!("file {}: {e}", file.display())))?
        }
        (None, Some(env)) => std::env::var(env)
            .map_err(|_| unreadable(format!("environment variable {env} is not set")))?
            .into_bytes(),
        _ => {
            return Err(BridgeError::invalid(
                field,
                "exactly one of `file` or `env` must be set",
            ));
        }
    };
    if value.is_empty() {
        return Err(unreadable("the value is empty".into()));
    }
    Ok(SecretValue(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
mqtt:
  url: mqtt://127.0.0.1:1883
  clientIdPrefix: bridge
kafka:
  bootstrapServers: 127.0.0.1:9092
routes:
  - name: temps
    mqttToKafka:
      mqttTopicFilter: sensors/+/temperature
      kafkaTopic: sensors.{1}
"#;

    fn check(text: &str) -> Result<ValidatedConfig, BridgeError> {
        validate(parse(text)?, 0)
    }

    fn error_of(text: &str) -> String {
        match check(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => {
                assert!(e.is_config(), "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let v = check(MINIMAL).unwrap();
        assert_eq!(v.config.http.address, "0.0.0.0:8080");
        assert_eq!(v.config.shutdown_grace_period_seconds, 30);
        assert_eq!(v.mqtt_endpoint.port, 1883);
        assert_eq!(v.client_id(3), "bridge-0-3");
        assert_eq!(v.group_id(), "bridge");
    }

    #[test]
    fn invalid_yaml_is_reported() {
        let e = error_of("mqtt: [unclosed");
        assert!(e.starts_with("invalid configuration"), "{e}");
    }

    #[test]
    fn unknown_field_names_its_path() {
        let text = MINIMAL.replace(
            "clientIdPrefix: bridge",
            "clientIdPrefix: bridge\n  colour: red",
        );
        let e = error_of(&text);
        assert!(e.contains("mqtt") && e.contains("colour"), "{e}");
        let text = MINIMAL.replace("      kafkaTopic", "      kafkaTopc");
        let e = error_of(&text);
        assert!(
            e.contains("routes[0].mqttToKafka") && e.contains("kafkaTopc"),
            "{e}"
        );
    }

    #[test]
    fn bad_topic_filter_names_the_route_field() {
        let e = error_of(&MINIMAL.replace("sensors/+/temperature", "sensors/#/temperature"));
        assert!(e.contains("routes[0].mqttToKafka.mqttTopicFilter"), "{e}");
    }

    #[test]
    fn template_with_missing_level_is_refused() {
        let e = error_of(&MINIMAL.replace("sensors.{1}", "sensors.{2}"));
        assert!(
            e.contains("routes[0].mqttToKafka.kafkaTopic") && e.contains("level 2"),
            "{e}"
        );
    }

    #[test]
    fn unreadable_secret_file_is_refused() {
        let text = MINIMAL.replace(
            "  bootstrapServers: 127.0.0.1:9092",
            "  bootstrapServers: 127.0.0.1:9092\n  authentication:\n    type: plain\n    username: u\n    passwordSecret: {file: /nonexistent/pw}",
        );
        let e = error_of(&text);
        assert!(
            e.contains("kafka.authentication.passwordSecret") && e.contains("/nonexistent/pw"),
            "{e}"
        );
        let e = check(&text).err().map(|e| e.reason());
        assert_eq!(e, Some("SecretUnreadable"));
    }

    #[test]
    fn secret_from_env_and_file() {
        let dir = std::env::temp_dir().join(testname("secret"));
        std::fs::write(&dir, "s3cret\n").unwrap();
        let source = SecretSource {
            file: Some(dir.clone()),
            env: None,
        };
        let v = read_secret(&source, "x").unwrap();
        assert_eq!(v.text(), "s3cret");
        assert!(!format!("{v:?}").contains("s3cret"));
        let both = SecretSource {
            file: Some(dir.clone()),
            env: Some("PATH".into()),
        };
        assert!(read_secret(&both, "x").is_err());
        let env = SecretSource {
            file: None,
            env: Some("BRIDGE_TEST_SURELY_UNSET_VAR".into()),
        };
        let e = read_secret(&env, "f").unwrap_err().to_string();
        assert!(e.contains("BRIDGE_TEST_SURELY_UNSET_VAR"), "{e}");
        let _ = std::fs::remove_file(dir);
    }

    fn testname(p: &str) -> String {
        format!(
            "{p}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
    }

    #[test]
    fn unsupported_sasl_mechanism_is_refused() {
        let text = MINIMAL.replace(
            "  bootstrapServers: 127.0.0.1:9092",
            "  bootstrapServers: 127.0.0.1:9092\n  authentication:\n    type: gssapi\n    username: u",
        );
        let e = error_of(&text);
        // The value itself is not repeated (it could be a pasted secret).
        assert!(
            e.contains("kafka.authentication.type") && e.contains("`scram-sha-512`"),
            "{e}"
        );
    }

    #[test]
    fn secret_properties_are_refused() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "sasl.jaas.config",
            "ssl.keystore.password",
        ] {
            let text = MINIMAL.replace(
                "  bootstrapServers: 127.0.0.1:9092",
                &format!("  bootstrapServers: 127.0.0.1:9092\n  properties:\n    {key}: hunter2"),
            );
            let e = error_of(&text);
            assert!(
                e.contains("kafka.properties") && e.contains(&format!("`{key}`")),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        let text = MINIMAL.replace(
            "  bootstrapServers: 127.0.0.1:9092",
            "  bootstrapServers: 127.0.0.1:9092\n  properties:\n    enable.idempotence: 'false'",
        );
        assert!(error_of(&text).contains("`enable.idempotence` is set by the bridge"));
        let text = MINIMAL.replace(
            "  bootstrapServers: 127.0.0.1:9092",
            "  bootstrapServers: 127.0.0.1:9092\n  properties:\n    socket.keepalive.enable: 'true'",
        );
        assert!(check(&text).is_ok());
    }

    #[test]
    fn other_field_errors() {
        let cases = [
            ("url: mqtt://127.0.0.1:1883", "url: http://x", "mqtt.url"),
            (
                "url: mqtt://127.0.0.1:1883",
                "url: mqtt://h:99999",
                "mqtt.url",
            ),
            (
                "clientIdPrefix: bridge",
                "clientIdPrefix: 'a b'",
                "mqtt.clientIdPrefix",
            ),
            (
                "bootstrapServers: 127.0.0.1:9092",
                "bootstrapServers: nohost",
                "kafka.bootstrapServers",
            ),
            (
                "      kafkaTopic: sensors.{1}",
                "      kafkaTopic: sensors.{1}\n      qos: 3",
                "routes[0].mqttToKafka.qos",
            ),
            ("  - name: temps", "  - name: ''", "routes[0].name"),
            (
                "      kafkaTopic: sensors.{1}",
                "      kafkaTopic: sensors.{1}\n      key: {type: topicLevel, level: 4}",
                "routes[0].mqttToKafka.key.level",
            ),
            (
                "      kafkaTopic: sensors.{1}",
                "      kafkaTopic: sensors.{1}\n      key: {type: jsonField}",
                "routes[0].mqttToKafka.key.field",
            ),
            (
                "      kafkaTopic: sensors.{1}",
                "      kafkaTopic: sensors.{1}\n    deadLetterTopic: 'dl/x'",
                "routes[0].deadLetterTopic",
            ),
        ];
        for (from, to, field) in cases {
            let e = error_of(&MINIMAL.replace(from, to));
            assert!(e.contains(field), "{field}: {e}");
        }
        let e = error_of(&format!("{MINIMAL}http:\n  address: nope\n"));
        assert!(e.contains("http.address"), "{e}");
        let e = error_of(&format!(
            "{MINIMAL}  - name: temps\n    kafkaToMqtt: {{kafkaTopics: [a], mqttTopic: b}}\n"
        ));
        assert!(
            e.contains("routes[1].name") && e.contains("duplicate"),
            "{e}"
        );
        let e = error_of(&format!("{MINIMAL}  - name: both\n"));
        assert!(e.contains("routes[1]"), "{e}");
        let e = error_of(&format!(
            "{MINIMAL}  - name: k\n    kafkaToMqtt: {{kafkaTopics: [a], mqttTopic: 'x/+'}}\n"
        ));
        assert!(e.contains("routes[1].kafkaToMqtt.mqttTopic"), "{e}");
        let e = error_of(&format!(
            "{MINIMAL}  - name: k\n    kafkaToMqtt: {{kafkaTopics: [], mqttTopic: 'x'}}\n"
        ));
        assert!(e.contains("routes[1].kafkaToMqtt.kafkaTopics"), "{e}");
        let e = error_of(&MINIMAL.replace(
            "clientIdPrefix: bridge",
            "clientIdPrefix: bridge\n  connections: 3",
        ));
        assert!(e.contains("mqtt.connections"), "{e}");
        let e = error_of(&MINIMAL.replace(
            "clientIdPrefix: bridge",
            "clientIdPrefix: bridge\n  tls: {trustedCa: {file: /x}}",
        ));
        assert!(e.contains("mqtt.tls"), "{e}");
    }
}
