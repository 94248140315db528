"""Hardening (issue 14): bounded memory per connection, listener limits, slow and
hostile clients, connection churn. Each test starts its own qgate (flags of its own)
on a private data directory; all are qgate-only."""

import os
import socket
import statistics
import struct
import tempfile
import threading
import time
import urllib.request

import pika
import pytest

from qgate_proc import Qgate
from rawamqp import (RawConnection, basic_consume, channel_open, method_frame,
                     CONNECTION_CLOSE, CHANNEL_OPEN_OK, PROTOCOL_HEADER)

pytestmark = pytest.mark.skipif(bool(os.environ.get("QGATE_TEST_AMQP_URL")),
                                reason="qgate-only: starts its own brokers")


@pytest.fixture
def start():
    """start(*flags) -> a running Qgate, stopped (and required to exit 0) at teardown."""
    procs = []
    dirs = []

    def _start(*extra, fsync="never"):
        d = tempfile.mkdtemp(prefix="qgate-harden-")
        dirs.append(d)
        q = Qgate(d, fsync=fsync, extra=list(extra)).start()
        procs.append(q)
        return q

    yield _start
    for q in procs:
        assert q.stop() == 0, q.log()[-3000:]


def rss(q):
    with open("/proc/%d/status" % q.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fds(q):
    return len(os.listdir("/proc/%d/fd" % q.proc.pid))


def metrics(q):
    url = "http://127.0.0.1:%d/metrics" % q.ports["http"]
    return urllib.request.urlopen(url, timeout=10).read().decode()


def metric(q, name):
    for line in metrics(q).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no %s" % name)


def pika_conn(q, **kw):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", q.amqp_port, connection_attempts=1, **kw))


def ready(q, queue):
    c = pika_conn(q)
    try:
        return c.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        c.close()


def mc_connect(q, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", q.memcache_port))
    return s


def mc_set_many(q, queue, n, size):
    """n pipelined `set ... noreply`, then one `version` round trip."""
    s = mc_connect(q)
    one = b"set %s 0 0 %d noreply\r\n%s\r\n" % (queue.encode(), size, b"m" * size)
    sent = 0
    while sent < n:
        k = min(1000, n - sent)
        s.sendall(one * k)
        sent += k
    s.sendall(b"version\r\n")
    buf = b""
    while b"VERSION" not in buf:
        chunk = s.recv(4096)
        assert chunk, "memcache closed during the sets: %r" % buf[-200:]
        buf += chunk
    assert b"ERROR" not in buf, buf[:200]
    s.close()


def raw_conn(q):
    """A raw AMQP client without Nagle (its handshake is several small writes)."""
    raw = RawConnection("127.0.0.1", q.amqp_port)
    raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return raw


def stalled_consumer(q, queue, no_ack):
    """A raw AMQP consumer (prefetch 0: unlimited) that stops reading at once."""
    raw = RawConnection("127.0.0.1", q.amqp_port)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.handshake()
    raw.send(channel_open(1))
    raw.expect(CHANNEL_OPEN_OK)
    raw.send(basic_consume(1, queue, tag="stalled", no_ack=no_ack))
    raw.expect((60, 21))
    return raw


# ---- bounded memory per connection --------------------------------------------------

@pytest.mark.timeout(180)
def test_consumer_with_acks_that_never_reads_leaves_100k_messages_in_the_queue(start):
    """Prefetch 0 (unlimited) with acks used to push the whole queue into the
    connection's write queue; now a write window bounds it, RSS stays flat and every
    message is still there."""
    q = start()
    mc_set_many(q, "win", 1, 10)  # declares the durable queue
    base = rss(q)
    raw = stalled_consumer(q, "win", no_ack=False)
    n, size = 100_000, 1000
    mc_set_many(q, "win", n, size)
    time.sleep(1.0)
    grown = rss(q) - base
    left = ready(q, "win")
    buffered = metric(q, "qgate_write_buffer_bytes")
    # What left the queue sits in kernel socket buffers (a few MB) or the window (1000).
    assert left >= n + 1 - 8000, "only %d of %d messages left ready" % (left, n + 1)
    assert buffered <= 8 * 1024 * 1024, buffered
    # The queue itself keeps its messages in memory (body + ~160 bytes each): RSS may
    # grow by that much, not by copies of them queued for the stalled client.
    assert grown < 1.5 * n * size, "RSS grew by %d MB for %d MB published" % (
        grown >> 20, n * size >> 20)
    raw.close()
    # The unacked deliveries return: every message is still in the queue.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and ready(q, "win") < n + 1:
        time.sleep(0.2)
    assert ready(q, "win") == n + 1


@pytest.mark.timeout(120)
def test_memcache_get_of_many_keys_not_read_stays_bounded(start):
    """One `get q q q ...` of 1000 keys of 100 KB messages (100 MB of answers) from a
    client that never reads: the session writes as it goes, so it takes only what the
    socket absorbs and the rest stays in the queue."""
    q = start()
    n, size = 1000, 100 * 1024
    mc_set_many(q, "pipe", n, size)
    s = mc_connect(q, rcvbuf=4096)
    s.sendall(b"get " + b" ".join([b"pipe"] * 400) + b"\r\n")
    time.sleep(1.5)
    left = ready(q, "pipe")
    assert left >= n - 150, "only %d of %d left: the answers were buffered" % (left, n)
    assert metric(q, "qgate_write_buffer_bytes") <= 2 * 1024 * 1024
    s.close()


# ---- limits ---------------------------------------------------------------------------

def test_amqp_connection_max_refuses_with_a_reason(start):
    q = start("--amqp-connection-max", "2")
    a, b = pika_conn(q), pika_conn(q)
    # The close comes at connection.open (as RabbitMQ's vhost and user connection
    # limits), which pika reports as a ProbableAccessDeniedError carrying the close.
    with pytest.raises(pika.exceptions.AMQPConnectionError) as e:
        pika_conn(q)
    assert "(530) 'NOT_ALLOWED - connection refused: node connection limit (2) is reached'" in str(e.value)
    a.close()
    # A place freed up: the next client gets in.
    deadline = time.monotonic() + 5
    while True:
        try:
            c = pika_conn(q)
            break
        except pika.exceptions.AMQPConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    c.close()
    b.close()


def test_memcache_connection_max_answers_server_error(start):
    q = start("--memcache-connection-max", "2")
    a, b = mc_connect(q), mc_connect(q)
    a.sendall(b"version\r\n")
    assert a.recv(100).startswith(b"VERSION")
    c = mc_connect(q)
    data = b""
    while True:
        chunk = c.recv(100)
        if not chunk:
            break
        data += chunk
    assert data == b"SERVER_ERROR too many connections\r\n"
    b.sendall(b"version\r\n")
    assert b.recv(100).startswith(b"VERSION")
    a.close()
    b.close()


def test_handshake_timeout_closes_a_silent_client(start):
    q = start("--handshake-timeout", "500")
    s = socket.create_connection(("127.0.0.1", q.amqp_port))
    s.settimeout(5)
    t0 = time.monotonic()
    assert s.recv(100) == b""
    assert 0.3 < time.monotonic() - t0 < 3


def test_memcache_idle_timeout_is_opt_in(start):
    q = start("--memcache-idle-timeout", "1")
    idle = mc_connect(q)
    busy = mc_connect(q)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 2.5:
        busy.sendall(b"version\r\n")
        assert busy.recv(100).startswith(b"VERSION")
        time.sleep(0.3)
    idle.settimeout(5)
    assert idle.recv(100) == b""
    # Without the flag nothing is closed (memcached's default).
    q2 = start()
    s = mc_connect(q2)
    time.sleep(1.5)
    s.sendall(b"version\r\n")
    assert s.recv(100).startswith(b"VERSION")


def test_channel_max_and_frame_max_flags_are_negotiated(start):
    q = start("--channel-max", "8", "--frame-max", "8192", "--max-message-size", "1000")
    raw = RawConnection("127.0.0.1", q.amqp_port)
    channel_max, frame_max, _ = raw.handshake(frame_max=8192)
    assert (channel_max, frame_max) == (8, 8192)
    raw.close()
    c = pika_conn(q)
    ch = c.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", "x", b"y" * 1001)
        ch.queue_declare("after")  # a round trip to see the close
    assert e.value.reply_code == 406
    c.close()


def test_limits_are_in_metrics(start):
    q = start("--amqp-connection-max", "77", "--memcache-idle-timeout", "9")
    text = metrics(q)
    for line in ['qgate_limit{limit="amqp_connection_max"} 77',
                 'qgate_limit{limit="memcache_connection_max"} 1024',
                 'qgate_limit{limit="channel_max"} 2047',
                 'qgate_limit{limit="frame_max"} 131072',
                 'qgate_limit{limit="max_message_size"} 134217728',
                 'qgate_limit{limit="handshake_timeout_ms"} 10000',
                 'qgate_limit{limit="memcache_idle_timeout_seconds"} 9',
                 'qgate_limit{limit="table_max_depth"} 64',
                 'qgate_limit{limit="consumer_write_window"} 1000']:
        assert line in text, line


# ---- slow and hostile clients -------------------------------------------------------

def round_trips(q, n):
    """n memcache set+get round trips and n AMQP publish+get round trips, in ms."""
    times = []
    s = mc_connect(q)
    c = pika_conn(q)
    ch = c.channel()
    ch.queue_declare("rt")
    for i in range(n):
        t0 = time.perf_counter()
        s.sendall(b"set rtm 0 0 2\r\nhi\r\nget rtm\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            buf += s.recv(4096)
        times.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        ch.basic_publish("", "rt", b"x")
        while ch.basic_get("rt", auto_ack=True)[0] is None:
            pass
        times.append((time.perf_counter() - t0) * 1000)
    s.close()
    c.close()
    return times


@pytest.mark.timeout(120)
def test_1000_trickling_and_stuck_clients_do_not_slow_a_normal_client(start):
    q = start()
    baseline = round_trips(q, 20)
    socks = []
    for i in range(1000):
        port = q.amqp_port if i % 2 else q.memcache_port
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
    stop = threading.Event()
    amqp_prefix = PROTOCOL_HEADER[:5]

    def trickle():
        # One byte per connection every ~2 s: AMQP ones never finish the protocol
        # header, memcache ones never finish a command line.
        i = 0
        while not stop.is_set():
            for k, s in enumerate(socks):
                byte = amqp_prefix[i % 5:i % 5 + 1] if k % 2 else b"g"
                try:
                    s.send(byte)
                except OSError:
                    pass
            i += 1
            stop.wait(2)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(1)
        during = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:  # three trickle rounds
            during += round_trips(q, 10)
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()
    p90 = sorted(during)[int(len(during) * 0.9)]
    assert p90 < 50, "p90 round trip %.1f ms with 1000 slow clients (baseline median %.1f ms)" % (
        p90, statistics.median(baseline))


@pytest.mark.timeout(300)
def test_connection_churn_10000_leaks_nothing(start):
    q = start()

    def churn(n):
        for i in range(n):
            if i % 4 == 0:
                raw = raw_conn(q)
                raw.handshake()
                raw.send(method_frame(0, CONNECTION_CLOSE,
                                      struct.pack(">H", 200) + b"\x02ok" + struct.pack(">HH", 0, 0)))
                raw.read_frame()  # close-ok
                raw.close()
            else:
                s = mc_connect(q)
                s.sendall(b"version\r\n")
                s.recv(100)
                s.close()

    churn(500)  # warm up allocator and runtime
    time.sleep(1)
    fd0, rss0 = fds(q), rss(q)
    churn(10_000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and fds(q) > fd0 + 2:
        time.sleep(0.2)
    assert fds(q) <= fd0 + 2, "fds %d -> %d" % (fd0, fds(q))
    grown = rss(q) - rss0
    assert grown < 8 * 1024 * 1024, "RSS grew by %d KB over 10,000 connections" % (grown >> 10)
    assert metric(q, 'qgate_connections{protocol="amqp"}') == 0


@pytest.mark.timeout(120)
def test_idle_amqp_connections_within_documented_memory(start):
    """README (Performance): <= 20 KiB per idle AMQP connection (2,000 here; the
    10,000 of the README take qgate-bench idle and a release build)."""
    q = start()
    warm = [raw_conn(q) for _ in range(50)]
    for r in warm:
        r.handshake()
    time.sleep(0.5)
    base = rss(q)
    n = 2000
    conns = []
    for _ in range(n):
        r = raw_conn(q)
        r.handshake()
        conns.append(r)
    time.sleep(1)
    per = (rss(q) - base) / n
    for r in conns + warm:
        r.close()
    # The README's figure is for the release build (14.9 KiB measured); a debug build's
    # futures are larger (19.5 KiB measured), so it gets a little room.
    limit = 20 if "/release/" in (os.environ.get("QGATE_BIN") or "") else 24
    assert per <= limit * 1024, "%.1f KiB per idle connection" % (per / 1024)
