"""Error paths: each error is answered as RabbitMQ answers it, and afterwards the
same broker still serves a fresh client."""

import time

import pika
import pika.exceptions as pe
import pytest

import rawamqp
from helpers import uniq


def assert_broker_still_serves(broker):
    """A fresh client can declare, publish and get on the same broker."""
    c = broker.connect()
    try:
        ch = c.channel()
        q = uniq("alive")
        ch.queue_declare(q, auto_delete=False)
        ch.basic_publish("", q, b"still alive")
        method, _p, body = ch.basic_get(q, auto_ack=True)
        assert method is not None and body == b"still alive"
        ch.queue_delete(q)
    finally:
        c.close()


def test_bad_password(broker):
    params = broker.params(credentials=pika.PlainCredentials("guest", "wrong-password"))
    with pytest.raises((pe.ProbableAuthenticationError, pe.AuthenticationError)) as ei:
        pika.BlockingConnection(params)
    # RabbitMQ closes with 403 ACCESS_REFUSED (authentication_failure_close); pika
    # surfaces it as ProbableAuthenticationError carrying the reply.
    # pika: ProbableAuthenticationError("ConnectionClosedByBroker: (403) 'ACCESS_REFUSED - ...'")
    assert "(403) 'ACCESS_REFUSED" in str(ei.value)
    assert_broker_still_serves(broker)


def test_bad_user(broker):
    params = broker.params(credentials=pika.PlainCredentials("nobody-" + uniq(), "x"))
    with pytest.raises((pe.ProbableAuthenticationError, pe.AuthenticationError)):
        pika.BlockingConnection(params)
    assert_broker_still_serves(broker)


def test_unknown_vhost(broker):
    params = broker.params(virtual_host="no-such-vhost-" + uniq())
    with pytest.raises((pe.ProbableAccessDeniedError, pe.ConnectionClosedByBroker)) as ei:
        pika.BlockingConnection(params)
    # pika: ProbableAccessDeniedError("ConnectionClosedByBroker: (530) 'NOT_ALLOWED - ...'")
    assert "(530) 'NOT_ALLOWED" in str(ei.value)
    assert_broker_still_serves(broker)


def test_unknown_vhost_raw(broker):
    """connection.open of an unknown vhost -> connection.close 530 NOT_ALLOWED."""
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.handshake(open_vhost=False)
        rc.send(rawamqp.connection_open("no-such-vhost-" + uniq()))
        code, text, cls, meth = rc.expect_connection_close()
        assert code == 530
        assert text.startswith("NOT_ALLOWED")
        assert (cls, meth) == rawamqp.CONNECTION_OPEN
    finally:
        rc.close()


def test_bad_password_raw(broker):
    """Bad credentials -> connection.close 403 ACCESS_REFUSED (client advertised
    authentication_failure_close)."""
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.send(rawamqp.PROTOCOL_HEADER)
        rc.expect(rawamqp.CONNECTION_START)
        rc.send(rawamqp.start_ok("guest", "nope"))
        f = rc.read_frame()
        assert f.method == rawamqp.CONNECTION_CLOSE, f
        code, text, _c, _m = f.close_args()
        assert code == 403
        assert text.startswith("ACCESS_REFUSED")
    finally:
        rc.close()


def test_passive_declare_missing_queue(broker, conn):
    ch = conn.channel()
    q = uniq("missing")
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == "NOT_FOUND - no queue '%s' in vhost '/'" % q
    assert conn.is_open
    ch2 = conn.channel()
    ch2.queue_declare(uniq("after404"), exclusive=True)
    assert_broker_still_serves(broker)


def test_publish_to_missing_exchange(broker, conn):
    ch = conn.channel()
    x = uniq("nox")
    ch.basic_publish(x, "rk", b"lost")  # async: the error arrives as channel.close
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        # any synchronous call on the channel surfaces the close
        ch.queue_declare(uniq("q"), exclusive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == "NOT_FOUND - no exchange '%s' in vhost '/'" % x
    assert conn.is_open
    assert conn.channel().is_open
    assert_broker_still_serves(broker)


def test_garbage_instead_of_protocol_header(broker):
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data, closed = rc.read_all_until_eof(timeout=5)
        assert data == b"AMQP\x00\x00\x09\x01"
        assert closed, "server must close the socket after answering a bad header"
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_wrong_protocol_version_header(broker):
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.send(b"AMQP\x01\x01\x00\x0a")  # AMQP 0-10
        data, closed = rc.read_all_until_eof(timeout=5)
        assert data == b"AMQP\x00\x00\x09\x01"
        assert closed
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_frame_bigger_than_frame_max(broker):
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.handshake(frame_max=4096)
        rc.send(rawamqp.channel_open(1))
        rc.expect(rawamqp.CHANNEL_OPEN_OK)
        body = b"x" * 10000
        rc.send(rawamqp.basic_publish(1, "", "nowhere")
                + rawamqp.content_header(1, len(body))
                + rawamqp.body_frame(1, body))  # one 10000-byte frame > 4096
        code, text, _cls, _meth = rc.expect_connection_close()
        assert code == 501
        assert text.startswith("FRAME_ERROR")
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_bad_frame_end_octet(broker):
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.handshake()
        rc.send(rawamqp.frame(rawamqp.FRAME_METHOD, 1,
                              b"\x00\x14\x00\x0a\x00", end=0x00))  # channel.open, bad end
        code, text, _c, _m = rc.expect_connection_close()
        assert code == 501
        assert text.startswith("FRAME_ERROR")
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_method_on_unopened_channel(broker):
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.handshake()
        rc.send(rawamqp.queue_declare(5, uniq("never")))  # channel 5 never opened
        code, text, cls, meth = rc.expect_connection_close()
        assert code == 504
        assert text.startswith("CHANNEL_ERROR")
        assert (cls, meth) == rawamqp.QUEUE_DECLARE
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_raw_channel_error_closes_only_channel(broker):
    """Passive declare of a missing queue over the raw client: channel.close 404 on
    that channel; the connection stays up and another channel works."""
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.handshake()
        rc.send(rawamqp.channel_open(1))
        rc.expect(rawamqp.CHANNEL_OPEN_OK)
        q = uniq("rawmissing")
        rc.send(rawamqp.queue_declare(1, q, passive=True))
        f = rc.expect(rawamqp.CHANNEL_CLOSE)
        assert f.channel == 1
        code, text, cls, meth = f.close_args()
        assert (code, text) == (404, "NOT_FOUND - no queue '%s' in vhost '/'" % q)
        assert (cls, meth) == rawamqp.QUEUE_DECLARE
        rc.send(rawamqp.method_frame(1, (20, 41)))  # channel.close-ok
        rc.send(rawamqp.channel_open(2))
        rc.expect(rawamqp.CHANNEL_OPEN_OK)
    finally:
        rc.close()


def test_unknown_exchange_type_closes_connection(broker, conn):
    ch = conn.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as ei:
        ch.exchange_declare(uniq("x"), exchange_type="no-such-type")
    assert ei.value.reply_code == 503
    assert ei.value.reply_text.startswith("COMMAND_INVALID")
    assert not conn.is_open
    assert_broker_still_serves(broker)


def test_basic_recover_without_requeue_is_540(broker, conn):
    """pika's basic_recover() defaults to requeue=False, which RabbitMQ refuses
    with a connection-level 540 NOT_IMPLEMENTED."""
    ch = conn.channel()
    with pytest.raises(pe.ConnectionClosedByBroker) as ei:
        ch.basic_recover()
    assert ei.value.reply_code == 540
    assert ei.value.reply_text.startswith("NOT_IMPLEMENTED")
    assert_broker_still_serves(broker)


def test_reserved_amq_prefix_is_403(broker, conn):
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.exchange_declare("amq.foo-" + uniq(), exchange_type="direct")
    assert ei.value.reply_code == 403
    assert ei.value.reply_text.startswith("ACCESS_REFUSED")
    ch = conn.channel()
    with pytest.raises(pe.ChannelClosedByBroker) as ei:
        ch.queue_declare("amq.q-" + uniq())
    assert ei.value.reply_code == 403
    assert ei.value.reply_text.startswith("ACCESS_REFUSED")
    assert conn.is_open
    assert_broker_still_serves(broker)


@pytest.mark.slow
def test_silent_client_is_dropped_after_missed_heartbeats(broker):
    """A peer that negotiated heartbeat=1 and then stays silent is disconnected
    (RabbitMQ: after about two intervals, plain TCP close)."""
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.handshake(heartbeat=1)
        t0 = time.monotonic()
        data, closed = rc.read_all_until_eof(timeout=8)
        assert closed, "server kept a silent connection open for 8 s with heartbeat=1"
        assert time.monotonic() - t0 >= 1.0
    finally:
        rc.close()
    assert_broker_still_serves(broker)


# ---------------------------------------------------------------- more wire-level errors
# Each answer below is what RabbitMQ 3.10.8 sends (checked with this raw client).


def _raw_open(broker, **kw):
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    rc.handshake(**kw)
    return rc


def _raw_open_channel1(broker):
    rc = _raw_open(broker)
    rc.send(rawamqp.channel_open(1))
    rc.expect(rawamqp.CHANNEL_OPEN_OK)
    return rc


def test_channel_max_enforced_530(broker):
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.send(rawamqp.PROTOCOL_HEADER)
        rc.expect(rawamqp.CONNECTION_START)
        rc.send(rawamqp.start_ok())
        rc.expect(rawamqp.CONNECTION_TUNE)
        rc.send(rawamqp.tune_ok(channel_max=2))
        rc.send(rawamqp.connection_open())
        rc.expect(rawamqp.CONNECTION_OPEN_OK)
        for n in (1, 2):
            rc.send(rawamqp.channel_open(n))
            rc.expect(rawamqp.CHANNEL_OPEN_OK)
        rc.send(rawamqp.channel_open(3))  # a third channel with channel_max 2
        code, text, _c, _m = rc.expect_connection_close()
        assert code == 530
        assert text.startswith("NOT_ALLOWED")
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_unknown_frame_type_501(broker):
    rc = _raw_open(broker)
    try:
        rc.send(rawamqp.frame(9, 0, b"xx"))
        code, text, _c, _m = rc.expect_connection_close()
        assert code == 501
        assert text.startswith("FRAME_ERROR")
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_body_frame_without_content_header_505(broker):
    rc = _raw_open_channel1(broker)
    try:
        rc.send(rawamqp.basic_publish(1, "", "x") + rawamqp.body_frame(1, b"abc"))
        code, text, _c, _m = rc.expect_connection_close()
        assert code == 505
        assert text.startswith("UNEXPECTED_FRAME")
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_content_header_without_publish_505(broker):
    rc = _raw_open_channel1(broker)
    try:
        rc.send(rawamqp.content_header(1, 3))
        code, text, _c, _m = rc.expect_connection_close()
        assert code == 505
        assert text.startswith("UNEXPECTED_FRAME")
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_heartbeat_on_nonzero_channel_505(broker):
    # The spec asks for 501 here; RabbitMQ answers 505 UNEXPECTED_FRAME.
    rc = _raw_open_channel1(broker)
    try:
        rc.send(rawamqp.frame(rawamqp.FRAME_HEARTBEAT, 1, b""))
        code, text, _c, _m = rc.expect_connection_close()
        assert code == 505
        assert text.startswith("UNEXPECTED_FRAME")
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_second_channel_open_504(broker):
    rc = _raw_open_channel1(broker)
    try:
        rc.send(rawamqp.channel_open(1))
        code, text, cls, meth = rc.expect_connection_close()
        assert code == 504
        assert text.startswith("CHANNEL_ERROR")
        assert (cls, meth) == rawamqp.CHANNEL_OPEN
    finally:
        rc.close()
    assert_broker_still_serves(broker)


def test_amqplain_login(broker):
    rc = rawamqp.RawConnection(broker.amqp_host, broker.amqp_port)
    try:
        rc.send(rawamqp.PROTOCOL_HEADER)
        rc.expect(rawamqp.CONNECTION_START)
        response = rawamqp.table({"LOGIN": "guest", "PASSWORD": "guest"})[4:]  # no length
        rc.send(rawamqp.method_frame(0, rawamqp.CONNECTION_START_OK,
                                     rawamqp.table({"product": "rawamqp"})
                                     + rawamqp.shortstr("AMQPLAIN")
                                     + rawamqp.longstr(response) + rawamqp.shortstr("en_US")))
        rc.expect(rawamqp.CONNECTION_TUNE)
        rc.send(rawamqp.tune_ok())
        rc.send(rawamqp.connection_open())
        rc.expect(rawamqp.CONNECTION_OPEN_OK)
    finally:
        rc.close()


def test_server_capabilities(conn):
    caps = conn._impl.server_capabilities
    for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify",
                "per_consumer_qos", "authentication_failure_close"):
        assert caps.get(cap) is True, (cap, caps)
    props = conn._impl.server_properties
    for key in ("product", "version", "platform"):
        assert props.get(key), (key, props)
