//! The test Kafka enforces ACLs (KRaft `StandardAuthorizer`) for one SCRAM
//! user, `KAFKA_LIMITED_USER`, which has no rights until a test grants them
//! with `testenv::kafka_acl`; every other user stays a super user. These tests
//! also check which ACLs a bridge's user needs (documented on `kafka_acl`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use testenv::{AclChange, KafkaOperation, KafkaResource};

/// How long a granted or revoked ACL may take to reach a running client.
const APPLY_TIMEOUT: Duration = Duration::from_secs(120);

fn limited(mechanism: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", testenv::var("KAFKA_SASL_BOOTSTRAP"))
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", mechanism)
        .set("sasl.username", testenv::var("KAFKA_LIMITED_USER"))
        .set("sasl.password", testenv::var("KAFKA_LIMITED_PASSWORD"));
    c
}

/// The PLAINTEXT listener: `User:ANONYMOUS`, a super user.
fn super_user() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", testenv::var("KAFKA_BOOTSTRAP"));
    c
}

async fn create_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = super_user().create().unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// A producer configured like the bridge's: idempotent, acks=all.
fn idempotent_producer(mechanism: &str) -> FutureProducer {
    limited(mechanism)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// Sends one record; the error code if Kafka (or librdkafka) refused it.
async fn send(producer: &FutureProducer, topic: &str, payload: &str) -> Result<(), KafkaError> {
    producer
        .send(
            FutureRecord::to(topic).key("k").payload(payload),
            Duration::from_secs(15),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// Sends `payload` until the broker takes it; returns how long that took.
async fn send_until_accepted(producer: &FutureProducer, topic: &str, payload: &str) -> Duration {
    let started = Instant::now();
    loop {
        match send(producer, topic, payload).await {
            Ok(()) => return started.elapsed(),
            Err(e)
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed) =>
            {
                assert!(
                    started.elapsed() < APPLY_TIMEOUT,
                    "still refused {}s after the grant",
                    APPLY_TIMEOUT.as_secs()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected error after the grant: {e}"),
        }
    }
}

/// Every payload in the topic, read by the super user.
async fn topic_contents(topic: &str, expected: usize) -> Vec<String> {
    let consumer: StreamConsumer = super_user()
        .set("group.id", testenv::unique_name("acl-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let mut stream = consumer.stream();
    tokio::time::timeout(Duration::from_secs(60), async {
        while got.len() < expected {
            let m = stream.next().await.unwrap().unwrap();
            got.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("read only {got:?} of {expected} records"));
    got
}

/// Runs `f` and prints how long it took.
fn timed(what: &str, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    println!("{what}: {} ms", t.elapsed().as_millis());
}

/// `testenv::kafka_grant` for the limited user, printing how long the grant took.
fn grant(resource: KafkaResource<'_>, operations: &[KafkaOperation]) -> testenv::KafkaGrant {
    let t = Instant::now();
    let granted = testenv::kafka_grant(&testenv::kafka_limited_principal(), resource, operations);
    println!(
        "kafka_grant {operations:?} on {resource:?}: {} ms",
        t.elapsed().as_millis()
    );
    granted
}

fn fatal_error(producer: &FutureProducer) -> Option<(RDKafkaErrorCode, String)> {
    producer.client().fatal_error()
}

#[tokio::test]
async fn limited_user_produces_only_while_it_has_write_and_describe() {
    let principal = testenv::kafka_limited_principal();
    let other = testenv::unique_name("acl-other");
    let topic = testenv::unique_name("acl-produce");
    create_topic(&other).await;
    create_topic(&topic).await;

    // 1. A user that may write to no topic at all: the idempotent producer's
    //    InitProducerId is refused and librdkafka makes that fatal.
    //    (This binary's other test grants no Write, so nothing interferes.)
    let doomed = idempotent_producer("SCRAM-SHA-512");
    let refused = send(&doomed, &topic, "no-rights").await.unwrap_err();
    assert_eq!(
        refused.rdkafka_error_code(),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "without ACLs: {refused}"
    );
    let started = Instant::now();
    while fatal_error(&doomed).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the producer got a producer id without any Write ACL: does {principal} hold \
             ACLs left by an earlier run? `cargo xtask testenv down` resets them"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, reason) = fatal_error(&doomed).unwrap();
    println!("an idempotent producer without any Write ACL: fatal {code:?}: {reason}");
    assert_eq!(code, RDKafkaErrorCode::ClusterAuthorizationFailed);
    drop(doomed);

    // 2. The bridge's case: it may write to another topic (its other route),
    //    not to this one. Describe + Write on a topic is all an idempotent
    //    producer needs: no IdempotentWrite on the cluster.
    let _other_grant = grant(
        KafkaResource::Topic(&other),
        &[KafkaOperation::Describe, KafkaOperation::Write],
    );
    let producer = idempotent_producer("SCRAM-SHA-512");
    send(&producer, &other, "other-route")
        .await
        .expect("Describe + Write on a topic is enough for an idempotent producer");
    let refused = send(&producer, &topic, "before-grant").await.unwrap_err();
    assert_eq!(
        refused.rdkafka_error_code(),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed),
        "without ACLs on the topic: {refused}"
    );

    let topic_grant = grant(
        KafkaResource::Topic(&topic),
        &[KafkaOperation::Describe, KafkaOperation::Write],
    );
    let took = send_until_accepted(&producer, &topic, "after-grant").await;
    println!(
        "the running producer got its first record accepted {} ms after kafka_acl returned",
        took.as_millis()
    );
    let fresh = idempotent_producer("SCRAM-SHA-256");
    let took = send_until_accepted(&fresh, &topic, "after-grant-sha256").await;
    println!(
        "a new producer (SCRAM-SHA-256): first record accepted after {} ms",
        took.as_millis()
    );

    timed("kafka_acl revoke [Write]", || {
        testenv::kafka_acl(
            AclChange::Revoke,
            &principal,
            KafkaResource::Topic(&topic),
            &[KafkaOperation::Write],
        )
    });
    let started = Instant::now();
    loop {
        match send(&producer, &topic, "after-revoke").await {
            Err(e)
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::TopicAuthorizationFailed) =>
            {
                break;
            }
            Err(e) => panic!("unexpected error after the revoke: {e}"),
            Ok(()) => assert!(
                started.elapsed() < APPLY_TIMEOUT,
                "still accepted {}s after the revoke",
                APPLY_TIMEOUT.as_secs()
            ),
        }
    }
    println!(
        "the running producer was refused again {} ms after kafka_acl returned",
        started.elapsed().as_millis()
    );
    assert!(
        fatal_error(&producer).is_none(),
        "a refused topic is not fatal while the user may write elsewhere"
    );
    send(&producer, &other, "other-route-still-works")
        .await
        .expect("the other topic keeps working");
    drop(topic_grant);

    let got = topic_contents(&topic, 2).await;
    assert!(
        got.iter().all(|p| p.starts_with("after-grant")),
        "only records sent while Write was granted are in the topic: {got:?}"
    );
}

#[tokio::test]
async fn limited_user_consumes_only_with_read_on_topic_and_group() {
    let topic = testenv::unique_name("acl-consume");
    let group = testenv::unique_name("acl-group");
    create_topic(&topic).await;
    let producer: FutureProducer = super_user().create().unwrap();
    for i in 0..3 {
        producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&format!("r{i}")),
                Duration::from_secs(15),
            )
            .await
            .unwrap();
    }
    let consumer: StreamConsumer = limited("SCRAM-SHA-512")
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();

    // Without ACLs the consumer only gets errors.
    let refused = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("no error within 30 s without ACLs")
        .expect_err("consumed without ACLs");
    println!("without ACLs the consumer reports: {refused}");
    assert!(
        matches!(
            refused.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::TopicAuthorizationFailed
            )
        ),
        "{refused}"
    );

    let _topic_grant = grant(
        KafkaResource::Topic(&topic),
        &[KafkaOperation::Describe, KafkaOperation::Read],
    );
    let _group_grant = grant(KafkaResource::Group(&group), &[KafkaOperation::Read]);
    let started = Instant::now();
    let mut got = Vec::new();
    let mut errors = Vec::new();
    while got.len() < 3 {
        assert!(
            started.elapsed() < APPLY_TIMEOUT,
            "consumed {got:?} in {}s after the grant; errors: {errors:?}",
            APPLY_TIMEOUT.as_secs()
        );
        match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Ok(m)) => got.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap()),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => {}
        }
    }
    println!(
        "the consumer created before the grant read all 3 records {} ms after the grants ({} errors in between)",
        started.elapsed().as_millis(),
        errors.len()
    );
    assert_eq!(got, ["r0", "r1", "r2"]);
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("committing offsets needs only Read on the group");
}
