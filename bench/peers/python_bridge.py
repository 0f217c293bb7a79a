#!/usr/bin/env python3
"""A careful MQTT <-> Kafka bridge in Python, the benchmark's "peer" baseline.

paho-mqtt 2.2.0 (MQTT 3.1.1) + confluent-kafka 2.16.1 (librdkafka).

Acknowledgement behaviour (at least once both ways, like our bridge):
  mqtt-to-kafka: the session is persistent (clean_session=False) and paho runs
    with manual_ack=True; a message is PUBACKed only from its Kafka delivery
    callback, i.e. once Kafka (acks=all, idempotent producer) has the record.
    A record Kafka refused is not acknowledged, so the broker sends it again
    on the next session.
  kafka-to-mqtt: enable.auto.commit=false; every record is published at QoS 1
    and a partition's offset is committed only up to the first record whose
    PUBACK has not arrived yet (commits are batched every COMMIT_EVERY_S).
SIGTERM/SIGINT: stop taking new work, wait for what is in flight (Kafka
delivery reports / PUBACKs), acknowledge or commit it, disconnect, exit 0.

Environment: PEER_DIRECTION (mqtt-to-kafka | kafka-to-mqtt), PEER_MQTT_HOST,
PEER_MQTT_PORT, PEER_MQTT_CLIENT_ID, PEER_QOS, PEER_MQTT_FILTER (M2K),
PEER_MQTT_TOPIC_PREFIX (K2M), PEER_KAFKA_BOOTSTRAP, PEER_KAFKA_TOPIC,
PEER_KAFKA_GROUP (K2M). Prints `peer ready` to stderr once connected and
subscribed (M2K) or assigned (K2M).
"""

import collections
import json
import os
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

COMMIT_EVERY_S = 0.2  # K2M: how often contiguous acknowledged offsets are committed
# K2M: QoS 1 publishes awaiting their PUBACK, at most (Mosquitto takes any
# number). The window is ours, not paho's: paho's max_inflight_messages > 0
# rescans every in-flight message on each PUBACK, so it is set to 0 (no limit).
MAX_PENDING = 2000
DRAIN_TIMEOUT_S = 15.0  # on SIGTERM, longest wait for what is in flight

ENV = os.environ
stop = threading.Event()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sensor_id(payload):
    try:
        return str(json.loads(payload)["sensor_id"])
    except (ValueError, KeyError, TypeError):
        return None


def mqtt_client(clean_session):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=ENV["PEER_MQTT_CLIENT_ID"],
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=not clean_session,
    )
    c.max_queued_messages_set(0)  # unlimited: backpressure is ours (MAX_PENDING)
    c.reconnect_delay_set(1, 5)
    return c


def mqtt_to_kafka():
    qos = int(ENV.get("PEER_QOS", "1"))
    topic = ENV["PEER_KAFKA_TOPIC"]
    producer = Producer({
        "bootstrap.servers": ENV["PEER_KAFKA_BOOTSTRAP"],
        "acks": "all",
        "enable.idempotence": True,
        # We PUBACK only on delivery and Mosquitto holds back what is not
        # PUBACKed (20 at first): every ms of linger costs throughput
        # (measured in a drain: 1 ms ~15k msg/s, 5 ms ~11k msg/s).
        "linger.ms": 1,
        "batch.num.messages": 1000,
        "compression.type": "none",
    })
    client = mqtt_client(clean_session=False)
    generation = [0]  # bumped on each connect: a mid is only valid in its own

    def on_connect(c, _u, _f, rc, _p):
        if rc.is_failure:
            log(f"mqtt connect refused: {rc}")
            return
        generation[0] += 1
        c.subscribe(ENV["PEER_MQTT_FILTER"], qos)

    def on_subscribe(_c, _u, _mid, rcs, _p):
        if any(rc.is_failure for rc in rcs):
            log(f"mqtt subscribe refused: {rcs}")
            stop.set()
        else:
            log("peer ready")

    def on_message(c, _u, msg):
        if stop.is_set():
            return  # not acknowledged: the broker keeps it for the next session
        gen, mid, mqos = generation[0], msg.mid, msg.qos

        def delivered(err, _record):
            if err is not None:
                log(f"kafka delivery failed, not acknowledging: {err}")
            elif mqos > 0 and gen == generation[0]:
                c.ack(mid, mqos)

        sid = sensor_id(msg.payload)
        while not stop.is_set():
            try:
                producer.produce(topic, msg.payload, sid, on_delivery=delivered)
                return
            except BufferError:  # local queue full: let the main thread deliver
                time.sleep(0.01)

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(ENV["PEER_MQTT_HOST"], int(ENV["PEER_MQTT_PORT"]), keepalive=30)
    client.loop_start()
    # Delivery callbacks run inside poll(): here, in the main thread, so they
    # also run while no message arrives (Mosquitto's window is full). They
    # call client.ack(), which queues the PUBACK for paho's network thread.
    while not stop.is_set():
        producer.poll(0.05)
    left = producer.flush(DRAIN_TIMEOUT_S)  # acknowledges what Kafka took
    if left:
        log(f"{left} records still undelivered at exit (not acknowledged)")
    client.disconnect()  # queued after the PUBACKs, so they are sent first
    client.loop_stop()


def kafka_to_mqtt():
    qos = int(ENV.get("PEER_QOS", "1"))
    prefix = ENV["PEER_MQTT_TOPIC_PREFIX"].rstrip("/")
    topic = ENV["PEER_KAFKA_TOPIC"]
    consumer = Consumer({
        "bootstrap.servers": ENV["PEER_KAFKA_BOOTSTRAP"],
        "group.id": ENV["PEER_KAFKA_GROUP"],
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    })
    # One thread does everything (paho's loop() included, no loop_start()):
    # half the CPU of a paho network thread fighting the main one for the GIL.
    client = mqtt_client(clean_session=True)
    client.max_inflight_messages_set(0)
    connected, acked = [False], collections.deque()

    def on_connect(_c, _u, _f, rc, _p):
        if rc.is_failure:
            log(f"mqtt connect refused: {rc}")
        connected[0] = not rc.is_failure

    client.on_connect = on_connect
    client.on_publish = lambda _c, _u, mid, _rc, _p: acked.append(mid)
    client.connect(ENV["PEER_MQTT_HOST"], int(ENV["PEER_MQTT_PORT"]), keepalive=30)
    deadline = time.monotonic() + 30
    while not connected[0] and time.monotonic() < deadline:
        client.loop(0.1)
    if not connected[0]:
        raise SystemExit("mqtt: not connected after 30 s")

    pending = {}  # mid -> (partition, offset); partition None once revoked
    inflight = collections.defaultdict(collections.deque)  # partition -> offsets in order
    done = collections.defaultdict(set)  # partition -> acknowledged, not yet contiguous
    commit_to = {}  # partition -> next offset to commit

    def mark_done(part, off):
        q, d = inflight[part], done[part]
        d.add(off)
        while q and q[0] in d:
            d.discard(q[0])
            commit_to[part] = q.popleft() + 1

    def settle():
        while acked:
            part, off = pending.pop(acked.popleft(), (None, None))
            if part is not None and part in inflight:
                mark_done(part, off)

    def commit(sync=False):
        if commit_to:
            offsets = [TopicPartition(topic, p, o) for p, o in commit_to.items()]
            commit_to.clear()
            try:
                consumer.commit(offsets=offsets, asynchronous=not sync)
            except KafkaException as e:
                log(f"commit failed: {e}")

    def on_revoke(_c, parts):
        settle()
        commit(sync=True)
        gone = {tp.partition for tp in parts}
        for part in gone:  # what is unacknowledged there comes again to the next owner
            inflight.pop(part, None)
            done.pop(part, None)
        for mid, (part, _) in list(pending.items()):
            if part in gone:
                pending[mid] = (None, None)

    def mqtt_io(timeout):  # PUBACKs in (-> acked), queued publishes out, keepalive
        if client.loop(timeout) != mqtt.MQTT_ERR_SUCCESS and not stop.is_set():
            log("mqtt connection lost, reconnecting")
            time.sleep(1)
            try:
                client.reconnect()  # paho sends the unacknowledged publishes again
            except OSError as e:
                log(f"mqtt reconnect failed: {e}")
        settle()

    consumer.subscribe([topic], on_assign=lambda _c, _p: log("peer ready"), on_revoke=on_revoke)
    last_commit = time.monotonic()
    while not stop.is_set():
        records = []
        if len(pending) < MAX_PENDING:
            records = consumer.consume(num_messages=500, timeout=0 if pending else 0.05)
        for rec in records:
            if rec.error():
                if rec.error().code() != KafkaError._PARTITION_EOF:
                    log(f"kafka: {rec.error()}")
                continue
            part, off, value = rec.partition(), rec.offset(), rec.value()
            inflight[part].append(off)
            sid = sensor_id(value)
            if sid is None:  # nothing to publish: counts as handled
                log(f"no sensor_id in record {part}/{off}, skipped")
                mark_done(part, off)
            elif qos == 0:
                client.publish(f"{prefix}/{sid}", value, 0)
                mark_done(part, off)
            else:
                pending[client.publish(f"{prefix}/{sid}", value, qos).mid] = (part, off)
        mqtt_io(0 if records else 0.01)
        if time.monotonic() - last_commit >= COMMIT_EVERY_S:
            commit()
            last_commit = time.monotonic()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while any(p is not None for p, _ in pending.values()) and time.monotonic() < deadline:
        mqtt_io(0.05)
    commit(sync=True)
    consumer.close()
    client.disconnect()


def main():
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    direction = ENV.get("PEER_DIRECTION")
    if direction == "mqtt-to-kafka":
        mqtt_to_kafka()
    elif direction == "kafka-to-mqtt":
        kafka_to_mqtt()
    else:
        raise SystemExit(f"PEER_DIRECTION must be mqtt-to-kafka or kafka-to-mqtt, not {direction!r}")


if __name__ == "__main__":
    main()
