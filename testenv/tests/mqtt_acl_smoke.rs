//! The `MQTT_ACL_URL` listener enforces an ACL file that tests replace with
//! `testenv::mqtt_acl_set` (the broker re-reads it on SIGHUP). Its own test
//! binary with one test: the ACL is broker-wide state.

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

const TIMEOUT: Duration = Duration::from_secs(15);

/// An MQTT 5 connection to the ACL listener as `user`.
async fn connect_v5(user_var: &str, password_var: &str) -> (AsyncClient, EventLoop) {
    let (host, port) = testenv::mqtt_host_port("MQTT_ACL_URL");
    let mut o = MqttOptions::new(testenv::unique_name("acl-v5"), host, port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_credentials(testenv::var(user_var), testenv::var(password_var));
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("no CONNACK from the ACL listener");
    (client, eventloop)
}

/// Publishes one QoS 1 message and returns the PUBACK's reason code.
async fn publish_v5(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    topic: &str,
    payload: &str,
) -> PubAckReason {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            // rumqttc emits the PUBACK whatever its reason: the caller must read it.
            if let Event::Incoming(Packet::PubAck(ack)) = eventloop.poll().await.unwrap() {
                return ack.reason;
            }
        }
    })
    .await
    .expect("no PUBACK")
}

/// The payload of the next publish the subscriber receives.
async fn next_message(eventloop: &mut EventLoop) -> (String, String) {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.unwrap() {
                return (
                    String::from_utf8(p.topic.to_vec()).unwrap(),
                    String::from_utf8(p.payload.to_vec()).unwrap(),
                );
            }
        }
    })
    .await
    .expect("the subscriber received nothing")
}

/// Publishes one QoS 1 message as the bridge user over MQTT 3.1.1 and waits for its PUBACK.
async fn publish_v311_acked(topic: &str, payload: &str) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let (host, port) = testenv::mqtt_host_port("MQTT_ACL_URL");
    let mut o = MqttOptions::new(testenv::unique_name("acl-311"), host, port);
    o.set_credentials(testenv::var("MQTT_USER"), testenv::var("MQTT_PASSWORD"));
    let (client, mut eventloop) = AsyncClient::new(o, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("no PUBACK over MQTT 3.1.1");
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
}

/// An ACL letting the test user do anything and the bridge user publish only below `allowed`.
fn acl_allowing_bridge(allowed: &str) -> String {
    format!(
        "user {bridge}\ntopic readwrite {allowed}\n\nuser {test}\ntopic readwrite #\n",
        bridge = testenv::var("MQTT_USER"),
        test = testenv::var("MQTT_TEST_USER"),
    )
}

#[tokio::test]
async fn denied_publish_is_refused_over_mqtt5_until_the_acl_allows_it() {
    testenv::install_crypto_provider();
    let prefix = format!("acl-smoke/{}", testenv::unique_name("t"));
    let denied = format!("{prefix}/denied");
    let allowed = format!("{prefix}/allowed");

    let t = Instant::now();
    let _restore_default = testenv::mqtt_acl_override(&acl_allowing_bridge(&allowed));
    println!(
        "mqtt_acl_set (deny {denied}) took {} ms",
        t.elapsed().as_millis()
    );

    // The test user watches everything below the prefix.
    let (watcher, mut watch_loop) = connect_v5("MQTT_TEST_USER", "MQTT_TEST_PASSWORD").await;
    watcher
        .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = watch_loop.poll().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("no SUBACK");
    let watcher_task = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next_message(&mut watch_loop).await);
        }
        drop(watcher);
        got
    });

    // The bridge user, one connection throughout (as a bridge keeps it).
    let (bridge, mut bridge_loop) = connect_v5("MQTT_USER", "MQTT_PASSWORD").await;
    assert_eq!(
        publish_v5(&bridge, &mut bridge_loop, &denied, "refused").await,
        PubAckReason::NotAuthorized,
        "a publish the ACL denies gets PUBACK 0x87 over MQTT 5"
    );
    assert_eq!(
        publish_v5(&bridge, &mut bridge_loop, &allowed, "allowed-1").await,
        PubAckReason::Success,
        "a publish the ACL allows succeeds on the same connection"
    );

    // Over MQTT 3.1.1 the same refusal is a normal PUBACK and the message is
    // dropped: a client cannot tell (why a bridge needs MQTT 5 with broker ACLs).
    publish_v311_acked(&denied, "refused-3.1.1").await;

    let t = Instant::now();
    testenv::mqtt_acl_set(&acl_allowing_bridge(&format!("{prefix}/#")));
    let reload = t.elapsed();
    let t = Instant::now();
    let reason = publish_v5(&bridge, &mut bridge_loop, &denied, "after-fix").await;
    println!(
        "mqtt_acl_set (allow {prefix}/#) took {} ms; the next publish on the open connection: {reason:?} after {} ms",
        reload.as_millis(),
        t.elapsed().as_millis()
    );
    assert_eq!(
        reason,
        PubAckReason::Success,
        "the reloaded ACL applies to the already open connection at once"
    );
    assert_eq!(
        publish_v5(&bridge, &mut bridge_loop, &allowed, "allowed-2").await,
        PubAckReason::Success
    );

    // The refused messages never reached the subscriber; the others did, in order
    // (a dropped 3.1.1 message would have come between `allowed-1` and `after-fix`).
    let got = tokio::time::timeout(TIMEOUT, watcher_task)
        .await
        .expect("the subscriber did not receive 3 messages")
        .unwrap();
    assert_eq!(
        got,
        vec![
            (allowed.clone(), "allowed-1".to_string()),
            (denied.clone(), "after-fix".to_string()),
            (allowed.clone(), "allowed-2".to_string()),
        ]
    );
}
