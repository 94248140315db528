"""Deep queues (issue 13): a queue far longer than its in-memory window.

With ``--queue-window N`` a queue keeps at most N ready messages in memory (and
``--queue-window-bytes B`` at most B ready bytes); beyond that new messages are paged to
the store and read back in order as the queue drains. Persistent messages of durable
queues page to their durable record; transient ones (and everything in a non-durable
queue) page to transient records that a restart drops. Queues with ``x-max-priority``,
``x-max-length``, ``x-max-length-bytes`` or ``x-message-ttl`` never page.

What is observable from outside, and checked here through real clients:
- every message comes back exactly once, in publish order, with its properties, through
  AMQP consumers (pika) and memcache ``get``, across a consumer dying with unacked
  messages and across ``kill -9``;
- the management API's RabbitMQ fields (``messages_paged_out``,
  ``message_bytes_paged_out``, ``messages_ram``, ``messages_ready_ram``,
  ``message_bytes_ram``) and the per-queue gauges on /metrics say what is in memory,
  while ``messages_ready`` keeps counting every message;
- resident memory (/proc/<pid>/status VmRSS) stays far below the queued payload, where
  ``--queue-window 0`` (never page) holds all of it;
- purging or deleting a paged-out queue gives its disk back (segments/).

Publishing uses ``deeplib.ConfirmPublisher`` (pipelined publisher confirms on a raw
socket) so that 100,000 confirmed messages take seconds on a debug build.
"""

import base64
import json
import os
import random
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import pika
import pytest
from pymemcache.client.base import Client as PyMemcache

from deeplib import ConfirmPublisher, MemcacheBulk
from qgate_proc import Qgate

pytestmark = [
    pytest.mark.qgate_only,
    pytest.mark.slow,
    # Each takes 1-40 s on a debug build on two busy cores; headroom over pytest.ini's 60.
    pytest.mark.timeout(180),
    pytest.mark.skipif(bool(os.environ.get("QGATE_TEST_AMQP_URL")),
                       reason="starts, kills and restarts its own qgate processes"),
]

WINDOW = 1000
# Read-ahead may hold a little more than the window at a quiet moment; not twice as much.
SLACK = WINDOW // 10 + 16
# Messages in the big tests (QGATE_DEEP_N scales them for a faster or slower machine).
DEEP_N = int(os.environ.get("QGATE_DEEP_N", "100000"))
KiB, MiB = 1 << 10, 1 << 20


# ---- brokers ----------------------------------------------------------------------------

@pytest.fixture
def start():
    """start(*flags, window=WINDOW, fsync="never", data_dir=None) -> a running Qgate.
    Every broker still running at the end must stop cleanly (exit status 0)."""
    procs, dirs = [], []

    def _start(*extra, window=WINDOW, fsync="never", data_dir=None):
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="qgate-deep-")
            dirs.append(data_dir)
        flags = list(extra)
        if window is not None:
            flags = ["--queue-window", str(window)] + flags
        q = Qgate(data_dir, fsync=fsync, extra=flags).start()
        procs.append(q)
        return q

    yield _start
    try:
        for q in procs:
            if q.proc is not None:
                code = q.stop(timeout=30)
                assert code == 0, "qgate exited with %s on SIGTERM:\n%s" % (code, tail(q))
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def tail(q, n=40):
    return "\n".join(q.lines[-n:])


def connect(q):
    return pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", q.amqp_port, connection_attempts=1, heartbeat=0,
        blocked_connection_timeout=120))


def declare(q, name, durable=True, arguments=None):
    conn = connect(q)
    conn.channel().queue_declare(name, durable=durable, arguments=arguments)
    conn.close()


def publish(q, name, bodies, **kw):
    """Publishes with confirms (pipelined); returns once every one is confirmed."""
    p = ConfirmPublisher(q.amqp_port)
    try:
        p.publish(name, bodies, **kw)
    finally:
        p.close()


# ---- what the broker says ---------------------------------------------------------------

def mgmt_get(q, path):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (q.ports["management"], path))
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def mgmt_queue(q, name, vhost="/"):
    return mgmt_get(q, "/api/queues/%s/%s" % (urllib.parse.quote(vhost, safe=""),
                                              urllib.parse.quote(name, safe="")))


METRIC_RE = re.compile(r'^(qgate_queue_[a-z_]+)\{([^}]*)\} (\S+)$')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def queue_metrics(q, name, vhost="/"):
    """{metric name: value} of the per-queue series of queue ``name``."""
    url = "http://127.0.0.1:%d/metrics" % q.ports["http"]
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    out = {}
    for line in text.splitlines():
        m = METRIC_RE.match(line)
        if m:
            labels = dict(LABEL_RE.findall(m.group(2)))
            if labels.get("queue") == name and labels.get("vhost") == vhost:
                out[m.group(1)] = float(m.group(3))
    return out


PAGING_FIELDS = ["messages_paged_out", "message_bytes_paged_out", "messages_ram",
                 "messages_ready_ram", "message_bytes_ram"]


def paging(info):
    """The paging fields of a management queue object (missing ones are a failure)."""
    missing = [f for f in PAGING_FIELDS if f not in info]
    assert not missing, "management queue object lacks %s: %r" % (missing, info)
    return {f: info[f] for f in PAGING_FIELDS + ["messages", "messages_ready",
                                                 "messages_unacknowledged",
                                                 "message_bytes_ready"]}


def settled(q, name, pred, timeout=20.0):
    """Polls the management queue object until pred(fields) holds; returns the last
    fields seen (the caller asserts on them, so a timeout reports what was there)."""
    deadline = time.monotonic() + timeout
    while True:
        info = paging(mgmt_queue(q, name))
        if pred(info) or time.monotonic() > deadline:
            return info
        time.sleep(0.1)


def paged_deep(window, n):
    """The state of a deep queue of n ready messages with no consumer, at rest."""
    def pred(i):
        return (i["messages_ready"] == n and i["messages_paged_out"] > 0
                and i["messages_ready_ram"] <= window + SLACK
                and i["messages_ram"] <= window + SLACK
                and i["messages_ready_ram"] + i["messages_paged_out"] == n)
    return pred


def assert_paged_deep(info, window, n):
    assert info["messages_ready"] == n and info["messages"] == n, info
    assert info["messages_paged_out"] > 0, ("nothing paged out past the window", info)
    assert info["messages_ready_ram"] <= window + SLACK, ("window not kept", info)
    assert info["messages_ram"] <= window + SLACK, ("window not kept", info)
    # every ready message is either in memory or paged out
    assert info["messages_ready_ram"] + info["messages_paged_out"] == n, info


def assert_body_bytes(info, n, body_size):
    """RabbitMQ's message_bytes_* count body bytes, wherever the message is: paging a
    message must not change what message_bytes_ready says about it."""
    assert info["message_bytes_ready"] == n * body_size, info
    assert info["message_bytes_paged_out"] == info["messages_paged_out"] * body_size, info
    assert info["message_bytes_ram"] == info["messages_ram"] * body_size, info


def status_kib(q, field):
    with open("/proc/%d/status" % q.proc.pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, q.proc.pid))


def rss(q):
    return status_kib(q, "VmRSS") * KiB


def memory_report(q):
    return "VmRSS %d KiB, RssAnon %d KiB, RssFile %d KiB, VmHWM %d KiB" % tuple(
        status_kib(q, f) for f in ("VmRSS", "RssAnon", "RssFile", "VmHWM"))


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass  # deleted while we walked
    return total


def wait_until(pred, timeout):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---- messages ---------------------------------------------------------------------------

def body(i, size=64):
    """Message i: its number, repeated to the given size (corruption shows)."""
    head = b"%08d:" % i
    return (head * (size // len(head) + 1))[:size]


def ident(data):
    return int(data[:8])


def check_sequence(got, expected, what):
    """got and expected are lists of message numbers; says precisely how they differ."""
    if got == expected:
        return
    first = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b),
                 min(len(got), len(expected)))
    seen, dups = set(), []
    for g in got:
        if g in seen:
            dups.append(g)
        seen.add(g)
    want = set(expected)
    missing = sorted(want - seen)
    unexpected = sorted(seen - want)
    raise AssertionError(
        "%s: got %d messages, expected %d; first difference at position %d (got %r, "
        "expected %r); %d duplicated (e.g. %r), %d missing (e.g. %r), %d unexpected "
        "(e.g. %r)" % (what, len(got), len(expected), first, got[first:first + 5],
                       expected[first:first + 5], len(dups), dups[:5], len(missing),
                       missing[:5], len(unexpected), unexpected[:5]))


def consume(q, name, n, prefetch=1000, timeout=90.0, check_body=None):
    """basic_consume with manual acks (one multiple ack per half prefetch, at most 200)
    until n messages came; then a short wait for anything beyond n. Returns [(number,
    redelivered, props)] of everything delivered, all acked. check_body(i, data)
    validates each body."""
    ack_every = max(1, min(200, prefetch // 2))
    conn = connect(q)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got, bad = [], []
    last, acked = [0], [0]

    def on_message(ch_, method, props, data):
        i = ident(data)
        got.append((i, method.redelivered, props))
        if check_body is not None and not check_body(i, data) and len(bad) < 5:
            bad.append((i, data[:40]))
        last[0] = method.delivery_tag
        if len(got) % ack_every == 0:
            ch_.basic_ack(method.delivery_tag, multiple=True)
            acked[0] = method.delivery_tag

    ch.basic_consume(name, on_message)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    conn.process_data_events(time_limit=0.3)  # a duplicate would show up here
    if last[0] > acked[0]:
        ch.basic_ack(last[0], multiple=True)
    conn.close()
    assert not bad, "corrupted bodies (number, first bytes): %r" % bad
    return got


# ---- 1. order -----------------------------------------------------------------------------

def test_deep_queue_pages_out_and_delivers_every_message_once_in_order(start):
    n, size = DEEP_N, 64
    b = start()
    declare(b, "deep")
    publish(b, "deep", (body(i, size) for i in range(n)), message_id=lambda i: "m%d" % i)

    info = settled(b, "deep", paged_deep(WINDOW, n))
    assert_paged_deep(info, WINDOW, n)
    # /metrics shows the same state (rabbitmq_prometheus names, qgate's prefix)
    m = queue_metrics(b, "deep")
    assert m.get("qgate_queue_messages_ready") == n, m
    assert m.get("qgate_queue_messages_paged_out") == info["messages_paged_out"], (m, info)
    assert m.get("qgate_queue_messages_paged_out_bytes") == info["message_bytes_paged_out"], m
    assert m.get("qgate_queue_messages_ram") == info["messages_ram"], (m, info)
    assert m.get("qgate_queue_messages_ram_bytes") == info["message_bytes_ram"], (m, info)
    # the queue listing carries the same fields
    listed = [x for x in mgmt_get(b, "/api/queues/%2F") if x["name"] == "deep"]
    assert len(listed) == 1 and paging(listed[0]) == info, (listed, info)

    got = consume(b, "deep", n, check_body=lambda i, d: d == body(i, size))
    check_sequence([g[0] for g in got], list(range(n)), "consumed from a paged-out queue")
    assert not any(g[1] for g in got), "redelivered set on a first delivery"
    wrong_ids = [(g[0], g[2].message_id) for g in got if g[2].message_id != "m%d" % g[0]]
    assert not wrong_ids, "properties lost or mixed up in paging: %r" % wrong_ids[:5]
    assert all(g[2].delivery_mode == 2 for g in got), "delivery_mode lost in paging"

    info = settled(b, "deep", lambda i: i["messages"] == 0 and i["messages_ram"] == 0)
    assert (info["messages"], info["messages_paged_out"], info["messages_ram"],
            info["message_bytes_paged_out"], info["message_bytes_ram"]) == (0, 0, 0, 0, 0), info


def test_message_bytes_count_bodies_whether_paged_or_not(start):
    """message_bytes_ready / _paged_out / _ram are body bytes, as RabbitMQ counts them
    (and as qgate counts a queue that does not page): paging a message does not change
    what the queue says it holds. Properties make the stored record larger than the
    body, so a count of record bytes shows here."""
    n, size = 5000, 100
    b = start()
    declare(b, "bytes")
    publish(b, "bytes", (body(i, size) for i in range(n)), message_id=lambda i: "id-%d" % i)
    info = settled(b, "bytes", paged_deep(WINDOW, n))
    assert_paged_deep(info, WINDOW, n)
    assert_body_bytes(info, n, size)
    m = queue_metrics(b, "bytes")
    assert m.get("qgate_queue_messages_paged_out_bytes") == n * size - info["message_bytes_ram"], m


def test_window_bytes_caps_the_ready_bytes_in_memory(start):
    """--queue-window-bytes pages by size when the count window is far away."""
    n, size, cap = 20000, 1024, 256 * KiB
    b = start("--queue-window-bytes", str(cap), window=1000000)
    declare(b, "by-bytes")
    publish(b, "by-bytes", (body(i, size) for i in range(n)))
    cap_msgs = cap // size
    info = settled(b, "by-bytes", paged_deep(cap_msgs, n))
    assert_paged_deep(info, cap_msgs, n)
    assert info["message_bytes_ram"] <= cap + SLACK * size, info
    got = consume(b, "by-bytes", n, check_body=lambda i, d: d == body(i, size))
    check_sequence([g[0] for g in got], list(range(n)), "consumed past a byte window")


def test_window_from_the_environment_and_the_config_file(start, monkeypatch, tmp_path):
    """QGATE_QUEUE_WINDOW and the TOML keys queue_window / queue_window_bytes set the
    window like the flags."""
    n = 3000
    monkeypatch.setenv("QGATE_QUEUE_WINDOW", "100")
    b = start(window=None)
    declare(b, "env-window")
    publish(b, "env-window", (body(i) for i in range(n)))
    assert_paged_deep(settled(b, "env-window", paged_deep(100, n)), 100, n)
    got = consume(b, "env-window", n)
    check_sequence([g[0] for g in got], list(range(n)), "consumed with an env window")
    assert b.stop() == 0
    monkeypatch.delenv("QGATE_QUEUE_WINDOW")

    cfg = tmp_path / "qgate.toml"
    cfg.write_text("queue_window = 1000000\nqueue_window_bytes = %d\n" % (200 * 1024))
    b = start("--config", str(cfg), window=None)
    declare(b, "toml-window")
    publish(b, "toml-window", (body(i, 1024) for i in range(n)))
    assert_paged_deep(settled(b, "toml-window", paged_deep(200, n)), 200, n)
    got = consume(b, "toml-window", n)
    check_sequence([g[0] for g in got], list(range(n)), "consumed with a TOML byte window")


# ---- 2. a consumer dies mid-stream --------------------------------------------------------

def test_consumer_dying_mid_stream_gets_its_unacked_messages_redelivered_first(start):
    n, prefetch = DEEP_N // 2, 100
    acked_upto = n // 5  # the first consumer acks messages 0 .. acked_upto-1
    b = start()
    declare(b, "dies")
    publish(b, "dies", (body(i) for i in range(n)))
    assert_paged_deep(settled(b, "dies", paged_deep(WINDOW, n)), WINDOW, n)

    conn = connect(b)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    first = []

    def on_message(ch_, method, _props, data):
        first.append((ident(data), method.redelivered))
        if len(first) <= acked_upto and len(first) % 50 == 0:
            ch_.basic_ack(method.delivery_tag, multiple=True)

    ch.basic_consume("dies", on_message)
    deadline = time.monotonic() + 60
    while len(first) < acked_upto + prefetch and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    conn.process_data_events(time_limit=0.3)
    check_sequence([f[0] for f in first], list(range(acked_upto + prefetch)),
                   "first consumer (prefetch %d)" % prefetch)
    held = settled(b, "dies", lambda i: i["messages_unacknowledged"] == prefetch)
    assert held["messages_unacknowledged"] == prefetch, held
    assert held["messages_ready"] == n - acked_upto - prefetch, held
    assert held["messages_paged_out"] > 0, ("the rest should still be paged out", held)
    # RabbitMQ: messages_ram = ready in memory + unacked in memory (all of them here)
    assert held["messages_ram"] == held["messages_ready_ram"] + prefetch, held
    conn.close()  # dies holding `prefetch` unacked messages

    rest = n - acked_upto
    got = consume(b, "dies", rest)
    check_sequence([g[0] for g in got], list(range(acked_upto, n)), "second consumer")
    unacked = set(range(acked_upto, acked_upto + prefetch))
    wrong = [(i, r) for i, r, _ in got if r != (i in unacked)]
    assert not wrong, ("redelivered must be set exactly on the %d messages the dead "
                       "consumer held; wrong (number, redelivered): %r" % (prefetch, wrong[:10]))
    info = settled(b, "dies", lambda i: i["messages"] == 0)
    assert (info["messages"], info["messages_paged_out"]) == (0, 0), info


def test_publishing_while_a_deep_queue_drains_keeps_one_order(start):
    """New messages go behind the paged-out ones, also when the consumer has emptied
    the window, caught up with the publisher, and the queue deepens again."""
    n0, n1 = DEEP_N * 3 // 10, DEEP_N * 3 // 10
    b = start()
    declare(b, "live")
    publish(b, "live", (body(i) for i in range(n0)))
    assert_paged_deep(settled(b, "live", paged_deep(WINDOW, n0)), WINDOW, n0)

    errors = []

    def publisher():
        rnd = random.Random(7)
        try:
            p = ConfirmPublisher(b.amqp_port)
            i = n0
            while i < n0 + n1:
                k = min(n0 + n1 - i, rnd.randint(1, 8000))
                p.publish("live", (body(j) for j in range(i, i + k)))
                i += k
                time.sleep(rnd.uniform(0, 0.3))
            p.close()
        except Exception as e:  # reported by the test
            errors.append(e)

    t = threading.Thread(target=publisher, daemon=True)
    t.start()
    got = consume(b, "live", n0 + n1, prefetch=200)
    t.join(30)
    assert not errors, errors
    check_sequence([g[0] for g in got], list(range(n0 + n1)),
                   "consumed while publishing into a paged-out queue")
    info = settled(b, "live", lambda i: i["messages"] == 0)
    assert (info["messages"], info["messages_paged_out"], info["messages_ram"]) == (0, 0, 0), info


def test_competing_consumers_share_a_deep_queue_each_in_order(start):
    n = DEEP_N // 4
    b = start()
    declare(b, "shared")
    publish(b, "shared", (body(i) for i in range(n)))
    assert_paged_deep(settled(b, "shared", paged_deep(WINDOW, n)), WINDOW, n)
    conns, seen = [], []
    for prefetch in (50, 300):
        c = connect(b)
        ch = c.channel()
        ch.basic_qos(prefetch_count=prefetch)
        mine = []

        def on_message(ch_, method, _props, data, mine=mine):
            mine.append(ident(data))
            ch_.basic_ack(method.delivery_tag)

        ch.basic_consume("shared", on_message)
        conns.append(c)
        seen.append(mine)
    deadline = time.monotonic() + 90
    while sum(map(len, seen)) < n and time.monotonic() < deadline:
        for c in conns:
            c.process_data_events(time_limit=0.02)
    for c in conns:
        c.process_data_events(time_limit=0.2)
        c.close()
    for k, mine in enumerate(seen):
        assert mine, "consumer %d got nothing" % k
        check_sequence(mine, sorted(mine), "consumer %d sees queue order" % k)
    check_sequence(sorted(seen[0] + seen[1]), list(range(n)), "both consumers together")


def test_nack_requeue_returns_messages_to_their_place_in_a_deep_queue(start):
    """basic.nack / basic.reject with requeue put messages back at their original
    positions (RabbitMQ), ahead of the paged-out rest."""
    n, prefetch = 10 * WINDOW, 300
    b = start()
    declare(b, "nacked")
    publish(b, "nacked", (body(i) for i in range(n)))
    conn = connect(b)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    held = []
    ch.basic_consume("nacked", lambda ch_, m, p, d: held.append((ident(d), m.delivery_tag)))
    deadline = time.monotonic() + 30
    while len(held) < prefetch and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    check_sequence([h[0] for h in held], list(range(prefetch)), "held")
    ch.basic_cancel(ch.consumer_tags[0])
    ch.basic_reject(held[0][1], requeue=True)                 # the first, alone
    ch.basic_nack(held[-1][1], multiple=True, requeue=True)   # and all the others
    info = settled(b, "nacked", lambda i: i["messages_ready"] == n)
    assert (info["messages_ready"], info["messages_unacknowledged"]) == (n, 0), info
    assert info["messages_paged_out"] > 0, info
    conn.close()
    got = consume(b, "nacked", n)
    check_sequence([g[0] for g in got], list(range(n)), "after nack/reject with requeue")
    wrong = [(i, r) for i, r, _ in got if r != (i < prefetch)]
    assert not wrong, "redelivered wrong (number, redelivered): %r" % wrong[:10]


def test_dead_lettering_from_a_deep_queue_into_a_deep_queue(start):
    """Rejected paged messages are dead-lettered in order with their properties and
    x-death, into a queue that pages too."""
    n = 5 * WINDOW
    b = start()
    declare(b, "dlq")
    declare(b, "dl-src", arguments={"x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": "dlq"})
    publish(b, "dl-src", (body(i) for i in range(n)), message_id=lambda i: "m%d" % i)
    assert_paged_deep(settled(b, "dl-src", paged_deep(WINDOW, n)), WINDOW, n)
    conn = connect(b)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=200)
    seen = []

    def reject(ch_, method, _props, data):
        seen.append(ident(data))
        ch_.basic_reject(method.delivery_tag, requeue=False)

    ch.basic_consume("dl-src", reject)
    deadline = time.monotonic() + 60
    while len(seen) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    conn.close()
    check_sequence(seen, list(range(n)), "rejected from dl-src")
    assert_paged_deep(settled(b, "dlq", paged_deep(WINDOW, n)), WINDOW, n)
    got = consume(b, "dlq", n)
    check_sequence([g[0] for g in got], list(range(n)), "dead-lettered into dlq")
    bad = [g[0] for g in got
           if g[2].message_id != "m%d" % g[0]
           or [(d.get("queue"), d.get("reason"), d.get("count"))
               for d in (g[2].headers or {}).get("x-death", [])] != [("dl-src", "rejected", 1)]]
    assert not bad, ("properties or x-death wrong on %d dead letters, e.g. %r"
                     % (len(bad), [got[i][2] for i in bad[:1]]))


# ---- 3. kill -9 while paged out ------------------------------------------------------------

def test_kill_9_while_paged_out_recovers_in_order_and_pages_again(start):
    n, size, prefetch, acked_upto = DEEP_N * 3 // 5, 1000, 100, 1000
    payload = n * size
    b = start(fsync="always")
    base_rss = rss(b)
    declare(b, "crash")
    declare(b, "barrier")
    publish(b, "crash", (body(i, size) for i in range(n)))
    assert_paged_deep(settled(b, "crash", paged_deep(WINDOW, n)), WINDOW, n)

    # A consumer acks the first `acked_upto` and holds the next `prefetch` unacked.
    conn = connect(b)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    first = []

    def on_message(ch_, method, _props, data):
        first.append(ident(data))
        if len(first) <= acked_upto and len(first) % 50 == 0:
            ch_.basic_ack(method.delivery_tag, multiple=True)

    ch.basic_consume("crash", on_message)
    deadline = time.monotonic() + 60
    while len(first) < acked_upto + prefetch and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    check_sequence(first, list(range(acked_upto + prefetch)), "consumer before the crash")
    # The acks and delivered marks were submitted before the last deliveries were sent
    # (prefetch); one confirmed publish under fsync=always is synced after them.
    publish(b, "barrier", [body(0)])
    b.kill()

    b = start(fsync="always", data_dir=b.data_dir)
    left = n - acked_upto
    info = settled(b, "crash", paged_deep(WINDOW, left))
    assert_paged_deep(info, WINDOW, left)
    grown = rss(b) - base_rss
    assert grown < payload * 0.4, (
        "after recovery qgate holds %d KiB more than when it started empty, for %d KiB "
        "of queued payload (%s)" % (grown // KiB, payload // KiB, memory_report(b)))

    got = consume(b, "crash", left, check_body=lambda i, d: d == body(i, size))
    check_sequence([g[0] for g in got], list(range(acked_upto, n)), "after kill -9")
    unacked = set(range(acked_upto, acked_upto + prefetch))
    wrong = [(i, r) for i, r, _ in got if r != (i in unacked)]
    assert not wrong, ("redelivered must be set exactly on the messages delivered and not "
                       "acked before the kill; wrong (number, redelivered): %r" % wrong[:10])
    assert mgmt_queue(b, "barrier")["messages"] == 1


def test_fanout_into_several_deep_queues_pages_each_and_survives_kill_9(start):
    """One persistent message routed to several durable queues (and a non-durable one)
    pages in each; acking it in one queue leaves it in the others, across kill -9."""
    n = DEEP_N // 4
    durable_qs = ["fan-a", "fan-b", "fan-c"]
    b = start(fsync="always")
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("fan", "fanout", durable=True)
    for name in durable_qs:
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, "fan")
    ch.queue_declare("fan-nondurable", durable=False)
    ch.queue_bind("fan-nondurable", "fan")
    conn.close()
    publish(b, "", (body(i) for i in range(n)), exchange="fan")
    for name in durable_qs + ["fan-nondurable"]:
        assert_paged_deep(settled(b, name, paged_deep(WINDOW, n)), WINDOW, n)

    got = consume(b, "fan-a", n)
    check_sequence([g[0] for g in got], list(range(n)), "fan-a")
    got = consume(b, "fan-nondurable", n)
    check_sequence([g[0] for g in got], list(range(n)), "fan-nondurable")
    publish(b, "", (body(i) for i in range(n + 1, n + 11)), exchange="fan")
    declare(b, "fan-barrier")
    publish(b, "fan-barrier", [body(0)])  # a synced record after every ack above
    b.kill()

    b = start(fsync="always", data_dir=b.data_dir)
    assert paging(mgmt_queue(b, "fan-a"))["messages"] == 10
    want = list(range(n)) + list(range(n + 1, n + 11))
    for name in ("fan-b", "fan-c"):
        assert_paged_deep(settled(b, name, paged_deep(WINDOW, n + 10)), WINDOW, n + 10)
        got = consume(b, name, n + 10)
        check_sequence([g[0] for g in got], want, "%s after kill -9" % name)
    conn = connect(b)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().queue_declare("fan-nondurable", passive=True)
    assert e.value.reply_code == 404
    conn.close()


def test_kill_9_with_more_unacked_than_the_window_keeps_redelivered_on_paged_ones(start):
    """After a restart, delivered-but-unacked messages beyond the window stay paged and
    still come back with redelivered set."""
    n, window, prefetch = 5000, 50, 400
    b = start(window=window, fsync="always")
    declare(b, "many-unacked")
    declare(b, "barrier")
    publish(b, "many-unacked", (body(i) for i in range(n)))
    conn = connect(b)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    held = []
    ch.basic_consume("many-unacked", lambda ch_, m, p, d: held.append(ident(d)))
    deadline = time.monotonic() + 30
    while len(held) < prefetch and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    check_sequence(held, list(range(prefetch)), "held before the crash")
    publish(b, "barrier", [body(0)])  # synced after the delivered marks
    b.kill()

    b = start(window=window, fsync="always", data_dir=b.data_dir)
    assert_paged_deep(settled(b, "many-unacked", paged_deep(window, n)), window, n)
    got = consume(b, "many-unacked", n, prefetch=100)
    check_sequence([g[0] for g in got], list(range(n)), "after kill -9")
    wrong = [(i, r) for i, r, _ in got if r != (i < prefetch)]
    assert not wrong, ("redelivered must be set exactly on the %d held messages; wrong "
                       "(number, redelivered): %r" % (prefetch, wrong[:10]))


def test_restart_with_another_window_reloads_the_same_queue(start):
    """Paged records are ordinary durable records: a restart with paging off loads the
    whole queue into memory, and one with a smaller window pages it again, in order."""
    n = DEEP_N // 5
    b = start()
    declare(b, "rewindow")
    publish(b, "rewindow", (body(i) for i in range(n)))
    assert_paged_deep(settled(b, "rewindow", paged_deep(WINDOW, n)), WINDOW, n)
    assert b.stop() == 0

    b = start(window=0, data_dir=b.data_dir)
    info = paging(mgmt_queue(b, "rewindow"))
    assert (info["messages_ready"], info["messages_paged_out"], info["messages_ready_ram"]) == (
        n, 0, n), info
    got = consume(b, "rewindow", n // 2)
    check_sequence([g[0] for g in got], list(range(len(got))), "with paging off")
    left = n - len(got)
    assert b.stop() == 0

    b = start(window=100, data_dir=b.data_dir)
    assert_paged_deep(settled(b, "rewindow", paged_deep(100, left)), 100, left)
    got = consume(b, "rewindow", left)
    check_sequence([g[0] for g in got], list(range(n - left, n)), "with a window of 100")


# ---- 4. memcache and AMQP into one queue ----------------------------------------------------

MC_FLAGS = 7


def test_memcache_sets_and_amqp_publishes_share_one_order_past_the_window(start):
    n = DEEP_N * 3 // 5
    rnd = random.Random(13)
    b = start()
    declare(b, "mixed")  # what memcache would declare: durable
    pub = ConfirmPublisher(b.amqp_port)
    mc = MemcacheBulk(b.memcache_port)
    via_mc = set()
    i = 0
    amqp_turn = True
    while i < n:
        k = min(n - i, rnd.randint(1, 3000))
        ids = range(i, i + k)
        if amqp_turn:
            pub.publish("mixed", (body(j) for j in ids))  # all confirmed before the next set
        else:
            mc.set_many("mixed", (body(j) for j in ids), flags=MC_FLAGS)
            via_mc.update(ids)
        amqp_turn = not amqp_turn
        i += k
    pub.close()
    assert_paged_deep(settled(b, "mixed", paged_deep(WINDOW, n)), WINDOW, n)

    # Read back in turns: pymemcache gets, pipelined memcache gets, AMQP basic.get, and
    # AMQP consumers that ack part of what they took and close their channel on the rest
    # (requeued at its place, so the next reader continues the same order).
    pm = PyMemcache(("127.0.0.1", b.memcache_port), timeout=30)
    conn = connect(b)
    order, flags_wrong = [], []
    per_reader = [0, 0, 0, 0]
    empties = []  # (reader, consumed so far, left) of get answers short of a message
    getter = conn.channel()
    turn = 0
    deadline = time.monotonic() + 120
    while len(order) < n and time.monotonic() < deadline:
        kind = turn % 4
        turn += 1
        before = len(order)
        short = False
        if kind == 0:
            for _ in range(rnd.randint(1, 50)):
                data = pm.get("mixed")
                if data is None:
                    short = True
                    break
                order.append(ident(data))
        elif kind == 1:
            asked_mc = rnd.randint(1, 2000)
            for f, data in mc.get_many("mixed", asked_mc):
                i = ident(data)
                order.append(i)
                if f != (MC_FLAGS if i in via_mc else 0):
                    flags_wrong.append((i, f))
        elif kind == 2:
            for _ in range(rnd.randint(1, 50)):
                method, props, data = getter.basic_get("mixed", auto_ack=False)
                if method is None:
                    short = True
                    break
                order.append(ident(data))
                h = (props.headers or {}).get("x-memcache-flags")
                if ident(data) in via_mc and h != MC_FLAGS:
                    flags_wrong.append((ident(data), h))
                getter.basic_ack(method.delivery_tag)
        else:
            take = rnd.randint(1, 5000)
            ch = conn.channel()
            ch.basic_qos(prefetch_count=rnd.randint(1, 500))
            taken = []

            def on_message(ch_, method, props, data, taken=taken, take=take):
                if len(taken) < take:
                    taken.append(ident(data))
                    h = (props.headers or {}).get("x-memcache-flags")
                    if ident(data) in via_mc and h != MC_FLAGS:
                        flags_wrong.append((ident(data), h))
                    ch_.basic_ack(method.delivery_tag)

            ch.basic_consume("mixed", on_message)
            until = time.monotonic() + 30
            while len(taken) < min(take, n - len(order)) and time.monotonic() < until:
                conn.process_data_events(time_limit=0.05)
            ch.close()  # whatever it held beyond `take` goes back, unacked
            order.extend(taken)
        per_reader[kind] += len(order) - before
        if kind == 1:
            short = len(order) - before < asked_mc
        # A get short of a message while more are ready than any consumer held (the
        # last AMQP reader's unacked ones may still be on their way back) is wrong.
        if short and n - len(order) > 500:
            empties.append((kind, len(order), n - len(order)))
    conn.close()
    pm.close()
    mc.close()
    check_sequence(order, list(range(n)), "memcache get / AMQP consume in turns")
    assert all(per_reader), ("every reader should have had a share", per_reader)
    assert not empties, ("get answered empty (or short) while messages were ready: "
                         "(reader 0 pymemcache / 1 multi-get / 2 basic.get, consumed, "
                         "left) %r" % empties[:10])
    assert not flags_wrong, "memcache flags lost (number, flags): %r" % flags_wrong[:10]
    info = settled(b, "mixed", lambda i: i["messages"] == 0)
    assert (info["messages"], info["messages_paged_out"]) == (0, 0), info


def test_memcache_backlog_survives_kill_9_paged_out(start):
    """memcacheq's use: sets park a backlog far past the window while no one reads it;
    every STORED message survives kill -9 and is read back in order by get."""
    n = DEEP_N // 5
    b = start(fsync="always")
    mc = MemcacheBulk(b.memcache_port)
    mc.set_many("backlog", (body(i) for i in range(n)), flags=MC_FLAGS)  # declares it
    mc.close()
    assert_paged_deep(settled(b, "backlog", paged_deep(WINDOW, n)), WINDOW, n)
    b.kill()

    b = start(fsync="always", data_dir=b.data_dir)
    assert_paged_deep(settled(b, "backlog", paged_deep(WINDOW, n)), WINDOW, n)
    mc = MemcacheBulk(b.memcache_port)
    got = []
    while len(got) < n:
        chunk = mc.get_many("backlog", 1000)
        if not chunk:
            break
        got.extend(chunk)
    assert len(got) == n, ("get answered END after %d of %d messages; the queue says %r"
                           % (len(got), n, paging(mgmt_queue(b, "backlog"))))
    assert mc.get_many("backlog", 1) == []
    mc.close()
    check_sequence([ident(d) for _, d in got], list(range(n)), "memcache get after kill -9")
    assert all(f == MC_FLAGS and d == body(ident(d)) for f, d in got), "flags or bodies lost"


def test_get_answers_a_message_whenever_one_is_ready_even_paged(start):
    """basic.get and memcache get take the head of the queue: while messages are ready
    (paged out or not) they never answer get-empty / END, and a read of paged messages
    in flight is waited for, not reported as an empty queue."""
    n_amqp, n_mc = 6 * WINDOW, 20 * WINDOW
    b = start()
    declare(b, "get-amqp")
    declare(b, "get-mc")
    publish(b, "get-amqp", (body(i) for i in range(n_amqp)))
    publish(b, "get-mc", (body(i) for i in range(n_mc)))
    for name, n in (("get-amqp", n_amqp), ("get-mc", n_mc)):
        assert_paged_deep(settled(b, name, paged_deep(WINDOW, n)), WINDOW, n)

    conn = connect(b)
    ch = conn.channel()
    got = []
    for k in range(n_amqp):
        method, _props, data = ch.basic_get("get-amqp", auto_ack=False)
        if method is None:
            raise AssertionError("basic.get-empty after %d of %d messages; the queue says %r"
                                 % (k, n_amqp, paging(mgmt_queue(b, "get-amqp"))))
        got.append(ident(data))
        ch.basic_ack(method.delivery_tag)
    assert ch.basic_get("get-amqp", auto_ack=True)[0] is None
    conn.close()
    check_sequence(got, list(range(n_amqp)), "basic.get")

    mc = MemcacheBulk(b.memcache_port)
    pm = PyMemcache(("127.0.0.1", b.memcache_port), timeout=30)
    got = []
    while len(got) < n_mc:
        if len(got) % 2000 == 0:
            data = pm.get("get-mc")  # pymemcache, one at a time, now and then
            chunk = [(0, data)] if data is not None else []
            want = 1
        else:
            want = min(1000, n_mc - len(got))
            chunk = mc.get_many("get-mc", want)
        if len(chunk) < want:
            raise AssertionError(
                "memcache get answered %d of %d keys after %d of %d messages; the queue "
                "says %r" % (len(chunk), want, len(got), n_mc, paging(mgmt_queue(b, "get-mc"))))
        got.extend(ident(d) for _, d in chunk)
    assert mc.get_many("get-mc", 1) == []
    mc.close()
    pm.close()
    check_sequence(got, list(range(n_mc)), "memcache get")


# ---- 5. purge and delete give the disk back -----------------------------------------------

# After a purge everything in the queue is dead: the sealed segments go, and what is left
# is the active segment (sealed early once it holds 1/8 of a segment, 4 MiB) and the
# records written since.
NEAR_NOTHING = 8 * MiB


def test_purge_and_delete_of_a_paged_out_queue_reclaim_disk(start):
    n, size = DEEP_N * 2 // 5, 1024
    payload = n * size
    b = start()
    segments = os.path.join(b.data_dir, "segments")
    declare(b, "purged")
    publish(b, "purged", (body(i, size) for i in range(n)))
    assert_paged_deep(settled(b, "purged", paged_deep(WINDOW, n)), WINDOW, n)
    before = dir_bytes(segments)
    assert before >= payload, (before, payload)

    conn = connect(b)
    ch = conn.channel()
    assert ch.queue_purge("purged").method.message_count == n
    assert wait_until(lambda: dir_bytes(segments) < NEAR_NOTHING, 30), (
        "segments/ holds %d bytes 30 s after purging %d bytes of paged-out messages "
        "(before: %d)" % (dir_bytes(segments), payload, before))
    info = paging(mgmt_queue(b, "purged"))
    assert (info["messages"], info["messages_paged_out"], info["messages_ram"]) == (0, 0, 0), info
    # Nothing purged comes back: the queue serves only what is published after.
    publish(b, "purged", (body(i) for i in range(n, n + 10)))
    got = consume(b, "purged", 10)
    check_sequence([g[0] for g in got], list(range(n, n + 10)), "published after the purge")

    ch.queue_declare("deleted", durable=True)
    publish(b, "deleted", (body(i, size) for i in range(n)))
    assert_paged_deep(settled(b, "deleted", paged_deep(WINDOW, n)), WINDOW, n)
    assert dir_bytes(segments) >= payload
    assert ch.queue_delete("deleted").method.message_count == n
    assert wait_until(lambda: dir_bytes(segments) < NEAR_NOTHING, 30), (
        "segments/ holds %d bytes 30 s after deleting a queue of %d bytes of paged-out "
        "messages" % (dir_bytes(segments), payload))
    ch.queue_declare("deleted", durable=True)
    assert ch.queue_declare("deleted", passive=True).method.message_count == 0
    conn.close()

    # And a restart brings none of them back.
    assert b.stop() == 0
    b = start(data_dir=b.data_dir)
    conn = connect(b)
    ch = conn.channel()
    assert ch.queue_declare("purged", passive=True).method.message_count == 0
    assert ch.queue_declare("deleted", passive=True).method.message_count == 0
    conn.close()


def test_refilled_at_once_after_purge_or_delete_a_queue_serves_only_new_messages(start):
    """A purge's paged messages are dropped in steps after purge-ok, and a deleted
    queue's records after delete-ok: messages paged right after (into the purged queue,
    or a queue of the same name declared again) are not caught by those steps, and a
    restart brings back exactly what was left."""
    n, m = DEEP_N // 5, 3 * WINDOW
    b = start()
    declare(b, "refill-purged")
    declare(b, "refill-deleted")
    publish(b, "refill-purged", (body(i) for i in range(n)))
    publish(b, "refill-deleted", (body(i) for i in range(n)))
    for name in ("refill-purged", "refill-deleted"):
        assert_paged_deep(settled(b, name, paged_deep(WINDOW, n)), WINDOW, n)
    conn = connect(b)
    ch = conn.channel()
    assert ch.queue_purge("refill-purged").method.message_count == n
    assert ch.queue_delete("refill-deleted").method.message_count == n
    ch.queue_declare("refill-deleted", durable=True)
    conn.close()
    new = list(range(n, n + m))
    for name in ("refill-purged", "refill-deleted"):
        publish(b, name, (body(i) for i in new))
    for name in ("refill-purged", "refill-deleted"):
        assert_paged_deep(settled(b, name, paged_deep(WINDOW, m)), WINDOW, m)
        got = consume(b, name, m)
        check_sequence([g[0] for g in got], new, "%s refilled at once" % name)

    later = list(range(n + m, n + 2 * m))
    for name in ("refill-purged", "refill-deleted"):
        publish(b, name, (body(i) for i in later))
    assert b.stop() == 0
    b = start(data_dir=b.data_dir)
    for name in ("refill-purged", "refill-deleted"):
        assert_paged_deep(settled(b, name, paged_deep(WINDOW, m)), WINDOW, m)
        got = consume(b, name, m)
        check_sequence([g[0] for g in got], later, "%s after a restart" % name)


def test_purge_while_a_consumer_holds_messages_leaves_only_those(start):
    """A purge during page-in reads drops every ready message, paged or in memory, and
    nothing read back for the purged queue reappears; the consumer's unacked messages
    come back when it goes, as RabbitMQ's purge leaves unacked ones alone."""
    n, prefetch, acked_upto = DEEP_N * 3 // 10, 500, 5000
    b = start()
    declare(b, "purge-busy")
    publish(b, "purge-busy", (body(i) for i in range(n)))
    assert_paged_deep(settled(b, "purge-busy", paged_deep(WINDOW, n)), WINDOW, n)
    conn = connect(b)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    first = []

    def on_message(ch_, method, _props, data):
        first.append(ident(data))
        if len(first) <= acked_upto:
            ch_.basic_ack(method.delivery_tag)

    ch.basic_consume("purge-busy", on_message)
    deadline = time.monotonic() + 60
    while len(first) < acked_upto + prefetch and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    check_sequence(first, list(range(acked_upto + prefetch)), "consumer before the purge")
    other = connect(b)
    purged = other.channel().queue_purge("purge-busy").method.message_count
    assert purged == n - acked_upto - prefetch
    info = paging(mgmt_queue(b, "purge-busy"))
    assert (info["messages_ready"], info["messages_paged_out"], info["messages_ready_ram"],
            info["messages_unacknowledged"]) == (0, 0, 0, prefetch), info
    conn.close()  # its unacked messages go back to the queue
    publish(b, "purge-busy", (body(i) for i in range(n, n + 10)))
    got = consume(b, "purge-busy", prefetch + 10)
    want = list(range(acked_upto, acked_upto + prefetch)) + list(range(n, n + 10))
    check_sequence([g[0] for g in got], want, "after the purge")
    info = settled(b, "purge-busy", lambda i: i["messages"] == 0)
    assert (info["messages"], info["messages_paged_out"], info["messages_ram"]) == (0, 0, 0), info
    other.close()


def test_deleting_paged_transient_queues_reclaims_disk(start):
    """Transient records of a non-durable queue go with it: on queue.delete, and when an
    exclusive queue dies with its connection."""
    n, size = DEEP_N * 2 // 5, 1024
    b = start()
    segments = os.path.join(b.data_dir, "segments")
    declare(b, "gone-nondurable", durable=False)
    publish(b, "gone-nondurable", (body(i, size) for i in range(n)), delivery_mode=1)
    assert_paged_deep(settled(b, "gone-nondurable", paged_deep(WINDOW, n)), WINDOW, n)
    assert dir_bytes(segments) >= n * size, "transient records should be on disk"
    conn = connect(b)
    assert conn.channel().queue_delete("gone-nondurable").method.message_count == n
    assert wait_until(lambda: dir_bytes(segments) < NEAR_NOTHING, 30), (
        "segments/ holds %d bytes 30 s after deleting a paged non-durable queue"
        % dir_bytes(segments))

    ch = conn.channel()
    ch.queue_declare("gone-exclusive", exclusive=True)
    publish(b, "gone-exclusive", (body(i, size) for i in range(n)))
    assert_paged_deep(settled(b, "gone-exclusive", paged_deep(WINDOW, n)), WINDOW, n)
    assert dir_bytes(segments) >= n * size
    conn.close()  # the exclusive queue dies with it
    assert wait_until(lambda: dir_bytes(segments) < NEAR_NOTHING, 30), (
        "segments/ holds %d bytes 30 s after a paged exclusive queue died with its "
        "connection" % dir_bytes(segments))


# ---- 6. transient messages page too, and a restart drops them -----------------------------

def test_transient_messages_page_and_a_restart_drops_only_them(start):
    n = DEEP_N * 3 // 10

    def mode(i):
        return 1 if i % 3 == 0 else 2  # every third message transient

    b = start()
    declare(b, "nondurable", durable=False)
    declare(b, "mixed-a")
    declare(b, "mixed-b")
    publish(b, "nondurable", (body(i) for i in range(n)), delivery_mode=mode)
    publish(b, "mixed-a", (body(i) for i in range(n)), delivery_mode=mode)
    publish(b, "mixed-b", (body(i) for i in range(n)), delivery_mode=mode)
    for name in ("nondurable", "mixed-a", "mixed-b"):
        assert_paged_deep(settled(b, name, paged_deep(WINDOW, n)), WINDOW, n)

    for name in ("nondurable", "mixed-a"):
        got = consume(b, name, n)
        check_sequence([g[0] for g in got], list(range(n)), "consumed from %s" % name)
        wrong = [(g[0], g[2].delivery_mode) for g in got if g[2].delivery_mode != mode(g[0])]
        assert not wrong, "delivery_mode changed in paging: %r" % wrong[:5]

    assert b.stop() == 0
    b = start(data_dir=b.data_dir)
    conn = connect(b)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        conn.channel().queue_declare("nondurable", passive=True)
    assert e.value.reply_code == 404
    conn.close()
    persistent = [i for i in range(n) if mode(i) == 2]
    info = settled(b, "mixed-b", paged_deep(WINDOW, len(persistent)))
    assert_paged_deep(info, WINDOW, len(persistent))
    got = consume(b, "mixed-b", len(persistent))
    check_sequence([g[0] for g in got], persistent, "mixed-b after a restart")


def test_per_message_ttl_counts_from_publish_while_paged(start):
    """A message with an ``expiration`` is never delivered after it, also when it spent
    that time paged out (RabbitMQ: expired messages are dropped at the head)."""
    n, ttl_ms = 6 * WINDOW, 1500
    b = start()
    declare(b, "expiring")

    def expiration(i):
        return str(ttl_ms) if i % 2 else None  # odd ones expire

    publish(b, "expiring", (body(i) for i in range(n)), expiration=expiration)
    assert_paged_deep(settled(b, "expiring", paged_deep(WINDOW, n)), WINDOW, n)
    time.sleep(ttl_ms / 1000 * 2)  # they have all expired by now
    keep = [i for i in range(n) if i % 2 == 0]
    got = consume(b, "expiring", len(keep), timeout=30)
    check_sequence([g[0] for g in got], keep, "after the odd ones expired")
    info = settled(b, "expiring", lambda i: i["messages"] == 0)
    assert info["messages"] == 0, info


def test_transient_paged_records_are_dropped_after_kill_9_too(start):
    n = 10 * WINDOW

    def mode(i):
        return 1 if i % 2 else 2  # odd ones transient

    b = start(fsync="always")
    declare(b, "mixed-crash")
    publish(b, "mixed-crash", (body(i) for i in range(n)), delivery_mode=mode)
    assert_paged_deep(settled(b, "mixed-crash", paged_deep(WINDOW, n)), WINDOW, n)
    b.kill()
    b = start(fsync="always", data_dir=b.data_dir)
    persistent = [i for i in range(n) if mode(i) == 2]
    assert_paged_deep(settled(b, "mixed-crash", paged_deep(WINDOW, len(persistent))), WINDOW,
                      len(persistent))
    got = consume(b, "mixed-crash", len(persistent))
    check_sequence([g[0] for g in got], persistent, "after kill -9")


# ---- 7. memory stays bounded ---------------------------------------------------------------

def fill_and_measure(b, name, n, size):
    declare(b, name)
    time.sleep(0.5)  # let start-up allocations settle before the baseline
    base = rss(b)
    publish(b, name, (body(i, size) for i in range(n)))
    return base


def test_a_small_window_keeps_memory_far_below_the_queued_payload(start):
    n, size, window = 16384, 4 * KiB, 256
    payload = n * size  # 64 MiB

    b = start(window=window)
    base = fill_and_measure(b, "big", n, size)
    info = settled(b, "big", paged_deep(window, n))
    assert_paged_deep(info, window, n)
    grown = rss(b) - base
    assert grown < payload * 0.4, (
        "with --queue-window %d, %d KiB of queued payload grew qgate by %d KiB (%s)"
        % (window, payload // KiB, grown // KiB, memory_report(b)))
    got = consume(b, "big", n, check_body=lambda i, d: d == body(i, size))
    check_sequence([g[0] for g in got], list(range(n)), "4 KiB messages")
    assert b.stop() == 0

    # The control: never paging, the broker holds every body (so the bound above means
    # something).
    c = start(window=0)
    base = fill_and_measure(c, "big", n, size)
    info = settled(c, "big", lambda i: i["messages_ram"] == n)
    assert (info["messages_paged_out"], info["messages_ram"], info["message_bytes_ram"]) == (
        0, n, payload), info
    grown = rss(c) - base
    assert grown >= payload, (
        "with --queue-window 0 qgate grew by only %d KiB for %d KiB of payload (%s): "
        "the measurement above proves nothing" % (grown // KiB, payload // KiB,
                                                  memory_report(c)))


def metric(q, name):
    url = "http://127.0.0.1:%d/metrics" % q.ports["http"]
    for line in urllib.request.urlopen(url, timeout=30).read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("metric %s not served" % name)


def test_paged_messages_do_not_count_towards_the_memory_alarm(start):
    """A backlog larger than --memory-high-watermark does not block publishers when it
    is paged out; without paging the same backlog raises the alarm."""
    n, size, watermark = 12288, 4 * KiB, 16 * MiB  # 48 MiB of payload
    b = start("--memory-high-watermark", str(watermark), window=256)
    declare(b, "over-watermark")
    publish(b, "over-watermark", (body(i, size) for i in range(n)))  # all confirmed
    assert metric(b, "qgate_alarms_memory_used_watermark") == 0
    assert_paged_deep(settled(b, "over-watermark", paged_deep(256, n)), 256, n)
    got = consume(b, "over-watermark", n, check_body=lambda i, d: d == body(i, size))
    check_sequence([g[0] for g in got], list(range(n)), "past the memory watermark")
    assert b.stop() == 0

    # The control: the same backlog in memory blocks the publisher.
    c = start("--memory-high-watermark", str(watermark), window=0)
    declare(c, "over-watermark")
    p = ConfirmPublisher(c.amqp_port, timeout=60)
    errors = []

    def blocked_publisher():
        try:
            p.publish("over-watermark", (body(i, size) for i in range(n)))
        except Exception as e:  # expected once the socket is closed under it
            errors.append(e)

    t = threading.Thread(target=blocked_publisher, daemon=True)
    t.start()
    assert wait_until(lambda: metric(c, "qgate_alarms_memory_used_watermark") == 1, 30), (
        "without paging, %d bytes queued should pass a %d byte watermark"
        % (n * size, watermark))
    stalled = p.confirmed
    time.sleep(1)
    assert p.confirmed == stalled < n, "a blocked publisher kept getting confirms"
    p.conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the publisher thread in sendall
    t.join(30)
    p.conn.close()
    assert not t.is_alive()


# ---- 8. queues that never page -------------------------------------------------------------

def test_limited_and_priority_queues_never_page_and_keep_their_semantics(start):
    window, n, limit, size = 200, 1000, 600, 64
    b = start(window=window)
    declare(b, "plain")
    declare(b, "prio", arguments={"x-max-priority": 9})
    declare(b, "maxlen", arguments={"x-max-length": limit})
    declare(b, "maxbytes", arguments={"x-max-length-bytes": limit * size})
    declare(b, "ttl", arguments={"x-message-ttl": 3600000})
    for name in ("plain", "maxlen", "maxbytes", "ttl"):
        publish(b, name, (body(i, size) for i in range(n)))
    publish(b, "prio", (body(i, size) for i in range(n)), priority=lambda i: i % 12)

    # The same depth pages a plain queue out ...
    assert_paged_deep(settled(b, "plain", paged_deep(window, n)), window, n)
    # ... and none of these.
    for name, depth in [("prio", n), ("maxlen", limit), ("maxbytes", limit), ("ttl", n)]:
        info = paging(mgmt_queue(b, name))
        assert (info["messages_ready"], info["messages_paged_out"], info["messages_ram"],
                info["message_bytes_ram"]) == (depth, 0, depth, depth * size), (name, info)

    # a priority above x-max-priority counts as the maximum; FIFO within a priority
    want = sorted(range(n), key=lambda i: (-min(i % 12, 9), i))
    got = consume(b, "prio", n)
    check_sequence([g[0] for g in got], want, "priority queue")
    for name in ("maxlen", "maxbytes"):
        got = consume(b, name, limit)
        check_sequence([g[0] for g in got], list(range(n - limit, n)),
                       "%s keeps the newest %d" % (name, limit))
    for name in ("ttl", "plain"):
        got = consume(b, name, n)
        check_sequence([g[0] for g in got], list(range(n)), name)
