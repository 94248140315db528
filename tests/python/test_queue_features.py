"""Queue and exchange arguments RabbitMQ users rely on: TTLs, dead-lettering with
x-death, length limits and overflow, priorities, x-expires, single active consumer,
alternate exchanges. Written to pass against RabbitMQ 3.10 as well."""

import time

import pika
import pytest

from helpers import get_all, uniq


def poll_get(ch, queue, timeout=5.0):
    """basic_get until a message arrives (RabbitMQ dead-letters asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None or time.monotonic() > deadline:
            return method, props, body
        time.sleep(0.02)


def declare(ch, name, **arguments):
    ch.queue_declare(name, arguments=arguments or None)
    return name


def test_queue_ttl_dead_letters_with_x_death(ch):
    ch.confirm_delivery()
    dlx, dead, delay = uniq("dlx"), uniq("dead"), uniq("delay")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dead)
    ch.queue_bind(dead, dlx)
    declare(ch, delay, **{"x-message-ttl": 200, "x-dead-letter-exchange": dlx})
    ch.basic_publish("", delay, b"later", pika.BasicProperties(expiration="60000", headers={"k": "v"}))
    # No consumer and no get on the delayed queue: expiry happens on its own.
    deadline = time.monotonic() + 5
    got = None
    while time.monotonic() < deadline and got is None:
        method, props, body = ch.basic_get(dead, auto_ack=True)
        if method is not None:
            got = (method, props, body)
        else:
            time.sleep(0.05)
    assert got is not None, "expired message was not dead-lettered"
    method, props, body = got
    assert body == b"later"
    assert method.exchange == dlx and method.routing_key == delay
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired" and death["queue"] == delay and death["count"] == 1
    assert death["exchange"] == "" and death["routing-keys"] == [delay]
    assert death["original-expiration"] == "60000"
    assert props.expiration is None
    assert props.headers["k"] == "v"
    assert props.headers["x-first-death-reason"] == "expired"


def test_reject_dead_letters_to_routing_key_and_counts_rounds(ch):
    dead, work = uniq("dead"), uniq("work")
    ch.queue_declare(dead)
    declare(ch, work, **{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    ch.basic_publish("", work, b"bad")
    for round_ in (1, 2):
        method, _, _ = ch.basic_get(work)
        ch.basic_reject(method.delivery_tag, requeue=False)
        method, props, body = poll_get(ch, dead)
        assert body == b"bad" and method.routing_key == dead
        death = props.headers["x-death"]
        assert death[0]["reason"] == "rejected" and death[0]["count"] == round_
        # Send it round again.
        ch.basic_publish("", work, body, pika.BasicProperties(headers=props.headers))


def test_nack_without_requeue_drops_without_dlx(ch):
    q = uniq("drop")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    method, _, _ = ch.basic_get(q)
    ch.basic_nack(method.delivery_tag, requeue=False)
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_max_length_drops_head_and_dead_letters_it(ch):
    ch.confirm_delivery()
    dead, q = uniq("dead"), uniq("maxlen")
    ch.queue_declare(dead)
    declare(ch, q, **{"x-max-length": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    assert get_all(ch, q) == [b"3", b"4"]
    dead_letters = [poll_get(ch, dead)[2] for _ in range(3)]
    assert dead_letters == [b"0", b"1", b"2"]


def test_reject_publish_overflow_nacks_confirms(ch):
    ch.confirm_delivery()
    q = declare(ch, uniq("full"), **{"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", q, b"first")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"second")
    assert get_all(ch, q) == [b"first"]


def test_priority_queue_delivers_highest_first(ch):
    ch.confirm_delivery()
    q = declare(ch, uniq("prio"), **{"x-max-priority": 5})
    for p in (1, 9, 3, 0, 5):
        ch.basic_publish("", q, b"p%d" % p, pika.BasicProperties(priority=p))
    # 9 counts as the maximum, 5; FIFO within a level.
    assert get_all(ch, q) == [b"p9", b"p5", b"p3", b"p1", b"p0"]


def test_x_expires_deletes_an_unused_queue(ch):
    q = declare(ch, uniq("expires"), **{"x-expires": 300})
    time.sleep(0.1)
    ch.queue_declare(q, passive=True, arguments=None)  # use restarts the clock
    time.sleep(1.0)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert e.value.reply_code == 404


def test_single_active_consumer(broker, ch):
    ch.confirm_delivery()
    q = declare(ch, uniq("sac"), **{"x-single-active-consumer": True})
    first = pika.BlockingConnection(broker.params())
    second = pika.BlockingConnection(broker.params())
    got = {"first": [], "second": []}
    try:
        first.channel().basic_consume(q, lambda c, m, p, b: got["first"].append(b), auto_ack=True)
        second.channel().basic_consume(q, lambda c, m, p, b: got["second"].append(b), auto_ack=True)
        for i in range(6):
            ch.basic_publish("", q, b"%d" % i)
        deadline = time.monotonic() + 5
        while len(got["first"]) < 6 and time.monotonic() < deadline:
            first.process_data_events(0.05)
            second.process_data_events(0.05)
        assert len(got["first"]) == 6 and got["second"] == []
        first.close()
        for i in range(6, 8):
            ch.basic_publish("", q, b"%d" % i)
        deadline = time.monotonic() + 5
        while len(got["second"]) < 2 and time.monotonic() < deadline:
            second.process_data_events(0.05)
        assert got["second"] == [b"6", b"7"]
    finally:
        for c in (first, second):
            if c.is_open:
                c.close()


def test_alternate_exchange_catches_unroutable(ch):
    ch.confirm_delivery()
    ae, aeq, main = uniq("ae"), uniq("aeq"), uniq("main")
    ch.exchange_declare(ae, "fanout")
    ch.queue_declare(aeq)
    ch.queue_bind(aeq, ae)
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    ch.basic_publish(main, "no-binding", b"caught", mandatory=True)
    assert get_all(ch, aeq) == [b"caught"]


def test_direct_reply_to_rpc(broker, ch):
    """RabbitMQ's direct reply-to: no reply queue is declared by the client."""
    requests = uniq("rpc")
    ch.queue_declare(requests)
    server = pika.BlockingConnection(broker.params())
    try:
        sch = server.channel()
        replies = []
        ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p, b)), auto_ack=True)
        ch.basic_publish("", requests, b"6", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
        method, props, body = None, None, None
        deadline = time.monotonic() + 5
        while method is None and time.monotonic() < deadline:
            method, props, body = sch.basic_get(requests, auto_ack=True)
        assert method is not None
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        sch.basic_publish("", props.reply_to, b"%d" % (int(body) * 7),
                          pika.BasicProperties(correlation_id=props.correlation_id))
        deadline = time.monotonic() + 5
        while not replies and time.monotonic() < deadline:
            ch.connection.process_data_events(0.05)
        assert [(p.correlation_id, b) for p, b in replies] == [("c1", b"42")]
    finally:
        server.close()


def test_direct_reply_to_needs_the_consumer_first(ch):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", "anything", b"x", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to"))
        ch.queue_declare(uniq("sync"))  # a round trip to see the channel close
    assert e.value.reply_code == 406
