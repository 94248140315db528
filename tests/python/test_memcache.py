"""The memcache text-protocol front end (memcacheq-compatible, issue 3).

These cannot be validated against RabbitMQ.  They are written from issue 3, DESIGN.md
and PEER-NOTES.md; answers marked [PEER] are memcacheq 0.2.1's observed bytes (and
match its source: memcacheq.c), [MEMCACHED] where memcacheq is broken and memcached's
behaviour is required instead, [ISSUE] where the answer is qgate's own extension
(Kestrel-style suffixes) as the issue specifies it.

Skipped when the suite runs against an external AMQP broker without
QGATE_TEST_MEMCACHE_ADDR.
"""

import re
import socket
import threading
import time

import pika
import pytest

from helpers import uniq

pytestmark = pytest.mark.memcache

CRLF = b"\r\n"


class MC:
    """A raw memcache text-protocol connection."""

    def __init__(self, addr, timeout=10.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("server closed the connection; unread %r" % self.buf[:200])
        self.buf += chunk

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_line(self):
        while CRLF not in self.buf:
            self._fill()
        i = self.buf.index(CRLF) + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def expect(self, expected):
        """Read exactly len(expected) bytes and compare byte for byte."""
        try:
            got = self.read_exact(len(expected))
        except socket.timeout:
            raise AssertionError("timeout; expected %r, got only %r" % (expected, self.buf))
        assert got == expected
        return got

    def cmd(self, line):
        self.send(line + CRLF)
        return self.read_line()

    def set(self, key, data, flags=0, exptime=0):
        if isinstance(key, str):
            key = key.encode()
        self.send(b"set %s %d %d %d\r\n%s\r\n" % (key, flags, exptime, len(data), data))
        self.expect(b"STORED\r\n")

    def get(self, key):
        """One message (flags, data) or None; consumes through END."""
        if isinstance(key, str):
            key = key.encode()
        self.send(b"get " + key + CRLF)
        return self.read_get_response(key)

    def read_get_response(self, key=None):
        values = self.read_values()
        assert len(values) <= 1, values
        if not values:
            return None
        k, flags, data = values[0]
        if key is not None:
            assert k == key
        return flags, data

    def read_values(self):
        """Read VALUE blocks until END; returns [(key, flags, data)]."""
        out = []
        while True:
            line = self.read_line()
            if line == b"END\r\n":
                return out
            m = re.match(rb"^VALUE (\S+) (\d+) (\d+)\r\n$", line)
            assert m, "unexpected line %r" % line
            data = self.read_exact(int(m.group(3)))
            assert self.read_exact(2) == CRLF
            out.append((m.group(1), int(m.group(2)), data))

    def nothing_pending(self, wait=0.2):
        """True if the server sends nothing more within `wait` seconds."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(10.0)
        self.buf += chunk
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def mc(mc_addr):
    c = MC(mc_addr)
    yield c
    c.close()


def qname(prefix="mq"):
    return uniq(prefix)


def assert_usable(mc_addr, mc=None):
    """After an error: a valid set/get works on the same connection and on a new one."""
    conns = [mc] if mc is not None else []
    fresh = MC(mc_addr)
    conns.append(fresh)
    try:
        for c in conns:
            q = qname("usable")
            c.set(q, b"ok")
            assert c.get(q) == (0, b"ok")
            c.send(b"delete " + q.encode() + CRLF)
            c.expect(b"DELETED\r\n")
    finally:
        fresh.close()


def resync(mc):
    """Skip whatever error lines an ambiguous bad input produced: send `version` and
    read lines until the VERSION answer."""
    mc.send(b"version\r\n")
    for _ in range(20):
        line = mc.read_line()
        if line.startswith(b"VERSION "):
            return
        assert line.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")), line
    raise AssertionError("no VERSION answer")


# ================================================================ raw transcripts


def test_set_get_end(mc):
    q = qname().encode()
    mc.send(b"set " + q + b" 0 0 5\r\nhello\r\n")
    mc.expect(b"STORED\r\n")  # [PEER]
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"VALUE " + q + b" 0 5\r\nhello\r\nEND\r\n")  # [PEER]
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"END\r\n")  # [PEER] empty queue -> just END
    assert mc.nothing_pending()


def test_get_unknown_queue_is_end(mc):
    mc.send(b"get " + qname("never").encode() + b"\r\n")
    mc.expect(b"END\r\n")  # [PEER]


def test_fifo_order(mc):
    q = qname()
    for i in range(10):
        mc.set(q, b"m%d" % i)
    assert [mc.get(q) for _ in range(11)] == [(0, b"m%d" % i) for i in range(10)] + [None]


@pytest.mark.parametrize("flags", [0, 1, 42, 65535, 2 ** 31, 2 ** 32 - 1])
def test_flags_round_trip(mc, flags):
    # [MEMCACHED] flags are unsigned 32-bit; memcacheq turns >= 2^31 negative (not copied)
    q = qname()
    mc.set(q, b"x", flags=flags)
    q = q.encode()
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"VALUE %s %d 1\r\nx\r\nEND\r\n" % (q, flags))


def test_get_same_key_repeated_takes_successive_messages(mc):
    q = qname().encode()
    mc.send(b"set " + q + b" 0 0 1\r\na\r\nset " + q + b" 0 0 1\r\nb\r\n")
    mc.expect(b"STORED\r\nSTORED\r\n")
    mc.send(b"get %s %s %s\r\n" % (q, q, q))
    mc.expect(b"VALUE %s 0 1\r\na\r\nVALUE %s 0 1\r\nb\r\nEND\r\n" % (q, q))  # [PEER]


def test_get_several_queues_in_key_order(mc):
    q1, q2, q3 = (qname(p).encode() for p in ("k1", "k2", "k3"))
    mc.set(q1, b"one", flags=1)
    mc.set(q3, b"three", flags=3)
    mc.send(b"get %s %s %s\r\n" % (q3, q2, q1))
    mc.expect(b"VALUE %s 3 5\r\nthree\r\nVALUE %s 1 3\r\none\r\nEND\r\n" % (q3, q1))


def test_delete(mc):
    q = qname().encode()
    mc.set(q, b"x")
    mc.send(b"delete " + q + b"\r\n")
    mc.expect(b"DELETED\r\n")  # [PEER]
    mc.send(b"delete " + q + b"\r\n")
    mc.expect(b"NOT_FOUND\r\n")  # [PEER]
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"END\r\n")


@pytest.mark.parametrize("line", [
    b"bogus", b"gets q", b"incr q 1", b"decr q 1", b"touch q 10", b"stats bogus", b"",
    b"get", b"set q 0 0", b"add q 0 0 1", b"flush_all"])
def test_unknown_or_malformed_command_is_error(mc, mc_addr, line):
    # [PEER] memcacheq answers all of these with a plain ERROR
    # (add/flush_all are not memcacheq commands either; no data block follows them here)
    mc.send(line + CRLF)
    mc.expect(b"ERROR\r\n")
    assert mc.nothing_pending(0.1)
    assert_usable(mc_addr, mc)


def test_bad_data_chunk(mc, mc_addr):
    q = qname().encode()
    # 6 data bytes where 3 were declared: memcacheq reads 3+2 bytes, sees no CRLF ->
    # CLIENT_ERROR bad data chunk, then parses the leftover "f\r\n" as a command -> ERROR
    mc.send(b"set " + q + b" 0 0 3\r\nabcdef\r\n")
    mc.expect(b"CLIENT_ERROR bad data chunk\r\nERROR\r\n")  # [PEER]
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"END\r\n")  # nothing stored
    assert_usable(mc_addr, mc)


def test_bad_data_chunk_short_block_then_valid(mc, mc_addr):
    q = qname().encode()
    # declared 5, sent 3 + CRLF: 5+2 bytes are "abc\r\nge" -> bad chunk; leftover
    # "t <q>\r\n" is an unknown command -> ERROR
    mc.send(b"set " + q + b" 0 0 5\r\nabc\r\nget " + q + b"\r\n")
    mc.expect(b"CLIENT_ERROR bad data chunk\r\nERROR\r\n")  # [PEER]
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"END\r\n")
    assert_usable(mc_addr, mc)


def test_over_size_message(mc, mc_addr):
    q = qname().encode()
    big = b"z" * (2 * 1024 * 1024)  # default --memcache-max-message is 1 MiB
    mc.send(b"set %s 0 0 %d\r\n" % (q, len(big)) + big + CRLF)
    mc.expect(b"SERVER_ERROR out of memory storing object\r\n")  # [PEER] data swallowed
    assert mc.nothing_pending(0.3)
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"END\r\n")
    # a large but allowed body still works on the same connection
    ok = bytes(range(256)) * 2048  # 512 KiB
    mc.set(q, ok)
    assert mc.get(q) == (0, ok)
    assert_usable(mc_addr, mc)


def test_key_too_long_on_get(mc, mc_addr):
    mc.send(b"get " + b"k" * 251 + b"\r\n")
    mc.expect(b"CLIENT_ERROR bad command line format\r\n")  # [PEER] no END
    assert mc.nothing_pending(0.2)
    key250 = ("k" * 238 + uniq("")[1:]).encode()[:250]
    assert len(key250) == 250
    mc.set(key250, b"max key")
    assert mc.get(key250) == (0, b"max key")
    assert_usable(mc_addr, mc)


def test_key_too_long_on_set(mc, mc_addr):
    mc.send(b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n")
    assert mc.read_line() == b"CLIENT_ERROR bad command line format\r\n"
    # memcacheq then parses the data line as a command (ERROR); memcached swallows it.
    resync(mc)
    mc.send(b"get " + b"k" * 251 + b"\r\n")
    mc.expect(b"CLIENT_ERROR bad command line format\r\n")
    assert_usable(mc_addr, mc)


@pytest.mark.parametrize("line", [b"set q x 0 1", b"set q 0 0 -1", b"set q 0 0 abc"])
def test_malformed_set_is_client_error(mc, mc_addr, line):
    # [MEMCACHED] memcacheq reads non-numeric fields as 0; qgate refuses them
    mc.send(line + b"\r\nx\r\n")
    assert mc.read_line().startswith(b"CLIENT_ERROR")
    resync(mc)
    assert_usable(mc_addr, mc)


def test_line_too_long(mc_addr):
    c = MC(mc_addr)
    try:
        c.send(b"get " + b"x" * 65536 + b"\r\n")
        line = c.read_line()
        assert line.startswith((b"CLIENT_ERROR", b"ERROR", b"SERVER_ERROR")), line
    except (EOFError, ConnectionResetError):
        pass  # closing the connection on an over-long line is acceptable
    finally:
        c.close()
    assert_usable(mc_addr)


def test_noreply(mc):
    # [MEMCACHED] memcacheq has no noreply (answers ERROR twice); memcached stays silent
    q = qname().encode()
    mc.send(b"set " + q + b" 5 0 1 noreply\r\na\r\n")
    assert mc.nothing_pending(0.3)
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"VALUE " + q + b" 5 1\r\na\r\nEND\r\n")


def test_pipelined_commands_in_one_send(mc):
    a, b = qname("pa").encode(), qname("pb").encode()
    mc.send(b"set " + a + b" 1 0 3\r\nfoo\r\n"
            + b"set " + b + b" 2 0 3\r\nbar\r\n"
            + b"get " + a + b" " + b + b"\r\n"
            + b"get " + a + b"\r\n"
            + b"bogus\r\n"
            + b"set " + a + b" 0 0 1 noreply\r\nz\r\n"
            + b"delete " + b + b"\r\n"
            + b"get " + a + b"\r\n")
    mc.expect(b"STORED\r\nSTORED\r\n"
              + b"VALUE " + a + b" 1 3\r\nfoo\r\nVALUE " + b + b" 2 3\r\nbar\r\nEND\r\n"
              + b"END\r\n"
              + b"ERROR\r\n"
              + b"DELETED\r\n"
              + b"VALUE " + a + b" 0 1\r\nz\r\nEND\r\n")


def test_command_split_byte_by_byte(mc):
    q = qname().encode()
    data = b"ab\r\n\x00cd"
    req = b"set " + q + b" 9 0 %d\r\n" % len(data) + data + b"\r\nget " + q + b"\r\n"
    for i in range(len(req)):
        mc.send(req[i:i + 1])
        time.sleep(0.002)
    mc.expect(b"STORED\r\nVALUE " + q + b" 9 %d\r\n" % len(data) + data + b"\r\nEND\r\n")


def test_binary_data_round_trip(mc):
    q = qname()
    data = b"\r\n\x00\r\nEND\r\n\x00" + bytes(range(256)) + b"\r\n"
    mc.set(q, data)
    assert mc.get(q) == (0, data)
    mc.set(q, b"")  # empty body
    q = q.encode()
    mc.send(b"get " + q + b"\r\n")
    mc.expect(b"VALUE " + q + b" 0 0\r\n\r\nEND\r\n")


def read_stats(mc):
    mc.send(b"stats\r\n")
    stats = {}
    while True:
        line = mc.read_line()
        if line == b"END\r\n":
            return stats
        m = re.match(rb"^STAT (\S+) (.+)\r\n$", line)
        assert m, line
        stats[m.group(1).decode()] = m.group(2).decode()


def test_curr_connections_counts_memcache_connections(fresh_broker):
    if not fresh_broker.has_memcache:
        pytest.skip("no memcache listener")
    mc_addr = (fresh_broker.memcache_host, fresh_broker.memcache_port)
    mc = MC(mc_addr)
    before = int(read_stats(mc)["curr_connections"])
    assert before >= 1  # this connection
    extra = [MC(mc_addr) for _ in range(3)]
    try:
        for c in extra:
            c.cmd(b"version")  # make sure each one is accepted
        assert int(read_stats(mc)["curr_connections"]) == before + 3
    finally:
        for c in extra:
            c.close()
    deadline = time.monotonic() + 5
    while int(read_stats(mc)["curr_connections"]) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(read_stats(mc)["curr_connections"]) == before
    mc.close()


def test_stats(mc):
    stats = read_stats(mc)
    # [ISSUE] field list; memcacheq itself names the counters get_cmds/set_cmds
    for name in ("pid", "uptime", "time", "version", "curr_connections",
                 "total_connections", "cmd_get", "cmd_set", "get_hits", "get_misses",
                 "bytes_read", "bytes_written", "threads"):
        assert name in stats, (name, sorted(stats))
    assert int(stats["curr_connections"]) >= 1
    assert int(stats["total_connections"]) >= int(stats["curr_connections"])


def test_stats_queue(mc):
    q = qname()
    mc.set(q, b"1")
    mc.set(q, b"2")
    assert mc.get(q) == (0, b"1")
    mc.send(b"stats queue\r\n")
    lines = []
    while True:
        line = mc.read_line()
        if line == b"END\r\n":
            break
        lines.append(line)
    for line in lines:
        assert re.match(rb"^STAT \S+ \d+/\d+\r\n$", line), line  # [PEER] STAT <q> <n>/<m>
    assert b"STAT %s 2/1\r\n" % q.encode() in lines  # sets/gets, lifetime counts


def test_version_and_verbosity(mc):
    assert re.match(rb"^VERSION \S+\r\n$", mc.cmd(b"version"))  # [PEER]
    assert mc.cmd(b"verbosity 1") == b"OK\r\n"  # [PEER]


def test_quit_closes_connection(mc):
    mc.send(b"quit\r\n")
    mc.sock.settimeout(5)
    assert mc.sock.recv(10) == b""


def test_exptime_absolute_and_negative(mc):
    # memcached rules: > 30 days is a unix time; negative is already expired
    q = qname("abs")
    mc.set(q, b"past", exptime=-1)
    mc.set(q, b"future", exptime=int(time.time()) + 3600)
    assert mc.get(q) == (0, b"future")
    assert mc.get(q) is None


def test_exptime_expires_message(mc):
    q = qname()
    mc.set(q, b"short-lived", exptime=1)
    mc.set(q, b"forever")
    time.sleep(2.2)
    assert mc.get(q) == (0, b"forever")  # the expired message is never delivered
    assert mc.get(q) is None


# ================================================================ pymemcache


def test_pymemcache_set_get(mc_addr):
    from pymemcache.client.base import Client
    c = Client(mc_addr, connect_timeout=5, timeout=10)
    try:
        q1, q2 = qname("pym"), qname("pym")
        assert c.set(q1, b"default-noreply") is True  # pymemcache's default: noreply
        assert c.set(q1, b"with-reply", noreply=False) is True  # STORED
        assert c.get(q1) == b"default-noreply"
        assert c.get(q1) == b"with-reply"
        assert c.get(q1) is None
        c.set(q2, "text", noreply=False)
        assert c.get_many([q1, q2]) == {q2: b"text"}
        assert c.delete(q2, noreply=False) is True
        assert c.delete(q2, noreply=False) is False
        assert c.version()
        assert b"curr_connections" in c.stats() or "curr_connections" in {
            k.decode() if isinstance(k, bytes) else k for k in c.stats()}
    finally:
        c.close()


# ================================================================ cross-protocol


def _consume_one(broker, q, timeout=10):
    conn = broker.connect()
    try:
        ch = conn.channel()
        for method, props, body in ch.consume(q, auto_ack=False, inactivity_timeout=timeout):
            if method is None:
                return None
            ch.basic_ack(method.delivery_tag)
            ch.cancel()
            return method, props, body
    finally:
        conn.close()


def test_memcache_set_to_pika_consumer(broker, mc):
    q = qname("x2a")
    body = b"from memcache \x00\r\n"
    mc.set(q, body, flags=1234)
    c = broker.connect()
    try:
        ch = c.channel()
        # auto-declared durable, not exclusive, not auto-delete: an equal declare is fine
        ok = ch.queue_declare(q, durable=True)
        assert ok.method.message_count == 1
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
            c.channel().queue_declare(q, durable=False)  # it was declared durable
        assert ei.value.reply_code == 406
        assert ei.value.reply_text.startswith("PRECONDITION_FAILED - inequivalent arg 'durable'")
    finally:
        c.close()
    method, props, got = _consume_one(broker, q)
    assert got == body
    assert method.redelivered is False
    assert props.headers is not None
    assert 1234 in props.headers.values()
    assert props.headers.get("x-memcache-flags") == 1234


def test_pika_publish_to_memcache_get(broker, mc):
    q = qname("a2x")
    c = broker.connect()
    try:
        ch = c.channel()
        ch.queue_declare(q, durable=True)
        ch.confirm_delivery()
        ch.basic_publish("", q, b"from pika")
        ch.basic_publish("", q, b"with flags", pika.BasicProperties(
            headers={"x-memcache-flags": 77}))
    finally:
        c.close()
    qb = q.encode()
    mc.send(b"get " + qb + b"\r\n")
    mc.expect(b"VALUE " + qb + b" 0 9\r\nfrom pika\r\nEND\r\n")
    mc.send(b"get " + qb + b"\r\n")
    mc.expect(b"VALUE " + qb + b" 77 10\r\nwith flags\r\nEND\r\n")


def test_open_read_not_closed_is_redelivered_to_amqp(broker, mc_addr):
    q = qname("open")
    a = MC(mc_addr)
    a.set(q, b"reliable")
    a.send(b"get " + q.encode() + b"/open\r\n")
    assert a.read_get_response(q.encode() + b"/open") == (0, b"reliable")  # [ISSUE]
    c = broker.connect()
    try:
        ok = c.channel().queue_declare(q, passive=True)
        assert ok.method.message_count == 0  # unacked, not ready
    finally:
        c.close()
    a.close()  # disconnect with the read still open -> requeued
    method, _props, body = _consume_one(broker, q)
    assert body == b"reliable"
    assert method.redelivered is True


def test_open_close_acks(broker, mc):
    q = qname("oc")
    qb = q.encode()
    mc.set(q, b"m1")
    mc.set(q, b"m2")
    mc.send(b"get " + qb + b"/open\r\n")
    # the VALUE line echoes the key as requested, suffix included (as memcached clients
    # such as pymemcache match answers to requested keys; grammar/memcache.examples)
    mc.expect(b"VALUE " + qb + b"/open 0 2\r\nm1\r\nEND\r\n")
    mc.send(b"get " + qb + b"/close\r\n")
    mc.expect(b"END\r\n")
    mc.send(b"get " + qb + b"/close/open\r\n")  # nothing open: just opens the next
    mc.expect(b"VALUE " + qb + b"/close/open 0 2\r\nm2\r\nEND\r\n")
    mc.send(b"get " + qb + b"/close\r\n")
    mc.expect(b"END\r\n")
    mc.close()
    time.sleep(0.2)
    c = broker.connect()
    try:
        ok = c.channel().queue_declare(q, passive=True)
        assert ok.method.message_count == 0  # both acked: nothing came back on disconnect
    finally:
        c.close()


def test_close_open_in_one_round_trip(mc):
    q = qname("co")
    qb = q.encode()
    for m in (b"a", b"b", b"c"):
        mc.set(q, m)
    mc.send(b"get " + qb + b"/open\r\n")
    mc.expect(b"VALUE " + qb + b"/open 0 1\r\na\r\nEND\r\n")
    mc.send(b"get " + qb + b"/close/open\r\n")  # acks a, opens b
    mc.expect(b"VALUE " + qb + b"/close/open 0 1\r\nb\r\nEND\r\n")
    mc.send(b"get " + qb + b"/abort\r\n")  # requeues b at the head
    mc.expect(b"END\r\n")
    assert mc.get(q) == (0, b"b")
    assert mc.get(q) == (0, b"c")
    assert mc.get(q) is None


def test_second_open_without_close_is_client_error(mc):
    q = qname("twice")
    qb = q.encode()
    mc.set(q, b"1")
    mc.set(q, b"2")
    mc.send(b"get " + qb + b"/open\r\n")
    mc.expect(b"VALUE " + qb + b"/open 0 1\r\n1\r\nEND\r\n")
    mc.send(b"get " + qb + b"/open\r\n")
    assert mc.read_line().startswith(b"CLIENT_ERROR")  # [ISSUE]
    mc.send(b"get " + qb + b"/close\r\n")
    mc.expect(b"END\r\n")
    assert mc.get(q) == (0, b"2")


def test_abort_requeues_redelivered(broker, mc):
    q = qname("abort")
    qb = q.encode()
    mc.set(q, b"first")
    mc.set(q, b"second")
    mc.send(b"get " + qb + b"/open\r\n")
    mc.expect(b"VALUE " + qb + b"/open 0 5\r\nfirst\r\nEND\r\n")
    mc.send(b"get " + qb + b"/abort\r\n")
    mc.expect(b"END\r\n")
    c = broker.connect()
    try:
        ch = c.channel()
        m, _p, body = ch.basic_get(q, auto_ack=True)
        assert body == b"first" and m.redelivered is True  # back at the head
        m, _p, body = ch.basic_get(q, auto_ack=True)
        assert body == b"second" and m.redelivered is False
    finally:
        c.close()


def test_peek(mc):
    q = qname("peek")
    qb = q.encode()
    mc.send(b"get " + qb + b"/peek\r\n")
    mc.expect(b"END\r\n")
    mc.set(q, b"head", flags=3)
    mc.set(q, b"tail")
    for _ in range(2):
        mc.send(b"get " + qb + b"/peek\r\n")
        mc.expect(b"VALUE " + qb + b"/peek 3 4\r\nhead\r\nEND\r\n")
    assert mc.get(q) == (3, b"head")
    assert mc.get(q) == (0, b"tail")
    assert mc.get(q) is None


def _existing_empty_queue(mc, prefix):
    q = qname(prefix)
    mc.set(q, b"warmup")
    assert mc.get(q) == (0, b"warmup")
    return q


def test_timed_get_waits_then_end(mc):
    q = _existing_empty_queue(mc, "wait").encode()
    t0 = time.monotonic()
    mc.send(b"get " + q + b"/t=500\r\n")
    mc.expect(b"END\r\n")
    elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 3.0, elapsed


def test_timed_get_on_missing_queue_waits(mc, mc_addr):
    """A consumer may start before the producer's first `set` creates the queue: the
    wait applies to a queue that does not exist yet too (no busy polling needed)."""
    q = qname("notyet")
    qb = q.encode()
    t0 = time.monotonic()
    mc.send(b"get " + qb + b"/t=500\r\n")
    mc.expect(b"END\r\n")
    assert time.monotonic() - t0 >= 0.45
    other = MC(mc_addr)
    try:
        mc.send(b"get " + qb + b"/t=5000\r\n")
        time.sleep(0.3)
        other.set(q, b"first ever")
        mc.expect(b"VALUE " + qb + b"/t=5000 0 10\r\nfirst ever\r\nEND\r\n")
    finally:
        other.close()


def test_timed_get_returns_when_message_arrives(mc, mc_addr):
    q = _existing_empty_queue(mc, "wait")
    qb = q.encode()
    other = MC(mc_addr)
    try:
        t0 = time.monotonic()
        mc.send(b"get " + qb + b"/t=5000\r\n")
        time.sleep(0.3)
        # the waiting connection does not block others
        assert re.match(rb"^VERSION ", other.cmd(b"version"))
        other.set(q, b"arrived")
        mc.expect(b"VALUE " + qb + b"/t=5000 0 7\r\narrived\r\nEND\r\n")
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 2.5, elapsed
    finally:
        other.close()


def test_timed_open_combined(mc, mc_addr):
    q = _existing_empty_queue(mc, "waitopen")
    qb = q.encode()
    other = MC(mc_addr)
    try:
        mc.send(b"get " + qb + b"/t=5000/open\r\n")
        time.sleep(0.2)
        other.set(q, b"x")
        mc.expect(b"VALUE " + qb + b"/t=5000/open 0 1\r\nx\r\nEND\r\n")
        mc.send(b"get " + qb + b"/abort\r\n")
        mc.expect(b"END\r\n")
        assert other.get(q) == (0, b"x")
    finally:
        other.close()


# ================================================================ concurrency


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_concurrent_producers_and_mixed_consumers_exactly_once(broker, mc_addr):
    """4 memcache producers x 5,000 messages; 2 memcache `get` consumers and 2 AMQP
    consumers drain the queue: every message received exactly once."""
    q = qname("conc")
    qb = q.encode()
    producers, per = 4, 5000
    total = producers * per
    expected = {b"p%d-%d" % (p, i) for p in range(producers) for i in range(per)}
    received = []
    lock = threading.Lock()
    errors = []
    producing_done = threading.Event()

    # create the queue first so AMQP consumers can attach before the producers start
    c0 = MC(mc_addr)
    c0.set(q, b"warmup")
    assert c0.get(q) == (0, b"warmup")
    c0.close()

    def count():
        with lock:
            return len(received)

    def producer(p):
        try:
            c = MC(mc_addr, timeout=60)
            batch = 100
            for start in range(0, per, batch):
                c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (qb, len(body), body)
                                for body in (b"p%d-%d" % (p, i)
                                             for i in range(start, min(per, start + batch)))))
                c.expect(b"STORED\r\n" * min(batch, per - start))
            c.close()
        except Exception as e:
            errors.append(("producer", p, e))

    def mc_consumer(n):
        try:
            c = MC(mc_addr, timeout=60)
            keys = b" ".join([qb] * 50)
            deadline = time.monotonic() + 200
            while time.monotonic() < deadline:
                c.send(b"get " + keys + b"\r\n")
                vals = c.read_values()
                with lock:
                    received.extend(d for _k, _f, d in vals)
                if not vals:
                    if producing_done.is_set() and count() >= total:
                        break
                    time.sleep(0.01)
            c.close()
        except Exception as e:
            errors.append(("mc-consumer", n, e))

    def amqp_consumer(n):
        try:
            conn = broker.connect()
            ch = conn.channel()
            ch.basic_qos(prefetch_count=200)

            def cb(ch_, method, props, body):
                with lock:
                    received.append(body)
                ch_.basic_ack(method.delivery_tag)

            ch.basic_consume(q, cb)
            deadline = time.monotonic() + 200
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
                if producing_done.is_set() and count() >= total:
                    break
            conn.close()
        except Exception as e:
            errors.append(("amqp-consumer", n, e))

    threads = [threading.Thread(target=mc_consumer, args=(n,), daemon=True) for n in range(2)]
    threads += [threading.Thread(target=amqp_consumer, args=(n,), daemon=True) for n in range(2)]
    prods = [threading.Thread(target=producer, args=(p,), daemon=True) for p in range(producers)]
    for t in threads + prods:
        t.start()
    for t in prods:
        t.join(200)
    producing_done.set()
    for t in threads:
        t.join(200)
    assert not errors, errors
    assert len(received) == total, "received %d of %d" % (len(received), total)
    assert len(set(received)) == total, "duplicates"
    assert set(received) == expected
    # per producer, the order of arrival through one consumer type is not checked: four
    # consumers interleave; but nothing is left behind
    c = broker.connect()
    try:
        assert c.channel().queue_declare(q, passive=True).method.message_count == 0
        c.channel().queue_delete(q)
    finally:
        c.close()
