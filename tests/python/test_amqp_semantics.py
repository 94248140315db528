"""AMQP 0-9-1 semantics as RabbitMQ 3.x implements them, observed through pika."""

import datetime
import decimal
import os
import time

import pika
import pika.exceptions as pe
import pytest

import rawamqp
from helpers import drain, get_all, pump_until, uniq, wait_for

# ---------------------------------------------------------------- exchanges


def test_default_exchange_routes_by_queue_name(ch):
    q = uniq("dflt")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"hi")
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"hi"
    assert method.exchange == ""
    assert method.routing_key == q


def test_default_exchange_drops_unroutable(ch):
    ch.basic_publish("", uniq("nobody-home"), b"dropped")  # no error, silently dropped
    ch.queue_declare(uniq("q"), exclusive=True)  # the channel is still fine


@pytest.mark.parametrize("name,etype", [("amq.direct", "direct"), ("amq.fanout", "fanout"),
                                        ("amq.topic", "topic"), ("amq.headers", "headers")])
def test_predeclared_exchanges_exist(ch, name, etype):
    ch.exchange_declare(name, exchange_type=etype, passive=True)
    # redeclaring with the same type and durable=True is allowed
    ch.exchange_declare(name, exchange_type=etype, durable=True)


def test_amq_direct_routes(ch):
    q = uniq("amqd")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, "amq.direct", routing_key=q)
    ch.basic_publish("amq.direct", q, b"via amq.direct")
    assert get_all(ch, q) == [b"via amq.direct"]


def test_declare_amq_prefixed_exchange_is_403(conn):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.exchange_declare("amq.foo", exchange_type="direct")
    assert ei.value.reply_code == 403
    assert ei.value.reply_text.startswith("ACCESS_REFUSED")
    assert conn.is_open


def test_unknown_exchange_type_is_connection_error_503(conn):
    ch = conn.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as ei:
        ch.exchange_declare(uniq("x"), exchange_type="bogus")
    assert ei.value.reply_code == 503
    assert ei.value.reply_text.startswith("COMMAND_INVALID")


def test_exchange_passive_missing_is_404(conn):
    ch = conn.channel()
    x = uniq("nox")
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == "NOT_FOUND - no exchange '%s' in vhost '/'" % x


def test_exchange_redeclare_different_type_is_406(conn):
    ch = conn.channel()
    x = uniq("xr")
    ch.exchange_declare(x, exchange_type="direct", auto_delete=True)
    try:
        with pytest.raises(pe.ChannelClosedByBroker) as ei:
            ch.exchange_declare(x, exchange_type="fanout", auto_delete=True)
        assert ei.value.reply_code == 406
        assert ei.value.reply_text.startswith("PRECONDITION_FAILED")
    finally:
        conn.channel().exchange_delete(x)


def test_exchange_delete_if_unused(conn):
    ch = conn.channel()
    x = uniq("xdel")
    q = uniq("q")
    ch.exchange_declare(x, exchange_type="fanout")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x)
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.exchange_delete(x, if_unused=True)
    assert ei.value.reply_code == 406
    assert ei.value.reply_text.startswith("PRECONDITION_FAILED")
    ch = conn.channel()
    ch.queue_unbind(q, x)
    ch.exchange_delete(x, if_unused=True)
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.exchange_declare(x, passive=True)
    assert ei.value.reply_code == 404


def test_exchange_delete_missing_is_ok(ch):
    ch.exchange_delete(uniq("never-declared"))


def test_exchange_to_unbound_fanout_drops(ch):
    x = uniq("lonely")
    ch.exchange_declare(x, exchange_type="fanout", auto_delete=True)
    ch.basic_publish(x, "", b"nobody")
    ch.exchange_delete(x)


# ---------------------------------------------------------------- queues


def test_declare_ok_counts_ready_messages_only(conn):
    ch = conn.channel()
    q = uniq("cnt")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()  # so each publish is enqueued before we count
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.message_count == 5
    assert ok.method.consumer_count == 0
    # take two without acking: they are unacked, not ready
    m1, _, _ = ch.basic_get(q, auto_ack=False)
    m2, _, _ = ch.basic_get(q, auto_ack=False)
    assert m1 and m2
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.message_count == 3
    ch.basic_ack(m2.delivery_tag, multiple=True)
    ok = ch.queue_declare(q, exclusive=True)  # active redeclare reports the same
    assert ok.method.message_count == 3
    assert ok.method.queue == q


def test_declare_ok_consumer_count(conn):
    ch = conn.channel()
    q = uniq("cc")
    ch.queue_declare(q, exclusive=True)
    ch.basic_consume(q, lambda *a: None, auto_ack=True)
    ch.basic_consume(q, lambda *a: None, auto_ack=True)
    ok = ch.queue_declare(q, passive=True)
    assert ok.method.consumer_count == 2


def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True)
    assert ok.method.queue.startswith("amq.gen-")
    ok2 = ch.queue_declare("", exclusive=True)
    assert ok2.method.queue != ok.method.queue


def test_purge_returns_count(ch):
    q = uniq("purge")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    for i in range(7):
        ch.basic_publish("", q, b"x")
    ok = ch.queue_purge(q)
    assert ok.method.message_count == 7
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.queue_purge(q).method.message_count == 0


def test_delete_returns_count(ch):
    q = uniq("delcount")
    ch.queue_declare(q)
    ch.confirm_delivery()
    for _ in range(4):
        ch.basic_publish("", q, b"x")
    ok = ch.queue_delete(q)
    assert ok.method.message_count == 4


def test_delete_if_empty_406(conn):
    ch = conn.channel()
    q = uniq("ifempty")
    ch.queue_declare(q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.queue_delete(q, if_empty=True)
    assert ei.value.reply_code == 406
    assert ei.value.reply_text.startswith("PRECONDITION_FAILED")
    ch = conn.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    ch.queue_delete(q)


def test_delete_if_unused_406(conn):
    ch = conn.channel()
    q = uniq("ifunused")
    ch.queue_declare(q)
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    ch2 = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch2.queue_delete(q, if_unused=True)
    assert ei.value.reply_code == 406
    assert ei.value.reply_text.startswith("PRECONDITION_FAILED")
    ch.basic_cancel(tag)
    ch.queue_delete(q, if_unused=True)
    ch3 = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch3.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404


def test_delete_missing_queue_is_ok_zero(ch):
    ok = ch.queue_delete(uniq("never"))
    assert ok.method.message_count == 0


def test_passive_declare_missing_404_text(conn):
    ch = conn.channel()
    q = uniq("nope")
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == "NOT_FOUND - no queue '%s' in vhost '/'" % q


@pytest.mark.parametrize("field", ["durable", "auto_delete", "arguments"])
def test_redeclare_different_is_406(conn, field):
    ch = conn.channel()
    q = uniq("redecl")
    base = dict(durable=False, auto_delete=False, arguments=None)
    ch.queue_declare(q, **base)
    other = dict(base)
    other[field] = {"x-max-length": 10} if field == "arguments" else True
    try:
        with pytest.raises(pe.ChannelClosedByBroker) as ei:
            ch.queue_declare(q, **other)
        assert ei.value.reply_code == 406
        expect = {"durable": "durable", "auto_delete": "auto_delete",
                  "arguments": "x-max-length"}[field]
        assert ei.value.reply_text.startswith(
            "PRECONDITION_FAILED - inequivalent arg '%s'" % expect), ei.value.reply_text
    finally:
        conn.channel().queue_delete(q)


def test_redeclare_different_exclusive_is_405(broker, conn):
    ch = conn.channel()
    q = uniq("exflag")
    ch.queue_declare(q)
    try:
        with pytest.raises(pe.ChannelClosedByBroker) as ei:
            ch.queue_declare(q, exclusive=True)
        assert ei.value.reply_code == 405
        assert ei.value.reply_text.startswith("RESOURCE_LOCKED")
    finally:
        conn.channel().queue_delete(q)


@pytest.mark.parametrize("op", ["passive", "consume", "get", "purge", "delete", "bind"])
def test_exclusive_queue_locked_to_other_connection(broker, conn, op):
    owner = conn.channel()
    q = uniq("excl")
    owner.queue_declare(q, exclusive=True)
    other = broker.connect()
    try:
        ch = other.channel()
        with pytest.raises(pe.ChannelClosedByBroker) as ei:
            if op == "passive":
                ch.queue_declare(q, passive=True)
            elif op == "consume":
                ch.basic_consume(q, lambda *a: None)
            elif op == "get":
                ch.basic_get(q)
            elif op == "purge":
                ch.queue_purge(q)
            elif op == "delete":
                ch.queue_delete(q)
            elif op == "bind":
                ch.queue_bind(q, "amq.fanout")
        assert ei.value.reply_code == 405
        assert ei.value.reply_text.startswith("RESOURCE_LOCKED")
        # publishing to it from the other connection is allowed (RPC replies)
        ch = other.channel()
        ch.confirm_delivery()
        ch.basic_publish("", q, b"from outside", mandatory=True)
    finally:
        other.close()
    assert get_all(owner, q) == [b"from outside"]


def test_exclusive_queue_gone_after_connection_closes(broker, conn):
    c = broker.connect()
    q = uniq("exgone")
    c.channel().queue_declare(q, exclusive=True)
    c.close()
    gone = wait_for(lambda: _queue_missing(conn, q), timeout=5)
    assert gone, "exclusive queue %s survived its connection" % q


def _queue_missing(conn, q):
    ch = conn.channel()
    try:
        ch.queue_declare(q, passive=True)
    except pe.ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return True
    ch.close()
    return False


def test_auto_delete_queue_gone_after_last_consumer_cancels(conn):
    ch = conn.channel()
    q = uniq("autodel")
    ch.queue_declare(q, auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    t2 = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    ch.basic_cancel(t1)
    assert not _queue_missing(conn, q), "auto_delete queue deleted while a consumer remains"
    ch.basic_cancel(t2)
    assert wait_for(lambda: _queue_missing(conn, q), timeout=5)


def test_auto_delete_queue_without_consumers_stays(conn):
    ch = conn.channel()
    q = uniq("autodel-never-consumed")
    ch.queue_declare(q, auto_delete=True)
    ch.basic_publish("", q, b"x")
    assert not _queue_missing(conn, q)
    conn.channel().queue_delete(q)


# ---------------------------------------------------------------- routing


def test_headers_exchange_all_any_typed(ch):
    x = uniq("hdrs")
    ch.exchange_declare(x, exchange_type="headers", auto_delete=True)
    qs = {name: uniq(name) for name in ("all", "any", "default", "typed")}
    for q in qs.values():
        ch.queue_declare(q, exclusive=True)
    ch.queue_bind(qs["all"], x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(qs["any"], x, arguments={"x-match": "any", "format": "pdf", "type": "log"})
    ch.queue_bind(qs["default"], x, arguments={"format": "pdf", "type": "report"})  # = all
    ch.queue_bind(qs["typed"], x, arguments={"x-match": "all", "n": 1})

    def pub(body, headers):
        ch.basic_publish(x, "", body, pika.BasicProperties(headers=headers))

    pub(b"both", {"format": "pdf", "type": "report"})
    pub(b"format-only", {"format": "pdf"})
    pub(b"type-log", {"type": "log", "format": "zip"})
    pub(b"nothing", {"other": "x"})
    pub(b"n-int", {"n": 1})
    pub(b"n-str", {"n": "1"})
    pub(b"n-bool", {"n": True})
    time.sleep(0.2)
    assert get_all(ch, qs["all"]) == [b"both"]
    assert get_all(ch, qs["default"]) == [b"both"]
    assert get_all(ch, qs["any"]) == [b"both", b"format-only", b"type-log"]
    assert get_all(ch, qs["typed"]) == [b"n-int"]


def test_topic_edge_cases(ch):
    x = uniq("topic")
    ch.exchange_declare(x, exchange_type="topic", auto_delete=True)
    patterns = ["log.*", "log.#", "#.log.#", "*", "#", "a.*.c", "a.#.c", "*.*"]
    qs = {}
    for p in patterns:
        q = uniq("tp")
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, x, routing_key=p)
        qs[p] = q
    keys = ["log", "log.warn", "log.warn.timeout", "mq.log.error", "", "a.b.c", "a.c",
            "a.b.b.c", "x.y", "a..c"]
    for k in keys:
        ch.basic_publish(x, k, k.encode() or b"<empty>")
    time.sleep(0.2)
    got = {p: get_all(ch, q) for p, q in qs.items()}
    enc = lambda ks: [k.encode() or b"<empty>" for k in ks]  # noqa: E731
    assert got["log.*"] == enc(["log.warn"])
    assert got["log.#"] == enc(["log", "log.warn", "log.warn.timeout"])
    assert got["#.log.#"] == enc(["log", "log.warn", "log.warn.timeout", "mq.log.error"])
    assert got["*"] == enc(["log"])  # '*' does not match the empty key
    assert got["#"] == enc(keys)  # '#' matches everything, the empty key included
    assert got["a.*.c"] == enc(["a.b.c", "a..c"])  # '*' matches an empty word between dots
    assert got["a.#.c"] == enc(["a.b.c", "a.c", "a.b.b.c", "a..c"])
    assert got["*.*"] == enc(["log.warn", "a.c", "x.y"])


# ---------------------------------------------------------------- get / ack


def test_basic_get_and_get_empty(ch):
    q = uniq("get")
    ch.queue_declare(q, exclusive=True)
    method, props, body = ch.basic_get(q)
    assert method is None and props is None and body is None  # get-empty
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"a"
    assert method.message_count == 1  # messages left after this one
    assert method.redelivered is False
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"b" and method.message_count == 0


def test_ack_multiple(conn):
    ch = conn.channel()
    q = uniq("ackm")
    ch.queue_declare(q, exclusive=True)
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(5)]
    assert tags == sorted(tags)
    ch.basic_ack(tags[2], multiple=True)  # acks 0,1,2
    ch.close()  # 3,4 go back
    ch = conn.channel()
    assert get_all(ch, q) == [b"3", b"4"]


def test_reject_requeue_and_discard(ch):
    q = uniq("rej")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    m, _, _ = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, _, body = ch.basic_get(q)
    assert body == b"one" and m.redelivered is True  # back to its original position
    ch.basic_reject(m.delivery_tag, requeue=False)  # discarded
    m, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"two" and m.redelivered is False
    assert ch.basic_get(q)[0] is None


def test_nack_multiple_requeue_keeps_order(ch):
    q = uniq("nackm")
    ch.queue_declare(q, exclusive=True)
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    got = []
    for _ in range(4):
        m, _, body = ch.basic_get(q, auto_ack=True)
        got.append((body, m.redelivered))
    assert got == [(b"0", True), (b"1", True), (b"2", True), (b"3", False)]


def test_nack_multiple_discard(ch):
    q = uniq("nackd")
    ch.queue_declare(q, exclusive=True)
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(2)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    assert get_all(ch, q) == [b"2"]


def test_recover_requeue_true_redelivers(conn):
    ch = conn.channel()
    q = uniq("recover")
    ch.queue_declare(q, exclusive=True)
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append((b, m.redelivered)))
    assert pump_until(conn, lambda: len(got) == 3)
    ch.basic_recover(requeue=True)
    assert pump_until(conn, lambda: len(got) == 6)
    assert got[:3] == [(b"0", False), (b"1", False), (b"2", False)]
    assert got[3:] == [(b"0", True), (b"1", True), (b"2", True)]


def test_recover_default_requeue_false_is_540(conn):
    """pika's basic_recover() sends requeue=False; RabbitMQ: connection.close 540."""
    ch = conn.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as ei:
        ch.basic_recover()
    assert ei.value.reply_code == 540
    assert ei.value.reply_text.startswith("NOT_IMPLEMENTED")


def test_unacked_requeued_on_channel_close_in_order(conn):
    ch = conn.channel()
    q = uniq("chclose")
    ch.queue_declare(q)
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    for _ in range(3):
        ch.basic_get(q)
    ch.close()
    ch = conn.channel()
    got = []
    for _ in range(5):
        m, _, body = ch.basic_get(q, auto_ack=True)
        got.append((body, m.redelivered))
    assert got == [(b"0", True), (b"1", True), (b"2", True), (b"3", False), (b"4", False)]
    ch.queue_delete(q)


# ---------------------------------------------------------------- mandatory, confirms, tx


def test_mandatory_unroutable_returns_312(conn):
    ch = conn.channel()
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, b)))
    ch.basic_publish("", uniq("noroute"), b"bounce", mandatory=True)
    assert pump_until(conn, lambda: returned, timeout=5)
    method, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert body == b"bounce"


def test_mandatory_with_confirms_raises_unroutable(ch):
    ch.confirm_delivery()
    with pytest.raises(pe.UnroutableError) as ei:
        ch.basic_publish("amq.direct", uniq("noroute"), b"bounce", mandatory=True)
    msgs = ei.value.messages
    assert len(msgs) == 1 and msgs[0].body == b"bounce"
    assert msgs[0].method.reply_code == 312
    q = uniq("route")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"ok", mandatory=True)  # routable: confirmed, no error


def test_publisher_confirms_many(ch):
    q = uniq("confirm")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    n = 500
    for i in range(n):
        ch.basic_publish("", q, b"%d" % i)  # each publish waits for its ack
    assert ch.queue_declare(q, passive=True).method.message_count == n


def test_publisher_confirms_async_multiple(broker):
    """With the async-style API (SelectConnection is heavy here): raw pipelined
    confirms via the impl channel; every delivery tag is acked, possibly in batches."""
    conn = broker.connect()
    try:
        ch = conn.channel()
        q = uniq("confirm-multi")
        ch.queue_declare(q, exclusive=True)
        acked = set()
        nacked = []
        impl = ch._impl

        def on_confirm(frame):
            m = frame.method
            tags = {m.delivery_tag}
            if getattr(m, "multiple", False):
                tags = {t for t in range(1, m.delivery_tag + 1)}
            if isinstance(m, pika.spec.Basic.Ack):
                acked.update(tags)
            else:
                nacked.append(m)

        done = []
        impl.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda f: done.append(f))
        assert pump_until(conn, lambda: done)
        n = 1000
        for i in range(n):
            impl.basic_publish("", q, b"%d" % i)
        assert pump_until(conn, lambda: len(acked) >= n, timeout=20)
        assert acked == set(range(1, n + 1))
        assert not nacked
    finally:
        conn.close()


def test_tx_commit_and_rollback(conn):
    ch = conn.channel()
    q = uniq("tx")
    ch.queue_declare(q, exclusive=True)
    ch.tx_select()
    ch.basic_publish("", q, b"rolled back")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_rollback()
    ch.basic_publish("", q, b"committed")
    ch.tx_commit()
    other = conn.channel()
    assert get_all(other, q) == [b"committed"]


def test_tx_ack_rollback_keeps_message_unacked(conn):
    ch = conn.channel()
    q = uniq("txack")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"m")
    ch.tx_select()
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    ch.tx_rollback()  # the ack is undone: the message is still unacked on ch
    ch.close()
    other = conn.channel()
    m, _, body = other.basic_get(q, auto_ack=True)
    assert body == b"m" and m.redelivered is True


# ---------------------------------------------------------------- properties and bodies


def test_all_basic_properties_round_trip(ch):
    q = uniq("props")
    ch.queue_declare(q, exclusive=True)
    headers = {
        "str": "value", "int": 42, "neg": -7, "big": 2 ** 40, "bool": True, "none": None,
        "decimal": decimal.Decimal("3.14"), "time": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "bytes": b"\x00\x01\xff", "list": [1, "two", False],
        "nested": {"a": {"b": "c"}},
    }
    props = pika.BasicProperties(
        content_type="application/json", content_encoding="gzip", headers=headers,
        delivery_mode=2, priority=7, correlation_id="corr-1", reply_to="reply-q",
        expiration="60000", message_id="msg-1", timestamp=1700000000, type="kind",
        user_id="guest", app_id="qgate-tests", cluster_id="cluster-x")
    ch.basic_publish("", q, b"{}", props)
    _m, p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"{}"
    for name in ("content_type", "content_encoding", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                 "type", "user_id", "app_id", "cluster_id"):
        assert getattr(p, name) == getattr(props, name), name
    assert p.headers["str"] == "value"
    assert p.headers["int"] == 42 and p.headers["neg"] == -7 and p.headers["big"] == 2 ** 40
    assert p.headers["bool"] is True and p.headers["none"] is None
    assert p.headers["decimal"] == decimal.Decimal("3.14")
    # pika 1.3 decodes a timestamp as a naive datetime, pika 1.4 as an aware one in UTC.
    t = p.headers["time"]
    assert t.tzinfo in (None, datetime.timezone.utc), t
    assert t.replace(tzinfo=None) == datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert p.headers["bytes"] == b"\x00\x01\xff"
    assert p.headers["list"] == [1, "two", False]
    assert p.headers["nested"] == {"a": {"b": "c"}}


def test_no_properties_means_none(ch):
    q = uniq("noprops")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"x")
    _m, p, _b = ch.basic_get(q, auto_ack=True)
    for name in ("content_type", "headers", "delivery_mode", "priority", "correlation_id",
                 "reply_to", "expiration", "message_id", "timestamp", "type", "user_id",
                 "app_id", "cluster_id"):
        assert getattr(p, name) is None, name


def test_user_id_mismatch_is_406(conn):
    ch = conn.channel()
    q = uniq("uid")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x", pika.BasicProperties(user_id="someone-else"))
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 406
    assert ei.value.reply_text.startswith("PRECONDITION_FAILED")
    conn.channel().queue_delete(q)


@pytest.mark.parametrize("body", [b"", bytes(range(256)) * 3 + b"\x00\r\n\x00",
                                  os.urandom(5 * 1024 * 1024)],
                         ids=["empty", "binary", "5MiB"])
def test_body_round_trip(conn, body):
    ch = conn.channel()
    q = uniq("body")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, body)
    _m, _p, got = ch.basic_get(q, auto_ack=True)
    assert got == body
    # and through a consumer
    ch.basic_publish("", q, body)
    got = drain(ch, q, 1)
    assert len(got) == 1 and got[0][2] == body


def test_body_split_by_small_frame_max(broker):
    c = broker.connect(frame_max=4096)
    try:
        ch = c.channel()
        q = uniq("smallframes")
        ch.queue_declare(q, exclusive=True)
        body = os.urandom(100000)
        ch.basic_publish("", q, body)
        assert ch.basic_get(q, auto_ack=True)[2] == body
    finally:
        c.close()


# ---------------------------------------------------------------- consumers, qos


def test_prefetch_limits_unacked(conn):
    ch = conn.channel()
    q = uniq("qos")
    ch.queue_declare(q, exclusive=True)
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    ch.basic_qos(prefetch_count=3)
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(m))
    pump_until(conn, lambda: False, timeout=1.0)
    assert len(got) == 3
    assert ch.queue_declare(q, passive=True).method.message_count == 7
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    pump_until(conn, lambda: False, timeout=1.0)
    assert len(got) == 6


def test_round_robin_two_consumers(conn):
    ch = conn.channel()
    q = uniq("rr")
    ch.queue_declare(q, exclusive=True)
    got = {"a": [], "b": []}
    ch.basic_consume(q, lambda c, m, p, b: got["a"].append(b), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got["b"].append(b), auto_ack=True)
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    assert pump_until(conn, lambda: len(got["a"]) + len(got["b"]) == 10)
    assert len(got["a"]) == 5 and len(got["b"]) == 5
    assert sorted(got["a"] + got["b"], key=int) == [b"%d" % i for i in range(10)]
    # strictly alternating
    firsts = got["a"] if got["a"][0] == b"0" else got["b"]
    assert firsts == [b"0", b"2", b"4", b"6", b"8"]


def test_consumer_cancel_notification_on_queue_delete(broker, conn):
    ch = conn.channel()
    q = uniq("cancelnotify")
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=True)
    other = broker.connect()
    try:
        other.channel().queue_delete(q)
    finally:
        other.close()
    assert pump_until(conn, lambda: cancelled, timeout=5)
    assert cancelled == [tag]
    assert tag not in ch.consumer_tags
    assert ch.is_open


def test_consume_generator_ends_on_queue_delete(broker, conn):
    ch = conn.channel()
    q = uniq("cancelgen")
    ch.queue_declare(q)
    ch.basic_publish("", q, b"first")
    it = ch.consume(q, auto_ack=True, inactivity_timeout=0.2)
    first = None
    deadline = time.monotonic() + 5
    while first is None and time.monotonic() < deadline:
        first = next(it)
    assert first[2] == b"first"
    other = broker.connect()
    other.channel().queue_delete(q)
    other.close()
    ended = False
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            next(it)
        except StopIteration:
            ended = True
            break
    assert ended, "consume() generator did not end after basic.cancel from the broker"


def test_server_generated_consumer_tag(broker):
    """basic.consume with an empty consumer tag -> consume-ok carries amq.ctag-..."""
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.handshake()
        rc.send(rawamqp.channel_open(1))
        rc.expect(rawamqp.CHANNEL_OPEN_OK)
        q = uniq("ctag")
        rc.send(rawamqp.queue_declare(1, q, exclusive=True))
        rc.expect((50, 11))
        rc.send(rawamqp.basic_consume(1, q, ""))
        f = rc.expect((60, 21))
        n = f.payload[4]
        tag = f.payload[5:5 + n].decode()
        assert tag.startswith("amq.ctag-"), tag
    finally:
        rc.close()


def test_exclusive_consumer(broker, conn):
    ch = conn.channel()
    q = uniq("exconsumer")
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    ch2 = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch2.basic_consume(q, lambda *a: None)
    assert ei.value.reply_code == 403
    assert ei.value.reply_text.startswith("ACCESS_REFUSED")
    conn.channel().queue_delete(q)


# ---------------------------------------------------------------- heartbeats


@pytest.mark.slow
def test_heartbeat_negotiated_and_idle_connection_survives(broker):
    c = broker.connect(heartbeat=2)
    try:
        assert c._impl.params.heartbeat == 2
        checker = c._impl._heartbeat_checker
        assert checker is not None
        c.sleep(6)  # pika processes I/O (and sends heartbeats) while sleeping
        assert c.is_open
        assert checker._heartbeat_frames_received >= 2, "server sent no heartbeats"
        ch = c.channel()
        q = uniq("hb")
        ch.queue_declare(q, exclusive=True)
        ch.basic_publish("", q, b"alive")
        assert ch.basic_get(q, auto_ack=True)[2] == b"alive"
    finally:
        c.close()


# ---------------------------------------------------------------- ttl, length limit, global qos


def test_per_message_expiration_never_delivered(ch):
    q = uniq("exp")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"short", pika.BasicProperties(expiration="100"))
    ch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    ch.basic_publish("", q, b"none")
    time.sleep(0.4)
    got = []
    for _ in range(3):
        m, p, body = ch.basic_get(q, auto_ack=True)
        if m is None:
            break
        got.append((body, p.expiration))
    assert got == [(b"long", "60000"), (b"none", None)]


def test_queue_message_ttl(ch):
    q = uniq("qttl")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 100})
    ch.basic_publish("", q, b"gone")
    time.sleep(0.4)
    ch.basic_publish("", q, b"fresh")
    assert get_all(ch, q) == [b"fresh"]


def test_queue_max_length_drops_head(ch):
    q = uniq("maxlen")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 2})
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    assert get_all(ch, q) == [b"2", b"3"]


def test_global_qos_limits_the_channel(conn):
    """RabbitMQ: basic.qos global=true limits all consumers of the channel together."""
    ch = conn.channel()
    q1, q2 = uniq("g1"), uniq("g2")
    for q in (q1, q2):
        ch.queue_declare(q, exclusive=True)
        for i in range(5):
            ch.basic_publish("", q, b"%d" % i)
    ch.basic_qos(prefetch_count=3, global_qos=True)
    got = []
    ch.basic_consume(q1, lambda c, m, p, b: got.append(m))
    ch.basic_consume(q2, lambda c, m, p, b: got.append(m))
    pump_until(conn, lambda: False, timeout=1.0)
    assert len(got) == 3
    ch.basic_ack(got[-1].delivery_tag, multiple=True)
    pump_until(conn, lambda: False, timeout=1.0)
    assert len(got) == 6


def test_channel_error_leaves_other_channels_alone(conn):
    good = conn.channel()
    q = uniq("survivor")
    good.queue_declare(q, exclusive=True)
    got = []
    good.basic_consume(q, lambda c, m, p, b: got.append(b), auto_ack=True)
    bad = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker):
        bad.queue_declare(uniq("missing"), passive=True)
    good.basic_publish("", q, b"still consuming")
    assert pump_until(conn, lambda: got == [b"still consuming"])
    assert good.is_open and conn.is_open


def test_many_channels_on_one_connection(conn):
    chans = [conn.channel() for _ in range(50)]
    q = uniq("manych")
    chans[0].queue_declare(q, exclusive=True)
    for i, c in enumerate(chans):
        c.basic_publish("", q, b"%d" % i)
    assert sorted(get_all(chans[-1], q), key=int) == [b"%d" % i for i in range(50)]
    numbers = {c.channel_number for c in chans}
    assert len(numbers) == 50


@pytest.mark.qgate_only
def test_stalled_no_ack_consumer_leaves_messages_in_the_queue(broker, ch):
    """A no-ack consumer that stops reading its socket does not make the broker buffer
    the whole queue for it: what it cannot take stays ready in the queue (qgate bounds
    the deliveries waiting in a connection's write buffers; RabbitMQ does the same with
    its credit flow, with other numbers)."""
    import socket
    from rawamqp import RawConnection, channel_open, basic_consume, queue_declare

    q = uniq("stalled")
    ch.queue_declare(q)
    raw = RawConnection(broker.amqp_host, broker.amqp_port)
    raw.handshake()
    raw.send(channel_open(1))
    raw.expect((20, 11))
    raw.send(basic_consume(1, q, tag="stalled", no_ack=True))
    raw.expect((60, 21))
    # Shrink our receive buffer so TCP pushes back early, then stop reading.
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = b"x" * 4096
    for _ in range(5000):
        ch.basic_publish("", q, body)
    ch.confirm_delivery()  # a round trip: every publish above has been routed
    time.sleep(0.5)
    ready = ch.queue_declare(q, passive=True).method.message_count
    assert ready > 2000, "only %d of 5000 messages left in the queue" % ready
    raw.close()
