"""Client libraries nobody on this project wrote, doing what their users do (issue 9).

Runs under pika 1.3.2 (the system-wide requirements) and again under pika 1.4.4 (the
second virtualenv tests/run makes); py-amqp is in both.
"""

import pika
import pytest

from helpers import uniq, wait_for

# pika 1.3 writes the negative one as 'L' and the others as 'l'; pika 1.4 writes all
# three as 'l'; py-amqp writes all three as 'L'.
BIG_HEADERS = {"big": 2**40, "min": -2**63, "max": 2**63 - 1}


def test_pika_version_is_one_of_the_pinned_ones():
    assert pika.__version__ in ("1.3.2", "1.4.4")


def test_pika_big_integer_headers_round_trip_by_get(ch):
    q = uniq("bigh")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"x", pika.BasicProperties(headers=BIG_HEADERS))
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"x"
    assert props.headers == BIG_HEADERS
    # The connection survived the publish.
    assert ch.is_open


def test_pika_big_integer_headers_round_trip_by_consume(ch):
    q = uniq("bigc")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"y", pika.BasicProperties(headers=BIG_HEADERS))
    got = []
    ch.basic_consume(q, lambda c, m, p, b: got.append(p.headers), auto_ack=True)
    wait_for(lambda: got, conn=ch.connection)
    assert got == [BIG_HEADERS]


def test_pika_big_integers_in_arrays_and_nested_tables(ch):
    q = uniq("bign")
    ch.queue_declare(q, exclusive=True)
    headers = {"list": [-2**63, 2**40, 1], "inner": {"min": -2**40}}
    ch.basic_publish("", q, b"z", pika.BasicProperties(headers=headers))
    _m, props, _b = ch.basic_get(q, auto_ack=True)
    assert props.headers == headers


def test_pika_headers_exchange_matches_an_l_integer(ch):
    # RabbitMQ reads 'L' as the same 64-bit integer as 'l', also for routing.
    x = uniq("hx")
    q = uniq("hq")
    ch.exchange_declare(x, exchange_type="headers", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x, arguments={"x-match": "all", "min": -2**63})
    ch.basic_publish(x, "", b"m", pika.BasicProperties(headers={"min": -2**63}))
    _m, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m"


@pytest.fixture
def py_amqp(broker):
    amqp = pytest.importorskip("amqp")
    c = amqp.Connection(host="%s:%d" % (broker.amqp_host, broker.amqp_port),
                        userid="guest", password="guest", virtual_host=broker.vhost)
    c.connect()
    yield amqp, c
    try:
        c.close()
    except Exception:
        pass


def test_py_amqp_big_integer_headers_round_trip_by_get_and_consume(py_amqp):
    amqp, c = py_amqp
    ch = c.channel()
    q = uniq("pyamqp")
    ch.queue_declare(q, exclusive=True)
    for body in (b"one", b"two"):
        ch.basic_publish(amqp.Message(body, application_headers=BIG_HEADERS), routing_key=q)
    msg = ch.basic_get(q, no_ack=True)
    assert msg.body == b"one"
    assert msg.headers == BIG_HEADERS
    got = []
    ch.basic_consume(q, callback=lambda m: got.append((m.body, m.headers)), no_ack=True)
    while not got:
        c.drain_events(timeout=10)
    assert got == [(b"two", BIG_HEADERS)]
    # Still usable afterwards.
    ch.queue_declare(q, passive=True)


# ---------------------------------------------------------------- update-secret


def test_update_secret_is_answered_and_the_connection_stays_usable(broker):
    conn = broker.connect()
    try:
        ch = conn.channel()
        q = uniq("secret")
        ch.queue_declare(q, exclusive=True)
        conn.update_secret("guest", "rotation")
        # As RabbitMQ 3.10 for a password login, a secret that is not the password is
        # accepted too (its internal backend has nothing that expires; pika's own
        # acceptance tests send 'new_secret' for guest/guest and expect update-secret-ok).
        conn.update_secret("new_secret", "reason")
        assert conn.is_open and ch.is_open
        ch.basic_publish("", q, b"after")
        _m, _p, body = ch.basic_get(q, auto_ack=True)
        assert body == b"after"
    finally:
        conn.close()
    # The login itself is unchanged: the old password still works, the new secret not.
    broker.connect().close()
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        broker.connect(credentials=pika.PlainCredentials("guest", "new_secret"))
