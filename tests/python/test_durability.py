"""Durability through real clients: restarts (SIGTERM), crashes (SIGKILL) and a damaged
store. qgate only: each test runs its own broker processes on its own data dir."""

import os
import shutil
import tempfile
import time

import pika
import pytest

from crashlib import run_round
from qgate_proc import Memcache, Qgate

pytestmark = pytest.mark.skipif(bool(os.environ.get("QGATE_TEST_AMQP_URL")),
                                reason="starts and kills its own qgate processes")


@pytest.fixture
def data_dir():
    d = tempfile.mkdtemp(prefix="qgate-durability-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def channel(broker):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.amqp_port))
    return conn, conn.channel()


def drain(ch, queue):
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, method.redelivered, props))


def test_restart_keeps_durable_things_and_drops_transient_ones(data_dir):
    b = Qgate(data_dir).start()
    conn, ch = channel(b)
    ch.confirm_delivery()
    ch.exchange_declare("logs-x", "topic", durable=True)
    ch.queue_declare("keep", durable=True)
    ch.queue_bind("keep", "logs-x", "app.#")
    ch.queue_declare("gone", durable=False)
    ch.basic_publish("", "keep", b"persistent-1", pika.BasicProperties(delivery_mode=2, headers={"h": 1}))
    ch.basic_publish("", "keep", b"transient", pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", "gone", b"in-transient-queue", pika.BasicProperties(delivery_mode=2))
    conn.close()
    mc = Memcache(b.memcache_port)
    assert mc.set("mcq", b"over memcache", flags=42) == b"STORED"
    mc.close()
    assert b.stop() == 0

    b = Qgate(data_dir).start()
    try:
        assert "repair" not in b.log().lower()
        conn, ch = channel(b)
        got = drain(ch, "keep")
        assert [g[0] for g in got] == [b"persistent-1"]
        assert got[0][2].headers == {"h": 1}
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare("gone", passive=True)
        assert e.value.reply_code == 404
        ch = conn.channel()
        # The durable exchange and its binding still route.
        ch.confirm_delivery()
        ch.basic_publish("logs-x", "app.web", b"routed", pika.BasicProperties(delivery_mode=2))
        assert [g[0] for g in drain(ch, "keep")] == [b"routed"]
        conn.close()
        mc = Memcache(b.memcache_port)
        assert mc.get("mcq") == (42, b"over memcache")
        mc.close()
    finally:
        assert b.stop() == 0


def test_unacked_persistent_message_comes_back_redelivered(data_dir):
    b = Qgate(data_dir).start()
    conn, ch = channel(b)
    ch.confirm_delivery()
    ch.queue_declare("work", durable=True)
    for i in range(3):
        ch.basic_publish("", "work", b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    method, _, body = ch.basic_get("work", auto_ack=False)
    assert body == b"m0"
    # The delivered mark is written without waiting for the disk; give the store's
    # writer a moment (a crash within that window reports redelivered=false).
    time.sleep(0.3)
    b.kill()
    b = Qgate(data_dir).start()
    try:
        conn, ch = channel(b)
        got = drain(ch, "work")
        assert [(g[0], g[1]) for g in got] == [(b"m0", True), (b"m1", False), (b"m2", False)]
        conn.close()
    finally:
        assert b.stop() == 0


def test_acked_messages_do_not_come_back(data_dir):
    b = Qgate(data_dir).start()
    conn, ch = channel(b)
    ch.confirm_delivery()
    ch.queue_declare("acks", durable=True)
    for i in range(50):
        ch.basic_publish("", "acks", b"%d" % i, pika.BasicProperties(delivery_mode=2))
    for i in range(30):
        method, _, _ = ch.basic_get("acks", auto_ack=False)
        ch.basic_ack(method.delivery_tag)
    conn.close()
    assert b.stop() == 0
    b = Qgate(data_dir).start()
    try:
        conn, ch = channel(b)
        assert [g[0] for g in drain(ch, "acks")] == [b"%d" % i for i in range(30, 50)]
        conn.close()
    finally:
        assert b.stop() == 0


def test_second_broker_on_same_data_dir_is_refused(data_dir):
    b = Qgate(data_dir).start()
    try:
        second = Qgate(data_dir)
        with pytest.raises(RuntimeError) as e:
            second.start(timeout=10)
        assert "lock" in str(e.value).lower()
    finally:
        assert b.stop() == 0


def test_damaged_store_starts_and_serves_the_rest(data_dir):
    b = Qgate(data_dir).start()
    conn, ch = channel(b)
    ch.confirm_delivery()
    ch.queue_declare("dmg", durable=True)
    for i in range(100):
        ch.basic_publish("", "dmg", b"payload-%03d" % i + b"x" * 200, pika.BasicProperties(delivery_mode=2))
    conn.close()
    b.kill()
    segs = sorted(os.listdir(os.path.join(data_dir, "segments")))
    last = os.path.join(data_dir, "segments", segs[-1])
    size = os.path.getsize(last)
    with open(last, "r+b") as f:
        # Flip a byte inside an early record, and tear the tail mid-record.
        f.seek(size // 3)
        byte = f.read(1)
        f.seek(size // 3)
        f.write(bytes([byte[0] ^ 0xFF]))
        f.truncate(size - 37)
    b = Qgate(data_dir).start()
    try:
        conn, ch = channel(b)
        bodies = [g[0] for g in drain(ch, "dmg")]
        # Some records are gone (the flipped one, the torn tail); the rest are intact
        # and in order.
        assert 80 <= len(bodies) < 100
        idx = [int(x[8:11]) for x in bodies]
        assert idx == sorted(idx)
        assert all(x == b"payload-%03d" % int(x[8:11]) + b"x" * 200 for x in bodies)
        log = b.log().lower()
        assert "truncat" in log or "corrupt" in log
        conn.close()
    finally:
        assert b.stop() == 0


@pytest.mark.timeout(300)
def test_crash_rounds(data_dir):
    """kill -9 at random moments under load: nothing confirmed or STORED is lost."""
    totals = {"confirmed": 0, "stored": 0, "duplicated": 0}
    for seed in range(5):
        r = run_round(data_dir, seed)
        assert r["lost"] == [], "round %d lost %d messages, e.g. %s" % (seed, len(r["lost"]), r["lost"][:5])
        assert r["corrupted"] == [], "round %d corrupted %s" % (seed, r["corrupted"][:5])
        assert r["exit_code"] == 0
        for k in ("confirmed", "stored", "duplicated"):
            totals[k] += r[k]
    # The rounds must actually have exercised both front ends.
    assert totals["confirmed"] > 0 and totals["stored"] > 0
    print("crash rounds: %s" % totals)


def test_memory_alarm_blocks_and_unblocks_publishers(data_dir):
    """Past --memory-high-watermark, publishing connections are paused and told
    (connection.blocked); once the queue drains they resume (connection.unblocked)."""
    b = Qgate(data_dir, fsync="never", extra=["--memory-high-watermark", "300000"]).start()
    try:
        events = []
        pub = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.amqp_port))
        pub.add_on_connection_blocked_callback(lambda c, m: events.append("blocked"))
        pub.add_on_connection_unblocked_callback(lambda c, m: events.append("unblocked"))
        pch = pub.channel()
        pch.queue_declare("alarm")
        for i in range(600):
            pch.basic_publish("", "alarm", b"%04d" % i + b"x" * 1020)
        deadline = time.time() + 10
        while "blocked" not in events and time.time() < deadline:
            pub.process_data_events(0.1)
        assert events == ["blocked"]
        # A consumer on another connection is not blocked and drains the queue.
        conn, ch = channel(b)
        drained = drain(ch, "alarm")
        assert len(drained) >= 290
        deadline = time.time() + 10
        while "unblocked" not in events and time.time() < deadline:
            pub.process_data_events(0.1)
        assert events == ["blocked", "unblocked"]
        # Everything published was kept: the alarm paused the publisher, it lost nothing.
        pub.process_data_events(0.5)
        rest = drain(ch, "alarm")
        assert len(drained) + len(rest) == 600
        pub.close()
        conn.close()
    finally:
        assert b.stop() == 0


def _segments_bytes(data_dir):
    seg = os.path.join(data_dir, "segments")
    return sum(os.path.getsize(os.path.join(seg, f)) for f in os.listdir(seg))


def test_fanout_to_ten_durable_queues_stores_each_body_once(data_dir):
    b = Qgate(data_dir).start()
    try:
        conn, ch = channel(b)
        ch.confirm_delivery()
        ch.exchange_declare("fan", "fanout", durable=True)
        queues = [f"fan-{i}" for i in range(10)]
        for q in queues:
            ch.queue_declare(q, durable=True)
            ch.queue_bind(q, "fan")
        before = _segments_bytes(data_dir)
        body = b"x" * 16384
        n = 200
        for i in range(n):
            ch.basic_publish("fan", "", body + str(i).encode(), pika.BasicProperties(delivery_mode=2))
        grew = _segments_bytes(data_dir) - before
        payload = n * len(body)
        # Ten queues, one copy of each body (plus record headers and the queue list).
        assert grew < payload * 1.3, f"{grew} bytes on disk for {payload} bytes of bodies"
        conn.close()
        assert b.stop() == 0

        b = Qgate(data_dir).start()
        conn, ch = channel(b)
        for q in queues[:9]:
            got = drain(ch, q)
            assert [g[0] for g in got] == [body + str(i).encode() for i in range(n)], q
        conn.close()
        # Nine queues took their copies: the last one still holds every body.
        assert b.stop() == 0
        b = Qgate(data_dir).start()
        conn, ch = channel(b)
        assert [g[0] for g in drain(ch, queues[9])] == [body + str(i).encode() for i in range(n)]
        for q in queues[:9]:
            assert drain(ch, q) == []
        conn.close()
    finally:
        b.stop()
