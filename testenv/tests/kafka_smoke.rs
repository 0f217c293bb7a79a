//! The test Kafka is a real broker with SASL/SCRAM, SASL_SSL and no automatic
//! topic creation, reached through rdkafka as the product reaches it.

use std::time::Duration;

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn scram_plaintext() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", testenv::var("KAFKA_SASL_BOOTSTRAP"))
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", testenv::var("KAFKA_SCRAM_USER"))
        .set("sasl.password", testenv::var("KAFKA_SCRAM_PASSWORD"));
    c
}

fn scram_ssl() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", testenv::var("KAFKA_SSL_BOOTSTRAP"))
        .set("security.protocol", "SASL_SSL")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", testenv::var("KAFKA_SCRAM_USER"))
        .set("sasl.password", testenv::var("KAFKA_SCRAM_PASSWORD"))
        .set("ssl.ca.location", testenv::var("KAFKA_CA_FILE"));
    c
}

async fn create_topic(config: &ClientConfig, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Produces `count` keyed records and consumes them back from the beginning.
async fn round_trip(config: ClientConfig, partitions: i32) {
    let topic = testenv::unique_name("smoke");
    create_topic(&config, &topic, partitions).await;

    let producer: FutureProducer = config.clone().set("acks", "all").create().unwrap();
    for i in 0..20 {
        let key = format!("sensor-{}", i % 5);
        let payload = format!("{{\"seq\":{i}}}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(20),
            )
            .await
            .unwrap();
    }

    let consumer: StreamConsumer = config
        .clone()
        .set("group.id", testenv::unique_name("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    let mut partitions_seen = std::collections::BTreeSet::new();
    let mut stream = consumer.stream();
    tokio::time::timeout(Duration::from_secs(60), async {
        while seen.len() < 20 {
            let m = stream.next().await.unwrap().unwrap();
            partitions_seen.insert(m.partition());
            seen.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    })
    .await
    .expect("did not consume the 20 records back");
    seen.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("{{\"seq\":{i}}}")).collect();
    want.sort();
    assert_eq!(seen, want);
    assert!(
        partitions_seen.len() > 1,
        "5 keys over {partitions} partitions landed in one: {partitions_seen:?}"
    );
}

#[tokio::test]
async fn ten_partition_topic_round_trip_over_sasl_scram_plaintext() {
    round_trip(scram_plaintext(), 10).await;
}

#[tokio::test]
async fn round_trip_over_sasl_scram_sha_256() {
    let mut config = scram_plaintext();
    config.set("sasl.mechanism", "SCRAM-SHA-256");
    round_trip(config, 2).await;
}

#[tokio::test]
async fn round_trip_over_sasl_ssl() {
    round_trip(scram_ssl(), 3).await;
}

#[tokio::test]
async fn plain_mechanism_and_plaintext_listener_work() {
    let mut plain = ClientConfig::new();
    plain
        .set("bootstrap.servers", testenv::var("KAFKA_SASL_BOOTSTRAP"))
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "PLAIN")
        .set("sasl.username", testenv::var("KAFKA_PLAIN_USER"))
        .set("sasl.password", testenv::var("KAFKA_PLAIN_PASSWORD"));
    round_trip(plain, 2).await;
    let mut plaintext = ClientConfig::new();
    plaintext.set("bootstrap.servers", testenv::var("KAFKA_BOOTSTRAP"));
    round_trip(plaintext, 2).await;
}

/// Collects the errors librdkafka reports, as a user would see them in logs.
#[derive(Default)]
struct ErrorLog(std::sync::Mutex<Vec<String>>);

impl rdkafka::ClientContext for ErrorLog {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.0.lock().unwrap().push(format!("{error}: {reason}"));
    }
}

impl rdkafka::consumer::ConsumerContext for ErrorLog {}

#[tokio::test]
async fn wrong_password_is_refused() {
    for mut config in [scram_plaintext(), scram_ssl()] {
        config.set("sasl.password", "not-the-password");
        let consumer: rdkafka::consumer::BaseConsumer<ErrorLog> =
            config.create_with_context(ErrorLog::default()).unwrap();
        let metadata = tokio::task::spawn_blocking(move || {
            let r = consumer
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|_| ());
            // Errors reach the context when the client is polled.
            for _ in 0..20 {
                if !consumer.context().0.lock().unwrap().is_empty() {
                    break;
                }
                let _ = consumer.poll(Duration::from_millis(100));
            }
            (r, consumer)
        })
        .await
        .unwrap();
        let (result, consumer) = metadata;
        assert!(result.is_err(), "metadata fetched with a wrong password");
        let errors = consumer.context().0.lock().unwrap().join("\n");
        assert!(
            errors.contains("Authentication failed"),
            "no authentication failure reported: {errors}"
        );
    }
}

#[tokio::test]
async fn automatic_topic_creation_is_off() {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", testenv::var("KAFKA_BOOTSTRAP"))
        .set("message.timeout.ms", "3000");
    let producer: FutureProducer = config.create().unwrap();
    let topic = testenv::unique_name("not-created");
    let result = producer
        .send(
            FutureRecord::to(&topic).key("k").payload("v"),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        result.is_err(),
        "producing to an unknown topic succeeded: auto-creation is on"
    );
}
