"""Upstream mode (issue 15): qgate as a memcache gateway in front of a 3-node RabbitMQ
cluster (tests/rabbitmq-cluster, started once for this module).

1. The memcache suite (test_memcache.py) runs again with the memcache listener of a
   gateway and pika talking to the cluster itself, except the tests whose semantics
   differ upstream (listed in UPSTREAM_DIFFERS with the reason; the README's semantics
   table says the same).
2. Upstream-only behaviour: quorum queues, SERVER_ERROR instead of STORED when the
   cluster is unreachable, the AMQP listener off, metrics and /api/upstream.
3. Two gateways serving one queue, and failover: a node SIGKILLed mid-run while
   producers set through the gateway and an AMQP consumer reads from the cluster.

Skipped when Debian's rabbitmq-server is not installed.
"""

import json
import os
import socket
import threading
import time
import urllib.request

import pika
import pytest

import test_memcache
from conftest import Broker
from helpers import uniq
from test_memcache import *  # noqa: F401,F403  (the suite, rerun against upstream)
from test_memcache import MC, qname
from upstream_env import Cluster, Gateway, have_rabbitmq

pytestmark = [
    pytest.mark.memcache,
    pytest.mark.skipif(not have_rabbitmq(), reason="needs Debian's rabbitmq-server"),
    # The cluster's start (about 30 s, more on a busy machine) is fixture set-up: only
    # the test bodies are timed.
    pytest.mark.timeout(120, func_only=True),
]

# Tests of test_memcache.py not rerun here, and why.
UPSTREAM_DIFFERS = {
    # Starts a local qgate of its own (fresh_broker): nothing upstream about it.
    "test_curr_connections_counts_memcache_connections": "local broker",
    # Declares the queue without x-queue-type and expects local mode's durable 406
    # text; upstream the queue is a quorum queue: test_quorum_queue_visible_to_amqp.
    "test_memcache_set_to_pika_consumer": "quorum queue arguments",
    # Runs 20,000 messages through a 2-core cluster: the failover test covers load.
    "test_concurrent_producers_and_mixed_consumers_exactly_once": "too slow upstream",
}
for _name in UPSTREAM_DIFFERS:
    globals().pop(_name, None)

CLUSTER_BASE = int(os.environ.get("QGATE_TEST_CLUSTER_BASE", "26100"))


@pytest.fixture(scope="module")
def cluster():
    """Started once for the module (about 30 s). QGATE_TEST_CLUSTER_DIR: use the cluster
    already running there (`tests/rabbitmq-cluster start DIR`) and leave it running."""
    reuse = os.environ.get("QGATE_TEST_CLUSTER_DIR")
    if reuse:
        c = Cluster(base=CLUSTER_BASE, dir=reuse)
        c.url = c._run("urls", reuse)
        yield c
        return
    c = Cluster(base=CLUSTER_BASE)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def gateway(cluster):
    g = Gateway(cluster.url).start()
    try:
        yield g
    finally:
        assert g.stop() == 0, g.log()


@pytest.fixture(scope="module")
def broker(cluster, gateway):
    """What test_memcache.py calls the broker: AMQP = the cluster's node 1 (clients talk
    to the cluster directly), memcache = the gateway."""
    return Broker("127.0.0.1", cluster.port(1), "127.0.0.1", gateway.memcache_port,
                  gateway.http_port)


@pytest.fixture
def mc_addr(broker):
    return broker.memcache_host, broker.memcache_port


def amqp(cluster, node=1):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", cluster.port(node), credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1, blocked_connection_timeout=30))


def http_get(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        return r.read().decode()


# ================================================================ upstream semantics


def test_quorum_queue_visible_to_amqp(cluster, mc):
    """`set` declares a durable quorum queue on the cluster; pika reads the message with
    its flags header, as from a local qgate."""
    q = qname("quorum")
    mc.set(q, b"from memcache \x00\r\n", flags=1234)
    c = amqp(cluster, 2)
    try:
        ch = c.channel()
        ok = ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        assert ok.method.message_count == 1
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
            c.channel().queue_declare(q, durable=True, arguments={"x-queue-type": "classic"})
        assert ei.value.reply_code == 406  # it is a quorum queue
        m, props, body = c.channel().basic_get(q, auto_ack=True)
        assert body == b"from memcache \x00\r\n"
        assert props.headers.get("x-memcache-flags") == 1234
        assert props.delivery_mode == 2
    finally:
        c.close()


def test_classic_queue_type_is_configurable(cluster):
    g = Gateway(cluster.url, ["--config", _config_file({"queue_type": "classic"})]).start()
    try:
        c = MC(("127.0.0.1", g.memcache_port))
        q = qname("classic")
        c.set(q, b"x")
        conn = amqp(cluster)
        try:
            ok = conn.channel().queue_declare(q, durable=True,
                                              arguments={"x-queue-type": "classic"})
            assert ok.method.message_count == 1
            conn.channel().queue_delete(q)
        finally:
            conn.close()
        c.close()
    finally:
        assert g.stop() == 0, g.log()


def _config_file(upstream):
    import tempfile
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write("[upstream]\n")
    for k, v in upstream.items():
        f.write("%s = %s\n" % (k, json.dumps(v)))
    f.close()
    return f.name


def test_amqp_listener_off(gateway):
    assert "amqp" not in gateway.ports, gateway.log()
    assert "AMQP listener is off" in gateway.log()
    listeners = {l["protocol"] for l in gateway.api("overview")["listeners"]}
    assert "amqp" not in listeners and "memcache" in listeners, listeners


def test_pipelined_sets_answered_in_order_and_kept_in_order(mc):
    q = qname("pipe").encode()
    n = 200
    mc.send(b"".join(b"set %s %d 0 %d\r\n%s\r\n" % (q, i, len(b"m%d" % i), b"m%d" % i)
                     for i in range(n)))
    mc.expect(b"STORED\r\n" * n)
    vals = []
    for _ in range(n // 50):
        mc.send(b"get " + b" ".join([q] * 50) + b"\r\n")
        vals += mc.read_values()
    assert [(f, d) for _k, f, d in vals] == [(i, b"m%d" % i) for i in range(n)]


def test_unreachable_cluster_answers_server_error_never_stored():
    """A gateway whose nodes all refuse connections: `set` answers SERVER_ERROR (the
    client retries), `get` SERVER_ERROR, and the connection stays usable."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nothing listens there now
    g = Gateway("amqp://guest:guest@127.0.0.1:%d/%%2f" % dead,
                ["--config", _config_file({"publish_attempts": 2})]).start()
    try:
        c = MC(("127.0.0.1", g.memcache_port))
        c.send(b"set q 0 0 1\r\nx\r\n")
        line = c.read_line()
        assert line.startswith(b"SERVER_ERROR upstream"), line
        c.send(b"set q 0 0 1 noreply\r\nx\r\n")  # errors are answered despite noreply
        assert c.read_line().startswith(b"SERVER_ERROR")
        c.send(b"get q\r\n")
        assert c.read_line().startswith(b"SERVER_ERROR")
        assert c.cmd(b"version").startswith(b"VERSION")
        c.close()
        status = g.api("upstream")
        assert status["operations"]["set"]["error"] == 2
        assert status["connect_failures"] >= 2
    finally:
        assert g.stop() == 0, g.log()


def test_metrics_and_status(gateway, mc):
    q = qname("metrics")
    mc.set(q, b"1")
    mc.set(q, b"2")
    assert mc.get(q) == (0, b"1")
    text = http_get(gateway.http_port, "/metrics")
    assert 'qgate_upstream_operations_total{operation="set",result="ok"}' in text
    assert "qgate_upstream_confirm_seconds_bucket" in text
    assert 'qgate_upstream_connections{node="127.0.0.1:%d"}' % CLUSTER_BASE_PORT(1) in text
    status = gateway.api("upstream")
    assert status["operations"]["set"]["ok"] >= 2
    assert status["confirms"] >= 2 and status["confirm_p99_ms"] > 0
    assert len(status["nodes"]) == 3
    assert sum(1 for c in status["connections"] if c["connected"]) == 3
    # the depth poller (every 2 s) reports what is left in the queue
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = gateway.api("upstream")
        if status["queues"].get(q, {}).get("messages_ready") == 1:
            break
        time.sleep(0.3)
    assert status["queues"][q] == {"messages_ready": 1, "consumers": 0}
    assert 'qgate_upstream_queue_messages_ready{queue="%s"} 1' % q in http_get(
        gateway.http_port, "/metrics")
    # qgate ctl status prints the same figures (local cookie in the gateway's data dir)
    import subprocess
    from upstream_env import qgate_bin
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGATE_")}
    out = subprocess.run(
        [qgate_bin(), "ctl", "--url", "http://127.0.0.1:%d" % gateway.ports["management"],
         "--data-dir", gateway.data_dir, "status"],
        capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\nUpstream\n" in text, text
    assert text.count(", connected") == 3, text
    assert "Queue %s: messages_ready 1, consumers 0" % q in text, text
    assert "Confirm latency: p50 " in text and "Possible duplicates: " in text, text


def CLUSTER_BASE_PORT(n):
    return CLUSTER_BASE + n


def test_dropped_client_requeues_open_read(cluster, mc_addr):
    q = qname("drop")
    a = MC(mc_addr)
    a.set(q, b"reliable")
    a.send(b"get " + q.encode() + b"/open\r\n")
    assert a.read_get_response(q.encode() + b"/open") == (0, b"reliable")
    a.close()
    c = amqp(cluster, 3)
    try:
        deadline = time.monotonic() + 10
        while True:
            m, _p, body = c.channel().basic_get(q, auto_ack=True)
            if m is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert body == b"reliable" and m.redelivered is True
    finally:
        c.close()


def test_hang_up_during_timed_get_ends_the_wait(mc, mc_addr):
    """As in local mode: a client gone during `get q/t=<ms>` is noticed at once (its
    connection leaves curr_connections long before the wait would have ended), and an
    open read it was polling for is not held."""
    q = qname("hangup")
    before = int(test_memcache.read_stats(mc)["curr_connections"])
    c = MC(mc_addr)
    c.send(b"get " + q.encode() + b"/t=20000/open\r\n")
    time.sleep(0.3)
    c.close()
    deadline = time.monotonic() + 3
    while int(test_memcache.read_stats(mc)["curr_connections"]) != before:
        assert time.monotonic() < deadline, "the timed get kept the connection"
        time.sleep(0.05)
    mc.set(q, b"after")
    assert mc.get(q) == (0, b"after")


# ================================================================ two gateways


def test_two_gateways_serve_one_queue(cluster, gateway):
    second = Gateway(cluster.url).start()
    try:
        a = MC(("127.0.0.1", gateway.memcache_port))
        b = MC(("127.0.0.1", second.memcache_port))
        q = qname("two")
        for i in range(20):
            (a if i % 2 == 0 else b).set(q, b"%d" % i)
        got = []
        for i in range(20):
            v = (b if i % 2 == 0 else a).get(q)
            assert v is not None
            got.append(v[1])
        assert sorted(got, key=int) == [b"%d" % i for i in range(20)]
        assert a.get(q) is None and b.get(q) is None
        # an open read on one gateway is invisible to the other until aborted
        a.set(q, b"held")
        a.send(b"get " + q.encode() + b"/open\r\n")
        assert a.read_get_response(q.encode() + b"/open") == (0, b"held")
        assert b.get(q) is None
        a.send(b"get " + q.encode() + b"/abort\r\n")
        a.expect(b"END\r\n")
        # A quorum queue applies the return of a closed channel's message through its
        # log, just after close-ok: another reader may have to wait a moment.
        deadline = time.monotonic() + 5
        got = b.get(q)
        while got is None and time.monotonic() < deadline:
            time.sleep(0.05)
            got = b.get(q)
        assert got == (0, b"held")
        b.send(b"delete " + q.encode() + b"\r\n")
        b.expect(b"DELETED\r\n")
        a.send(b"delete " + q.encode() + b"\r\n")
        a.expect(b"NOT_FOUND\r\n")
        a.close()
        b.close()
    finally:
        assert second.stop() == 0, second.log()


# ================================================================ failover


@pytest.mark.timeout(300, func_only=True)
def test_failover_node_killed_mid_run(cluster, gateway):
    """Producers set numbered messages through the gateway while a pika consumer reads
    from the cluster; the queue's leader node is SIGKILLed mid-run and restarted. Every
    message that got STORED is consumed (0 lost); duplicates are counted (retries after
    a lost confirm) and reported."""
    q = qname("failover")
    qb = q.encode()
    seed = MC(("127.0.0.1", gateway.memcache_port))
    seed.set(q, b"seed")  # declares the queue; its leader is the declaring link's node
    assert seed.get(q) == (0, b"seed")
    seed.close()
    victim = cluster.leader(q)
    stored, errors, consumed = set(), [], []
    lock = threading.Lock()
    stop = threading.Event()
    producers_done = threading.Event()

    def producer(p):
        c = None
        i = 0
        while not stop.is_set():
            try:
                if c is None:
                    c = MC(("127.0.0.1", gateway.memcache_port), timeout=60)
                batch = [b"p%d-%d" % (p, j) for j in range(i, i + 10)]
                c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (qb, len(m), m) for m in batch))
                for m in batch:
                    line = c.read_line()
                    if line == b"STORED\r\n":
                        with lock:
                            stored.add(m)
                    else:
                        assert line.startswith(b"SERVER_ERROR"), line
                        with lock:
                            errors.append(m)
                i += 10
            except (OSError, EOFError) as e:
                errors.append(("producer", p, repr(e)))
                c = None
                time.sleep(0.1)
        if c:
            c.close()

    def consumer():
        nodes = [n for n in (1, 2, 3) if n != victim] + [victim]
        k = 0
        idle_since = None
        while True:
            try:
                conn = amqp(cluster, nodes[k % 3])
                ch = conn.channel()
                ch.basic_qos(prefetch_count=100)
                for method, _props, body in ch.consume(q, inactivity_timeout=1):
                    if method is None:
                        if producers_done.is_set():
                            with lock:
                                missing = stored - set(consumed)
                            if not missing:
                                if idle_since is None:
                                    idle_since = time.monotonic()
                                if time.monotonic() - idle_since > 2:
                                    conn.close()
                                    return
                        continue
                    idle_since = None
                    with lock:
                        consumed.append(body)
                    ch.basic_ack(method.delivery_tag)
            except pika.exceptions.AMQPError:
                k += 1
                time.sleep(0.5)

    prods = [threading.Thread(target=producer, args=(p,), daemon=True) for p in range(3)]
    cons = threading.Thread(target=consumer, daemon=True)
    for t in prods + [cons]:
        t.start()
    time.sleep(4)
    stored_before_kill = len(stored)
    cluster.kill(victim)
    killed_at = time.monotonic()
    time.sleep(4)
    stored_during_outage = len(stored) - stored_before_kill
    cluster.restart(victim)
    time.sleep(2)
    stop.set()
    for t in prods:
        t.join(120)
    producers_done.set()
    cons.join(180)
    assert not cons.is_alive(), "consumer did not drain the queue"
    with lock:
        lost = stored - set(consumed)
        dups = len(consumed) - len(set(consumed))
    status = gateway.api("upstream")
    report = ("failover: victim=node%d stored=%d (before kill %d, during outage %d) "
              "consumed=%d lost=%d duplicates=%d server_errors=%d retries=%s "
              "possible_duplicates=%d outage=%.1fs" % (
                  victim, len(stored), stored_before_kill, stored_during_outage,
                  len(consumed), len(lost), dups, len(errors), status["publish_retries"],
                  status["possible_duplicates"], time.monotonic() - killed_at))
    print(report)
    assert not lost, "lost %d STORED messages, e.g. %r" % (len(lost), sorted(lost)[:5])
    assert stored_during_outage > 0, "nothing was stored while a node was down: " + report
    # A duplicate needs a retried publish whose first copy was enqueued after all.
    assert dups <= status["possible_duplicates"] + status["get_ack_failures"] + \
        sum(status["publish_retries"].values()), report
    c = amqp(cluster, 1)
    try:
        c.channel().queue_delete(q)
    finally:
        c.close()


# ================================================================ configuration


@pytest.mark.parametrize("url", ["http://h:5672/", "amqp://u:p@h1,,h2/", "amqp://h:port/"])
def test_bad_upstream_url_is_refused_by_name(url):
    import subprocess
    from upstream_env import qgate_bin
    r = subprocess.run([qgate_bin(), "--upstream", url, "--memcache-listen", "127.0.0.1:0",
                        "--http-listen", "127.0.0.1:0"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert "upstream.url" in r.stderr, r.stderr
