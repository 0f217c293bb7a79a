//! The MQTT client, over rumqttc's MQTT 3.1.1 and MQTT 5 APIs behind one
//! small interface, so the pipelines do not care which version is spoken.

use std::sync::Arc;
use std::time::Duration;

use bridge_core::MqttProtocolVersion;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as m5;
use rumqttc::{TlsConfiguration, Transport};

use crate::config::ValidatedConfig;
use crate::delivery::{self, Verdict};
use crate::error::BridgeError;
use bridge_core::routes::ORIGIN_HEADER;

/// MQTT's own largest packet. The bridge accepts packets up to this size
/// whatever `mqtt.maxPacketBytes` says (rumqttc's default is only 10 KiB):
/// a packet above the client's limit is a connection error, and the
/// persistent session would redeliver it after every reconnect, jamming the
/// connection. Larger-than-configured messages are judged by the pipeline
/// instead (dead-lettered or dropped and counted).
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// A PUBLISH received from the broker.
#[derive(Clone, Debug)]
pub struct IncomingPublish {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Packet id (for the acknowledgement).
    pub pkid: u16,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
}

/// What the event loop reports, reduced to what the bridge acts on.
#[derive(Debug)]
pub enum MqttEvent {
    /// CONNACK received.
    Connected {
        /// The broker resumed our session (its subscriptions exist).
        session_present: bool,
        /// The broker's Maximum Packet Size (MQTT 5), if it announced one.
        max_packet_size: Option<u32>,
    },
    /// A message arrived.
    Publish(IncomingPublish),
    /// Our PUBLISH with this packet id went out (0 for QoS 0).
    PublishSent(u16),
    /// The broker acknowledged our QoS 1 (PUBACK) or QoS 2 (PUBCOMP) publish.
    PublishAcked(u16),
    /// The broker refused our publish (MQTT 5 PUBACK or PUBREC with a
    /// failure reason code): the message was not taken.
    PublishRefused(u16, Verdict),
    /// SUBACK: whether every filter was granted.
    Subscribed(bool),
    /// Anything else (pings, …).
    Other,
}

/// Why polling failed.
#[derive(Debug)]
pub enum PollError {
    /// The broker refused our credentials: retrying cannot help.
    Refused(String),
    /// Connection lost or not possible; poll again to reconnect.
    Connection(String),
    /// Every request handle of the connection was dropped: it is done.
    Closed,
}

/// The request side of a connection.
#[derive(Clone)]
pub enum MqttClient {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

/// The event loop of a connection; must be polled continuously.
pub enum MqttEventLoop {
    /// MQTT 3.1.1.
    V4(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
}

/// How a connection is used.
pub struct ConnectionKind {
    /// Client id.
    pub client_id: String,
    /// Keep the broker session (subscribers) or not (the publisher).
    pub persistent: bool,
    /// Acknowledge received messages ourselves.
    pub manual_acks: bool,
    /// Request channel capacity.
    pub capacity: usize,
    /// Most unacknowledged QoS 1/2 publishes we send at once; over MQTT 5
    /// the broker's Receive Maximum when that is smaller. It also sizes
    /// rumqttc's table of unacknowledged publishes, which by default has
    /// room for 65,535 (about 16 MiB a connection, written at start).
    pub outgoing_inflight: u16,
}

/// rumqttc's usual outgoing window.
pub const DEFAULT_OUTGOING_INFLIGHT: u16 = 100;

/// Mosquitto's default `max_inflight_messages`. Over MQTT 3.1.1 a client
/// cannot learn the broker's limit, and Mosquitto answers a QoS 2 publish
/// beyond it with an ordinary PUBREC and drops it; QoS 2 publishers stay
/// within this window.
pub const QOS2_OUTGOING_INFLIGHT_V311: u16 = 20;

/// Creates a client and event loop (no connection is made until polled).
pub fn connect(
    config: &ValidatedConfig,
    kind: ConnectionKind,
) -> Result<(MqttClient, MqttEventLoop), BridgeError> {
    let mqtt = &config.config.mqtt;
    let endpoint = &config.mqtt_endpoint;
    let transport = if endpoint.tls {
        Transport::tls_with_config(tls_configuration(config)?)
    } else {
        Transport::tcp()
    };
    let keep_alive = Duration::from_secs(u64::from(mqtt.keep_alive_seconds));
    let credentials = mqtt
        .authentication
        .as_ref()
        .and_then(|a| a.username.clone())
        .zip(config.secrets.mqtt_password.as_ref().map(|p| p.text()));
    match mqtt.protocol_version {
        MqttProtocolVersion::V311 => {
            let mut o =
                rumqttc::MqttOptions::new(kind.client_id, endpoint.host.clone(), endpoint.port);
            o.set_transport(transport)
                .set_keep_alive(keep_alive)
                .set_clean_session(!kind.persistent)
                .set_manual_acks(kind.manual_acks)
                .set_max_packet_size(MQTT_MAX_PACKET_BYTES, MQTT_MAX_PACKET_BYTES)
                .set_inflight(kind.outgoing_inflight);
            if let Some((u, p)) = credentials {
                o.set_credentials(u, p);
            }
            let mut network = rumqttc::NetworkOptions::new();
            network.set_tcp_nodelay(true);
            network.set_connection_timeout(10);
            let (client, mut el) = rumqttc::AsyncClient::new(o, kind.capacity);
            el.set_network_options(network);
            Ok((MqttClient::V4(client), MqttEventLoop::V4(Box::new(el))))
        }
        MqttProtocolVersion::V5 => {
            let mut o =
                rumqttc::v5::MqttOptions::new(kind.client_id, endpoint.host.clone(), endpoint.port);
            o.set_transport(transport)
                .set_keep_alive(keep_alive)
                .set_clean_start(!kind.persistent)
                .set_manual_acks(kind.manual_acks)
                .set_max_packet_size(Some(MQTT_MAX_PACKET_BYTES as u32))
                .set_receive_maximum(Some(config.config.mqtt_receive_maximum))
                .set_outgoing_inflight_upper_limit(kind.outgoing_inflight);
            if kind.persistent {
                o.set_session_expiry_interval(Some(mqtt.session_expiry_seconds));
            }
            if let Some((u, p)) = credentials {
                o.set_credentials(u, p);
            }
            let mut network = rumqttc::NetworkOptions::new();
            network.set_tcp_nodelay(true);
            network.set_connection_timeout(10);
            o.set_network_options(network);
            let (client, el) = rumqttc::v5::AsyncClient::new(o, kind.capacity);
            Ok((MqttClient::V5(client), MqttEventLoop::V5(Box::new(el))))
        }
    }
}

fn tls_configuration(config: &ValidatedConfig) -> Result<TlsConfiguration, BridgeError> {
    let secrets = &config.secrets;
    let ca = match &secrets.mqtt_ca {
        Some(ca) => ca.bytes().to_vec(),
        // No CA given: the system bundle of Debian-like images.
        None => std::fs::read("/etc/ssl/certs/ca-certificates.crt").map_err(|e| {
            BridgeError::MqttTls(format!(
                "no mqtt.tls.trustedCa and no system CA bundle: {e}"
            ))
        })?,
    };
    let client_auth = secrets
        .mqtt_client_certificate
        .as_ref()
        .zip(secrets.mqtt_client_key.as_ref())
        .map(|(c, k)| (c.bytes().to_vec(), k.bytes().to_vec()));
    Ok(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })
}

impl MqttEventLoop {
    /// Polls once.
    pub async fn poll(&mut self) -> Result<MqttEvent, PollError> {
        match self {
            Self::V4(el) => {
                use rumqttc::{ConnectReturnCode as C, ConnectionError, Event, Incoming, Outgoing};
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(c))) => Ok(MqttEvent::Connected {
                        session_present: c.session_present,
                        max_packet_size: None,
                    }),
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        Ok(MqttEvent::Publish(IncomingPublish {
                            topic: p.topic,
                            payload: p.payload,
                            qos: p.qos as u8,
                            retain: p.retain,
                            pkid: p.pkid,
                            user_properties: Vec::new(),
                            content_type: None,
                        }))
                    }
                    Ok(Event::Incoming(Incoming::PubAck(a))) => Ok(MqttEvent::PublishAcked(a.pkid)),
                    Ok(Event::Incoming(Incoming::PubComp(a))) => {
                        Ok(MqttEvent::PublishAcked(a.pkid))
                    }
                    Ok(Event::Incoming(Incoming::SubAck(s))) => {
                        Ok(MqttEvent::Subscribed(s.return_codes.iter().all(|c| {
                            !matches!(c, rumqttc::SubscribeReasonCode::Failure)
                        })))
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        Ok(MqttEvent::PublishSent(pkid))
                    }
                    Ok(_) => Ok(MqttEvent::Other),
                    Err(ConnectionError::ConnectionRefused(
                        code @ (C::BadUserNamePassword | C::NotAuthorized | C::BadClientId),
                    )) => Err(PollError::Refused(format!("{code:?}"))),
                    Err(ConnectionError::RequestsDone) => Err(PollError::Closed),
                    Err(e) => Err(PollError::Connection(e.to_string())),
                }
            }
            Self::V5(el) => {
                use m5::ConnectReturnCode as C;
                use rumqttc::Outgoing;
                use rumqttc::v5::{ConnectionError, Event, Incoming};
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(c))) => Ok(MqttEvent::Connected {
                        session_present: c.session_present,
                        max_packet_size: c.properties.and_then(|p| p.max_packet_size),
                    }),
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let (user_properties, content_type) = p
                            .properties
                            .map(|pr| (pr.user_properties, pr.content_type))
                            .unwrap_or_default();
                        Ok(MqttEvent::Publish(IncomingPublish {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload,
                            qos: p.qos as u8,
                            retain: p.retain,
                            pkid: p.pkid,
                            user_properties,
                            content_type,
                        }))
                    }
                    // rumqttc reports a refusing PUBACK like any other: the
                    // reason code says whether the broker took the message.
                    Ok(Event::Incoming(Incoming::PubAck(a))) => Ok(
                        match delivery::classify_mqtt_reason(puback_code(a.reason)) {
                            None => MqttEvent::PublishAcked(a.pkid),
                            Some(v) => MqttEvent::PublishRefused(a.pkid, v),
                        },
                    ),
                    // A refusing PUBREC ends the QoS 2 flow: no PUBCOMP follows.
                    Ok(Event::Incoming(Incoming::PubRec(r))) => Ok(
                        match delivery::classify_mqtt_reason(pubrec_code(r.reason)) {
                            None => MqttEvent::Other,
                            Some(v) => MqttEvent::PublishRefused(r.pkid, v),
                        },
                    ),
                    Ok(Event::Incoming(Incoming::PubComp(a))) => {
                        Ok(MqttEvent::PublishAcked(a.pkid))
                    }
                    Ok(Event::Incoming(Incoming::SubAck(s))) => Ok(MqttEvent::Subscribed(
                        s.return_codes
                            .iter()
                            .all(|c| matches!(c, m5::SubscribeReasonCode::Success(_))),
                    )),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        Ok(MqttEvent::PublishSent(pkid))
                    }
                    Ok(_) => Ok(MqttEvent::Other),
                    Err(ConnectionError::ConnectionRefused(
                        code @ (C::BadUserNamePassword
                        | C::NotAuthorized
                        | C::Banned
                        | C::BadAuthenticationMethod
                        | C::ClientIdentifierNotValid),
                    )) => Err(PollError::Refused(format!("{code:?}"))),
                    Err(ConnectionError::RequestsDone) => Err(PollError::Closed),
                    Err(e) => Err(PollError::Connection(e.to_string())),
                }
            }
        }
    }
}

/// The wire values of PUBACK and PUBREC reasons: rumqttc's two enums have
/// the same variants and no numbers.
macro_rules! reason_code {
    ($reason:expr, $kind:ty) => {{
        type R = $kind;
        match $reason {
            R::Success => 0x00,
            R::NoMatchingSubscribers => 0x10,
            R::UnspecifiedError => 0x80,
            R::ImplementationSpecificError => 0x83,
            R::NotAuthorized => 0x87,
            R::TopicNameInvalid => 0x90,
            R::PacketIdentifierInUse => 0x91,
            R::QuotaExceeded => 0x97,
            R::PayloadFormatInvalid => 0x99,
        }
    }};
}

fn puback_code(reason: m5::PubAckReason) -> u8 {
    reason_code!(reason, m5::PubAckReason)
}

fn pubrec_code(reason: m5::PubRecReason) -> u8 {
    reason_code!(reason, m5::PubRecReason)
}

fn qos4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(qos: u8) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl MqttClient {
    /// Queues the acknowledgement of a received message (manual acks)
    /// without waiting: `false` when the request queue is full (the event
    /// loop has not written what is queued yet); the caller keeps it and
    /// tries again, in order.
    pub fn try_ack(&self, qos: u8, pkid: u16) -> bool {
        match self {
            Self::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos4(qos), Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
            Self::V5(c) => {
                let mut p = m5::Publish::new("", qos5(qos), Bytes::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).is_ok()
            }
        }
    }

    /// Subscribes to a filter. Over MQTT 5 with Retain Handling 1: the
    /// broker sends retained messages only when the subscription is new, not
    /// again on every reconnect of a resumed session (they would reach Kafka
    /// once per reconnect).
    pub async fn subscribe(&self, filter: &str, qos: u8) -> Result<(), String> {
        match self {
            Self::V4(c) => c
                .subscribe(filter, qos4(qos))
                .await
                .map_err(|e| e.to_string()),
            Self::V5(c) => {
                let mut f = m5::Filter::new(filter, qos5(qos));
                f.retain_forward_rule = m5::RetainForwardRule::OnNewSubscribe;
                c.subscribe_many([f]).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Whether this connection speaks MQTT 5.
    pub fn is_v5(&self) -> bool {
        matches!(self, Self::V5(_))
    }

    /// Publishes; MQTT 5 publishes carry the loop-prevention user property.
    pub async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Bytes,
        origin: &Arc<str>,
    ) -> Result<(), String> {
        match self {
            Self::V4(c) => c
                .publish_bytes(topic, qos4(qos), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Self::V5(c) => {
                let props = m5::PublishProperties {
                    user_properties: vec![(ORIGIN_HEADER.to_owned(), origin.to_string())],
                    ..Default::default()
                };
                c.publish_bytes_with_properties(topic, qos5(qos), retain, payload, props)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Sends DISCONNECT after everything queued before it.
    pub async fn disconnect(&self) {
        let _ = match self {
            Self::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Self::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// Capped exponential backoff with jitter for reconnects: from 100 ms,
/// doubling, up to 30 s; the jitter keeps many bridge pods from
/// reconnecting to a restarted broker in lockstep.
#[derive(Debug)]
pub struct Backoff {
    delays: backon::ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delays: Self::delays(),
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(30);

    fn delays() -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Self::FIRST)
            .with_max_delay(Self::CAP)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(Self::CAP)
    }

    /// A connection succeeded.
    pub fn reset(&mut self) {
        self.delays = Self::delays();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_the_wire_values() {
        assert_eq!(puback_code(m5::PubAckReason::NotAuthorized), 0x87);
        assert_eq!(pubrec_code(m5::PubRecReason::QuotaExceeded), 0x97);
        assert_eq!(puback_code(m5::PubAckReason::NoMatchingSubscribers), 0x10);
        assert_eq!(pubrec_code(m5::PubRecReason::PayloadFormatInvalid), 0x99);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..14).map(|_| b.next_delay()).collect();
        // Jitter adds up to the delay itself.
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(delays[1] >= Duration::from_millis(200) && delays[1] <= Duration::from_millis(400));
        assert!(delays[13] >= Duration::from_secs(30) && delays[13] <= Duration::from_secs(60));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }
}
