//! How to reach the brokers: MQTT URL, credentials and TLS files; Kafka
//! bootstrap, SASL and TLS. Shared by the simulators and verifiers.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;

/// An MQTT broker: `mqtt://host:port` or `mqtts://host:port`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct MqttEndpoint {
    /// Broker URL, `mqtt://host:port` or `mqtts://host:port`.
    #[arg(long, env = "MQTT_URL")]
    pub url: String,
    /// User name (password listener).
    #[arg(long)]
    pub username: Option<String>,
    /// Password for `--username`.
    #[arg(long, env = "SENSOR_FLEET_MQTT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// PEM CA file for mqtts:// (default: none, which fails for self-signed brokers).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM key of `--client-cert`.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl MqttEndpoint {
    /// An anonymous plain-TCP endpoint.
    pub fn plain(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Host, port and whether TLS is used.
    pub fn host_port(&self) -> Result<(String, u16, bool)> {
        let (scheme, rest) = self
            .url
            .split_once("://")
            .with_context(|| format!("MQTT URL {} has no scheme", self.url))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => bail!("MQTT URL scheme {other} is not mqtt or mqtts"),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .with_context(|| format!("bad port in MQTT URL {}", self.url))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        Ok((
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls,
        ))
    }

    fn tls(&self) -> Result<rumqttc::TlsConfiguration> {
        crate::install_crypto_provider();
        let ca = match &self.ca_file {
            Some(p) => std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
            None => bail!("mqtts:// needs --ca-file"),
        };
        let client_auth = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((
                std::fs::read(c).with_context(|| format!("read {}", c.display()))?,
                std::fs::read(k).with_context(|| format!("read {}", k.display()))?,
            )),
            _ => None,
        };
        Ok(rumqttc::TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        })
    }

    /// MQTT 3.1.1 options for client `id`.
    pub fn options_v311(&self, id: &str) -> Result<rumqttc::MqttOptions> {
        let (host, port, tls) = self.host_port()?;
        let mut o = rumqttc::MqttOptions::new(id, host, port);
        o.set_keep_alive(std::time::Duration::from_secs(30))
            .set_max_packet_size(64 * 1024, 64 * 1024);
        if let Some(u) = &self.username {
            o.set_credentials(u, self.password.clone().unwrap_or_default());
        }
        if tls {
            o.set_transport(rumqttc::Transport::tls_with_config(self.tls()?));
        }
        Ok(o)
    }

    /// MQTT 5 options for client `id`.
    pub fn options_v5(&self, id: &str) -> Result<rumqttc::v5::MqttOptions> {
        let (host, port, tls) = self.host_port()?;
        let mut o = rumqttc::v5::MqttOptions::new(id, host, port);
        o.set_keep_alive(std::time::Duration::from_secs(30))
            .set_max_packet_size(Some(64 * 1024));
        if let Some(u) = &self.username {
            o.set_credentials(u, self.password.clone().unwrap_or_default());
        }
        if tls {
            o.set_transport(rumqttc::Transport::tls_with_config(self.tls()?));
        }
        Ok(o)
    }
}

/// A Kafka cluster.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KafkaEndpoint {
    /// Bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub bootstrap: String,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(long)]
    pub sasl_username: Option<String>,
    /// SASL password.
    #[arg(long, env = "SENSOR_FLEET_KAFKA_PASSWORD", hide_env_values = true)]
    pub sasl_password: Option<String>,
    /// PEM CA file: turns TLS on (SSL or SASL_SSL).
    #[arg(long = "kafka-ca-file")]
    pub ca_file: Option<PathBuf>,
}

impl KafkaEndpoint {
    /// A PLAINTEXT endpoint.
    pub fn plain(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            ..Self::default()
        }
    }

    /// librdkafka settings for this endpoint.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        let protocol = match (self.sasl_mechanism.is_some(), self.ca_file.is_some()) {
            (false, false) => "PLAINTEXT",
            (false, true) => "SSL",
            (true, false) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        };
        c.set("security.protocol", protocol);
        if let Some(m) = &self.sasl_mechanism {
            c.set("sasl.mechanism", m);
            c.set(
                "sasl.username",
                self.sasl_username.clone().unwrap_or_default(),
            );
            c.set(
                "sasl.password",
                self.sasl_password.clone().unwrap_or_default(),
            );
        }
        if let Some(ca) = &self.ca_file {
            c.set("ssl.ca.location", ca.display().to_string());
        }
        c.set("log_level", "4");
        if let Ok(d) = std::env::var("SENSOR_FLEET_RDKAFKA_DEBUG") {
            c.set("debug", d);
        }
        c
    }
}

/// Creates a Kafka topic (automatic creation is off in the test environment);
/// an existing topic is fine.
pub async fn create_topic(endpoint: &KafkaEndpoint, name: &str, partitions: i32) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = endpoint
        .client_config()
        .create()
        .context("create Kafka admin client")?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new();
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .with_context(|| format!("create Kafka topic {name}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("create Kafka topic {t}: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        let e = MqttEndpoint::plain("mqtt://127.0.0.1:1884");
        assert_eq!(e.host_port().unwrap(), ("127.0.0.1".into(), 1884, false));
        let e = MqttEndpoint::plain("mqtts://broker/");
        assert_eq!(e.host_port().unwrap(), ("broker".into(), 8883, true));
        assert!(MqttEndpoint::plain("http://x:1").host_port().is_err());
        assert!(MqttEndpoint::plain("x:1").host_port().is_err());
    }

    #[test]
    fn kafka_security_protocol_follows_options() {
        let mut k = KafkaEndpoint::plain("h:9092");
        assert_eq!(
            k.client_config().get("security.protocol"),
            Some("PLAINTEXT")
        );
        k.sasl_mechanism = Some("SCRAM-SHA-512".into());
        k.ca_file = Some("/ca.pem".into());
        assert_eq!(k.client_config().get("security.protocol"), Some("SASL_SSL"));
    }
}
