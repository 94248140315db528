"""The program patterns of the seed tutorials (../shared/seeds/), modernized for
pika 1.3, run as real producers and consumers with connections of their own.

Part 1 runs each pattern in-process (threads, one connection each) and asserts
what the tutorials promise.  Part 2 runs the seed programs in tests/python/seeds/
as subprocesses and checks that they print what they print against RabbitMQ.
"""

import os
import queue as queue_mod
import re
import subprocess
import sys
import threading
import time
import uuid

import pika
import pika.exceptions as pe
import pytest

from helpers import Worker, drain, get_all, pump_until, uniq

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


# ================================================================ part 1: patterns


def test_hello_world(broker):
    q = uniq("hello")
    received = []
    got_one = threading.Event()

    def on_msg(w, ch, method, props, body):
        received.append(body)
        got_one.set()

    consumer = Worker(broker, q, on_msg, auto_ack=True, declare=lambda ch: ch.queue_declare(q))
    consumer.start()
    assert consumer.ready.wait(10) and consumer.error is None, consumer.error
    producer = broker.connect()
    ch = producer.channel()
    ch.queue_declare(queue=q)
    ch.basic_publish(exchange="", routing_key=q, body="Hello World!")
    producer.close()
    assert got_one.wait(10)
    consumer.stop()
    assert received == [b"Hello World!"]
    c = broker.connect()
    c.channel().queue_delete(q)
    c.close()


def test_work_queue_durable_persistent_fair_dispatch(broker):
    """Durable queue, delivery_mode=2, manual ack, prefetch_count=1: a slow worker
    gets fewer tasks than a fast one, and every task is done exactly once."""
    q = uniq("task_queue")
    n = 20
    done = {"slow": [], "fast": []}
    lock = threading.Lock()

    def make(name, delay):
        def on_msg(w, ch, method, props, body):
            assert props.delivery_mode == 2
            time.sleep(delay)
            with lock:
                done[name].append(body)
            ch.basic_ack(delivery_tag=method.delivery_tag)
        return on_msg

    declare = lambda ch: ch.queue_declare(queue=q, durable=True)  # noqa: E731
    slow = Worker(broker, q, make("slow", 0.4), prefetch=1, declare=declare)
    fast = Worker(broker, q, make("fast", 0.01), prefetch=1, declare=declare)
    slow.start()
    fast.start()
    assert slow.ready.wait(10) and fast.ready.wait(10)
    assert slow.error is None and fast.error is None, (slow.error, fast.error)
    producer = broker.connect()
    ch = producer.channel()
    ch.queue_declare(queue=q, durable=True)
    for i in range(n):
        ch.basic_publish(exchange="", routing_key=q, body="task %d." % i,
                         properties=pika.BasicProperties(delivery_mode=2))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(done["slow"]) + len(done["fast"]) >= n:
                break
        time.sleep(0.05)
    slow.stop()
    fast.stop()
    all_done = sorted(done["slow"] + done["fast"])
    assert all_done == sorted(b"task %d." % i for i in range(n))
    assert len(done["slow"]) < len(done["fast"])
    assert len(done["slow"]) <= 5, done
    ok = ch.queue_delete(q)
    assert ok.method.message_count == 0
    producer.close()


def test_prefetch_without_ack_stops_after_prefetch_count(broker):
    """Seed 000: prefetch_count=10 and no ack -> exactly 10 messages, then nothing."""
    c = broker.connect()
    ch = c.channel()
    q = uniq("hello-prefetch")
    ch.queue_declare(queue=q, exclusive=True)
    for i in range(15):
        ch.basic_publish(exchange="", routing_key=q, body="hello world %d" % i)
    got = []
    ch.basic_qos(prefetch_count=10)
    ch.basic_consume(queue=q, on_message_callback=lambda c_, m, p, b: got.append(b))
    pump_until(c, lambda: False, timeout=1.0)
    assert len(got) == 10
    assert got == [b"hello world %d" % i for i in range(10)]
    c.close()


def test_fanout_logs_exclusive_server_named_queues(broker):
    x = uniq("logs")
    subs = []
    for _ in range(2):
        c = broker.connect()
        ch = c.channel()
        ch.exchange_declare(exchange=x, exchange_type="fanout")
        result = ch.queue_declare(queue="", exclusive=True)
        qn = result.method.queue
        assert qn.startswith("amq.gen-")
        ch.queue_bind(exchange=x, queue=qn)
        subs.append((c, ch, qn))
    assert subs[0][2] != subs[1][2]
    pc = broker.connect()
    pch = pc.channel()
    pch.exchange_declare(exchange=x, exchange_type="fanout")
    for i in range(3):
        pch.basic_publish(exchange=x, routing_key="", body="info: Hello World! %d" % i)
    for c, ch, qn in subs:
        got = [b for _m, _p, b in drain(ch, qn, 3)]
        assert got == [b"info: Hello World! %d" % i for i in range(3)]
    for c, _ch, qn in subs:
        c.close()
    # the exclusive queues are gone with their connections
    for _c, _ch, qn in subs:
        with pytest.raises(pe.ChannelClosedByBroker) as ei:
            pc.channel().queue_declare(qn, passive=True)
        assert ei.value.reply_code == 404
    pc.channel().exchange_delete(x)
    pc.close()


def test_direct_routing_by_severity(broker, conn):
    x = uniq("direct_logs")
    ch = conn.channel()
    ch.exchange_declare(exchange=x, exchange_type="direct")
    q_err = ch.queue_declare(queue="", exclusive=True).method.queue
    q_all = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=x, queue=q_err, routing_key="error")
    for sev in ("info", "warning", "error"):
        ch.queue_bind(exchange=x, queue=q_all, routing_key=sev)
    pc = broker.connect()
    pch = pc.channel()
    pch.confirm_delivery()
    for sev in ("info", "warning", "error", "debug"):
        pch.basic_publish(exchange=x, routing_key=sev, body="%s message" % sev)
    pc.close()
    assert get_all(ch, q_err) == [b"error message"]
    assert get_all(ch, q_all) == [b"info message", b"warning message", b"error message"]
    ch.exchange_delete(x)


def test_topic_routing(broker, conn):
    x = uniq("topic_logs")
    ch = conn.channel()
    ch.exchange_declare(exchange=x, exchange_type="topic")
    bindings = {
        "q1": ["*.orange.*"],
        "q2": ["*.*.rabbit", "lazy.#"],
        "all": ["#"],
        "one": ["*"],
        "log": ["log.#"],
    }
    qs = {}
    for name, keys in bindings.items():
        qn = ch.queue_declare(queue="", exclusive=True).method.queue
        for k in keys:
            ch.queue_bind(exchange=x, queue=qn, routing_key=k)
        qs[name] = qn
    keys = ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox",
            "lazy.brown.fox", "lazy.pink.rabbit", "quick.brown.fox", "orange",
            "quick.orange.male.rabbit", "lazy.orange.male.rabbit", "lazy", "", "log",
            "log.x.y"]
    pc = broker.connect()
    pch = pc.channel()
    pch.confirm_delivery()
    for k in keys:
        pch.basic_publish(exchange=x, routing_key=k, body=k or "<empty>")
    pc.close()
    got = {name: [b.decode() for b in get_all(ch, qn)] for name, qn in qs.items()}
    assert got["q1"] == ["quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox"]
    # lazy.pink.rabbit matches both of q2's bindings but is delivered once
    assert got["q2"] == ["quick.orange.rabbit", "lazy.orange.elephant", "lazy.brown.fox",
                         "lazy.pink.rabbit", "lazy.orange.male.rabbit", "lazy"]
    assert got["all"] == [k or "<empty>" for k in keys]  # '#' matches the empty key too
    assert got["one"] == ["orange", "lazy", "log"]  # '*' never matches the empty key
    assert got["log"] == ["log", "log.x.y"]  # 'log.#' matches 'log'
    ch.exchange_delete(x)


class RpcServer(threading.Thread):
    """The seed's compute.py: increase(n) = n + 1, prefetch 1, manual ack."""

    def __init__(self, broker, q):
        super().__init__(daemon=True)
        self.broker, self.q = broker, q
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.served = 0
        self.error = None

    def run(self):
        try:
            c = self.broker.connect()
            ch = c.channel()
            ch.queue_declare(queue=self.q)

            def request(ch_, method, props, body):
                response = int(body) + 1
                ch_.basic_publish(exchange="", routing_key=props.reply_to,
                                  properties=pika.BasicProperties(
                                      correlation_id=props.correlation_id),
                                  body=str(response))
                ch_.basic_ack(delivery_tag=method.delivery_tag)
                self.served += 1

            ch.basic_qos(prefetch_count=1)
            ch.basic_consume(queue=self.q, on_message_callback=request)
            self.ready.set()
            deadline = time.monotonic() + 40
            while not self.stopping.is_set() and time.monotonic() < deadline:
                c.process_data_events(time_limit=0.05)
            c.close()
        except Exception as e:
            self.error = e
            self.ready.set()


def test_rpc_reply_to_correlation_id_concurrent(broker):
    q = uniq("compute_queue")
    servers = [RpcServer(broker, q) for _ in range(2)]
    for s in servers:
        s.start()
    for s in servers:
        assert s.ready.wait(10) and s.error is None, s.error
    c = broker.connect()
    ch = c.channel()
    cb_q = ch.queue_declare(queue="", exclusive=True).method.queue
    assert cb_q.startswith("amq.gen-")
    responses = {}
    ch.basic_consume(queue=cb_q, auto_ack=True,
                     on_message_callback=lambda c_, m, p, b: responses.__setitem__(
                         p.correlation_id, int(b)))
    nums = [10, 20, 30, 40, 50, 60, 70, 80]
    pending = {}
    for n in nums:  # all requests in flight at once
        corr = str(uuid.uuid4())
        pending[corr] = n
        ch.basic_publish(exchange="", routing_key=q, body=str(n),
                         properties=pika.BasicProperties(reply_to=cb_q, correlation_id=corr))
    assert pump_until(c, lambda: len(responses) == len(nums), timeout=15), responses
    assert {corr: responses[corr] for corr in pending} == {
        corr: n + 1 for corr, n in pending.items()}
    for s in servers:
        s.stopping.set()
    for s in servers:
        s.join(10)
    assert sum(s.served for s in servers) == len(nums)
    ch.queue_delete(q)
    c.close()


def test_redeclare_with_different_durable_is_406(broker, conn):
    q = uniq("hello")
    ch = conn.channel()
    ch.queue_declare(queue=q)
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.queue_declare(queue=q, durable=True)
    assert ei.value.reply_code == 406
    assert ei.value.reply_text.startswith("PRECONDITION_FAILED - inequivalent arg 'durable'")
    # RabbitMQ's full text, which users match on:
    assert ei.value.reply_text == (
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '%s' in vhost '/': "
        "received 'true' but current is 'false'" % q)
    assert not ch.is_open
    assert conn.is_open
    ch2 = conn.channel()  # the connection still works on a new channel
    ch2.queue_declare(queue=q)  # same flags: fine
    ch2.basic_publish(exchange="", routing_key=q, body="after 406")
    m, _p, body = ch2.basic_get(q, auto_ack=True)
    assert body == b"after 406"
    ch2.queue_delete(q)


def test_basic_nack_requeue_redelivers(conn):
    ch = conn.channel()
    q = uniq("nack")
    ch.queue_declare(queue=q, exclusive=True)
    ch.basic_publish(exchange="", routing_key=q, body="task")
    seen = []

    def cb(ch_, method, props, body):
        seen.append((body, method.redelivered))
        if len(seen) == 1:
            ch_.basic_nack(delivery_tag=method.delivery_tag, requeue=True)
        else:
            ch_.basic_ack(delivery_tag=method.delivery_tag)

    ch.basic_consume(queue=q, on_message_callback=cb)
    assert pump_until(conn, lambda: len(seen) >= 2, timeout=10)
    assert seen[:2] == [(b"task", False), (b"task", True)]


def test_dead_consumer_unacked_go_to_other_consumer_in_order(broker):
    q = uniq("task_queue")
    setup = broker.connect()
    sch = setup.channel()
    sch.queue_declare(queue=q, durable=True)
    n = 5
    sch.confirm_delivery()
    for i in range(n):
        sch.basic_publish(exchange="", routing_key=q, body="task %d" % i,
                          properties=pika.BasicProperties(delivery_mode=2))

    held = threading.Event()

    def hold(w, ch, method, props, body):  # never acks
        if len(w.received) == n:
            held.set()

    a = Worker(broker, q, hold, prefetch=0)
    a.start()
    assert held.wait(10), "first consumer did not get the %d messages" % n
    b_got = []
    b = Worker(broker, q, lambda w, ch, m, p, body: (b_got.append((body, m.redelivered)),
                                                      ch.basic_ack(m.delivery_tag)))
    b.start()
    assert b.ready.wait(10)
    time.sleep(0.3)
    assert b_got == [], "second consumer got messages held unacked by the first"
    a.die()
    deadline = time.monotonic() + 10
    while len(b_got) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    b.stop()
    assert b_got == [(b"task %d" % i, True) for i in range(n)]
    assert [x[2] for x in a.received] == [
        b"task %d" % i for i in range(n)]
    sch.queue_delete(q)
    setup.close()


# ================================================================ part 2: seed programs


class Proc:
    """A seed program run as `python -u seeds/<script>`; output read line by line."""

    def __init__(self, broker, ns, script, *args, count=0, timeout=20, extra_env=None):
        env = dict(os.environ)
        env.update(AMQP_URL=broker.url, SEED_NS=ns, SEED_TIMEOUT=str(timeout),
                   SEED_COUNT=str(count), PYTHONUNBUFFERED="1")
        env.update(extra_env or {})
        self.p = subprocess.Popen([sys.executable, "-u", os.path.join(SEEDS, script)] + list(args),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                  stdin=subprocess.DEVNULL)
        self.lines = []
        self.q = queue_mod.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in iter(self.p.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            self.q.put(line)
        self.q.put(None)

    def wait_line(self, pattern, timeout=15):
        rx = re.compile(pattern)
        for line in self.lines:
            if rx.search(line):
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.1)
            except queue_mod.Empty:
                continue
            if line is None:
                break
            if rx.search(line):
                return line
        raise AssertionError("no line matching %r; output so far:\n%s"
                             % (pattern, "\n".join(self.lines)))

    def finish(self, timeout=20):
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError("seed program did not exit; output:\n%s" % "\n".join(self.lines))
        time.sleep(0.05)
        assert rc == 0, "exit status %s; output:\n%s" % (rc, "\n".join(self.lines))
        return self.lines


def run(broker, ns, script, *args, **kw):
    return Proc(broker, ns, script, *args, **kw).finish()


def test_seed_programs_hello_world(broker):
    ns = uniq("seed") + "."
    recv = Proc(broker, ns, "receive.py", count=1)
    recv.wait_line(r"^ \[\*\] Waiting for messages\. To exit press CTRL\+C$")
    assert run(broker, ns, "send.py") == [" [x] Sent 'Hello World!'"]
    out = recv.finish()
    assert out == [" [*] Waiting for messages. To exit press CTRL+C",
                   " [x] Received b'Hello World!'"]
    _cleanup(broker, queues=[ns + "hello"])


def test_seed_programs_work_queues(broker):
    ns = uniq("seed") + "."
    tasks = ["First message.", "Second message..", "Third message...", "Fourth message....",
             "Fifth message....."]
    workers = [Proc(broker, ns, "worker.py", count=0, timeout=40,
                    extra_env={"SEED_DOT_SECONDS": "0.1"}) for _ in range(2)]
    for w in workers:
        w.wait_line(r"Waiting for messages")
    for t in tasks:
        assert run(broker, ns, "new_task.py", *t.split()) == [" [x] Sent %r" % t]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(w.lines.count(" [x] Done") for w in workers) >= len(tasks):
            break
        time.sleep(0.05)
    time.sleep(0.2)  # a sixth task would show up now
    for w in workers:
        w.p.terminate()  # a worker runs until stopped, like the tutorial's
        w.p.wait(10)
    outs = [list(w.lines) for w in workers]
    received = sorted(line for out in outs for line in out if "Received" in line)
    assert received == sorted(" [x] Received %r" % t.encode() for t in tasks)
    assert sum(out.count(" [x] Done") for out in outs) == len(tasks)
    assert all(any("Received" in line for line in out) for out in outs), \
        "both workers should get work: %r" % outs
    _cleanup(broker, queues=[ns + "task_queue"])


def test_seed_programs_fanout_logs(broker):
    ns = uniq("seed") + "."
    subs = [Proc(broker, ns, "receive_logs.py", count=1) for _ in range(2)]
    for s in subs:
        s.wait_line(r"^ \[\*\] Waiting for logs")
    assert run(broker, ns, "emit_log.py") == [" [x] Sent 'info: Hello World!'"]
    for s in subs:
        assert s.finish() == [" [*] Waiting for logs. To exit press CTRL+C",
                              " [x] b'info: Hello World!'"]
    _cleanup(broker, exchanges=[ns + "logs"])


def test_seed_programs_direct_logs(broker):
    ns = uniq("seed") + "."
    err = Proc(broker, ns, "receive_logs_direct.py", "error", count=1)
    every = Proc(broker, ns, "receive_logs_direct.py", "info", "warning", "error", count=3)
    err.wait_line("Waiting for logs")
    every.wait_line("Waiting for logs")
    assert run(broker, ns, "emit_log_direct.py", "info", "Hello") == [" [x] Sent 'info':'Hello'"]
    assert run(broker, ns, "emit_log_direct.py", "warning", "Careful") == [
        " [x] Sent 'warning':'Careful'"]
    assert run(broker, ns, "emit_log_direct.py", "error", "Run.", "Run.") == [
        " [x] Sent 'error':'Run. Run.'"]
    assert err.finish()[1:] == [" [x] 'error':b'Run. Run.'"]
    assert every.finish()[1:] == [" [x] 'info':b'Hello'", " [x] 'warning':b'Careful'",
                                  " [x] 'error':b'Run. Run.'"]
    _cleanup(broker, exchanges=[ns + "direct_logs"])


def test_seed_programs_topic_logs(broker):
    ns = uniq("seed") + "."
    kern = Proc(broker, ns, "receive_logs_topic.py", "kern.*", count=2)
    crit = Proc(broker, ns, "receive_logs_topic.py", "*.critical", count=2)
    allp = Proc(broker, ns, "receive_logs_topic.py", "#", count=3)
    for p in (kern, crit, allp):
        p.wait_line("Waiting for logs")
    sent = [("kern.critical", "A critical kernel error"), ("kern.info", "boot"),
            ("app.critical", "disk full")]
    for key, msg in sent:
        assert run(broker, ns, "emit_log_topic.py", key, *msg.split()) == [
            " [x] Sent %r:%r" % (key, msg)]
    assert kern.finish()[1:] == [" [x] 'kern.critical':b'A critical kernel error'",
                                 " [x] 'kern.info':b'boot'"]
    assert crit.finish()[1:] == [" [x] 'kern.critical':b'A critical kernel error'",
                                 " [x] 'app.critical':b'disk full'"]
    assert allp.finish()[1:] == [" [x] %r:%r" % (k, m.encode()) for k, m in sent]
    _cleanup(broker, exchanges=[ns + "topic_logs"])


def test_seed_programs_rpc(broker):
    ns = uniq("seed") + "."
    nums = [10, 20, 30, 40, 50]
    servers = [Proc(broker, ns, "rpc_server.py", count=0, timeout=8) for _ in range(2)]
    for s in servers:
        s.wait_line(r"^ \[\*\] Waiting for n$")
    out = run(broker, ns, "rpc_client.py", *map(str, nums))
    assert out[:len(nums)] == [" [x] Requesting increase(%d)" % n for n in nums]
    assert out[len(nums):] == [" [.] increase(%d)=%d" % (n, n + 1) for n in nums]
    for s in servers:
        s.p.terminate()
        s.p.wait(10)
    served = sorted(line for s in servers for line in s.lines if "increase(" in line)
    assert served == sorted(" [.] increase(%d)" % n for n in nums)
    _cleanup(broker, queues=[ns + "compute_queue"])


def _cleanup(broker, queues=(), exchanges=()):
    c = broker.connect()
    ch = c.channel()
    for q in queues:
        ch.queue_delete(q)
    for x in exchanges:
        ch.exchange_delete(x)
    c.close()
