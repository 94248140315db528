"""Bulk clients for the deep-queue tests (test_deep_queue.py): enough messages to push a
queue far past its in-memory window, fast enough for a debug broker on a loaded machine.

pika's BlockingConnection waits for each confirm before the next publish (a few thousand
messages a second); ``ConfirmPublisher`` pipelines publishes on a raw socket with
publisher confirms, so "confirmed" still means what the broker promised, and
``MemcacheBulk`` pipelines memcache ``set`` / multi-key ``get`` the same way. Consumers
stay pika (its redelivered flags and acks are what users see).
"""

import select
import socket
import struct
import time

import rawamqp as raw

CONFIRM_SELECT = (85, 10)
CONFIRM_SELECT_OK = (85, 11)
BASIC_ACK = (60, 80)
BASIC_NACK = (60, 120)
BASIC_RETURN = (60, 50)
CONNECTION_BLOCKED = (10, 60)
CONNECTION_UNBLOCKED = (10, 61)

# content-header property flags (AMQP 0-9-1 basic class), in wire order
FLAG_DELIVERY_MODE = 0x1000
FLAG_PRIORITY = 0x0800
FLAG_EXPIRATION = 0x0100
FLAG_MESSAGE_ID = 0x0080


class PublishError(AssertionError):
    pass


class ConfirmPublisher:
    """One AMQP connection, channel 1 in confirm mode; publishes pipelined, at most
    ``max_outstanding`` messages (and ``max_outstanding_bytes``) unconfirmed at once so
    neither side's socket buffers fill up and stall the other."""

    def __init__(self, port, host="127.0.0.1", max_outstanding=2000,
                 max_outstanding_bytes=4 << 20, timeout=60.0):
        self.conn = raw.RawConnection(host, port, timeout=timeout)
        _, frame_max, _ = self.conn.handshake(frame_max=131072)
        self.frame_max = min(frame_max or 131072, 131072)
        self.conn.send(raw.channel_open(1))
        self.conn.expect(raw.CHANNEL_OPEN_OK)
        self.conn.send(raw.method_frame(1, CONFIRM_SELECT, b"\x00"))
        self.conn.expect(CONFIRM_SELECT_OK)
        self.max_outstanding = max_outstanding
        self.max_outstanding_bytes = max_outstanding_bytes
        self.timeout = timeout
        self.published = 0  # delivery tags handed out (tag = index + 1)
        self.confirmed = 0  # every tag <= this one is acked
        self._sizes = {}    # tag -> body size, while unconfirmed
        self._outstanding_bytes = 0
        self._acked = set()  # acked singly above self.confirmed
        self._rx = b""

    # -- frames in ------------------------------------------------------------------
    def _handle(self, ftype, payload):
        if ftype != raw.FRAME_METHOD:
            return
        cm = struct.unpack(">HH", payload[:4])
        if cm == BASIC_ACK:
            tag, bits = struct.unpack(">QB", payload[4:13])
            self._ack(tag, bits & 1)
        elif cm == BASIC_NACK:
            tag, = struct.unpack(">Q", payload[4:12])
            raise PublishError("broker nacked delivery tag %d (published %d)" % (tag, self.published))
        elif cm in (raw.CHANNEL_CLOSE, raw.CONNECTION_CLOSE):
            f = raw.Frame(ftype, 0, payload)
            raise PublishError("broker closed the %s: %r" % (
                "channel" if cm == raw.CHANNEL_CLOSE else "connection", f.close_args()))
        elif cm in (CONNECTION_BLOCKED, CONNECTION_UNBLOCKED, BASIC_RETURN):
            pass  # blocked: we simply wait for confirms; returns only with mandatory

    def _ack(self, tag, multiple):
        if multiple:
            for t in range(self.confirmed + 1, tag + 1):
                self._outstanding_bytes -= self._sizes.pop(t, 0)
            self.confirmed = max(self.confirmed, tag)
        else:
            self._outstanding_bytes -= self._sizes.pop(tag, 0)
            self._acked.add(tag)
        while self.confirmed + 1 in self._acked:
            self.confirmed += 1
            self._acked.discard(self.confirmed)

    def _pump(self, wait):
        """Reads what is there (waiting up to ``wait`` seconds for the first bytes)."""
        sock = self.conn.sock
        r, _, _ = select.select([sock], [], [], wait)
        if not r:
            return
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise PublishError("broker closed the connection after %d confirms of %d"
                               % (self.confirmed, self.published))
        self._rx += chunk
        buf = self._rx
        pos = 0
        while len(buf) - pos >= 8:
            ftype, _ch, size = struct.unpack_from(">BHI", buf, pos)
            if len(buf) - pos < size + 8:
                break
            payload = buf[pos + 7:pos + 7 + size]
            pos += size + 8
            self._handle(ftype, payload)
        self._rx = buf[pos:]

    def _wait_below(self, count, nbytes):
        deadline = time.monotonic() + self.timeout
        while (self.published - self.confirmed > count
               or self._outstanding_bytes > nbytes):
            if time.monotonic() > deadline:
                raise PublishError("no confirms for %ss: %d of %d confirmed"
                                   % (self.timeout, self.confirmed, self.published))
            self._pump(0.5)

    # -- frames out -----------------------------------------------------------------
    def _encode(self, exchange, routing_key, body, delivery_mode, priority, expiration,
                message_id):
        flags, props = 0, b""
        if delivery_mode is not None:
            flags |= FLAG_DELIVERY_MODE
            props += struct.pack(">B", delivery_mode)
        if priority is not None:
            flags |= FLAG_PRIORITY
            props += struct.pack(">B", priority)
        if expiration is not None:
            flags |= FLAG_EXPIRATION
            props += raw.shortstr(expiration)
        if message_id is not None:
            flags |= FLAG_MESSAGE_ID
            props += raw.shortstr(message_id)
        out = [raw.basic_publish(1, exchange, routing_key),
               raw.frame(raw.FRAME_HEADER, 1,
                         struct.pack(">HHQH", 60, 0, len(body), flags) + props)]
        step = self.frame_max - 8
        for i in range(0, len(body), step):
            out.append(raw.frame(raw.FRAME_BODY, 1, body[i:i + step]))
        return b"".join(out)

    def publish(self, routing_key, bodies, exchange="", delivery_mode=2, priority=None,
                expiration=None, message_id=None, wait=True):
        """Publishes every body of the iterable; ``delivery_mode``, ``priority``,
        ``expiration`` and ``message_id`` are values or functions of the index within
        ``bodies`` (None: property absent). With ``wait``, returns once all are
        confirmed."""

        def value(v, i):
            return v(i) if callable(v) else v

        batch, batch_bytes = [], 0
        for i, body in enumerate(bodies):
            batch.append(self._encode(exchange, routing_key, body, value(delivery_mode, i),
                                      value(priority, i), value(expiration, i),
                                      value(message_id, i)))
            self.published += 1
            self._sizes[self.published] = len(body)
            self._outstanding_bytes += len(body)
            batch_bytes += len(body)
            if len(batch) >= 256 or batch_bytes >= (256 << 10):
                self.conn.send(b"".join(batch))
                batch, batch_bytes = [], 0
                self._pump(0)
                self._wait_below(self.max_outstanding, self.max_outstanding_bytes)
        if batch:
            self.conn.send(b"".join(batch))
        if wait:
            self.wait_confirms()

    def wait_confirms(self):
        self._wait_below(0, 0)

    def close(self):
        try:
            self.conn.send(raw.method_frame(0, raw.CONNECTION_CLOSE,
                                            struct.pack(">H", 200) + raw.shortstr("bye")
                                            + struct.pack(">HH", 0, 0)))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                self.conn.sock.settimeout(1)
                f = self.conn.read_frame()
                if f.method == raw.CONNECTION_CLOSE_OK:
                    break
        except (OSError, EOFError, AssertionError):
            pass
        self.conn.close()


class MemcacheBulk:
    """The memcache text protocol, pipelined: many ``set``s or one multi-key ``get`` per
    round trip (memcacheq's ``get q q q`` takes successive messages from q)."""

    def __init__(self, port, host="127.0.0.1", timeout=60.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("memcache connection closed")
            self.buf += chunk

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("memcache connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def set_many(self, key, bodies, flags=0, depth=128):
        """Sets every body, ``depth`` commands in flight; asserts each is STORED."""
        k = key.encode()
        pending = 0
        out = []
        for body in bodies:
            out.append(b"set %s %d 0 %d\r\n%s\r\n" % (k, flags, len(body), body))
            if len(out) >= depth:
                self.sock.sendall(b"".join(out))
                pending += len(out)
                out = []
                # keep one batch in flight while reading the previous one's answers
                while pending > depth:
                    line = self._line()
                    assert line == b"STORED", line
                    pending -= 1
        if out:
            self.sock.sendall(b"".join(out))
            pending += len(out)
        while pending:
            line = self._line()
            assert line == b"STORED", line
            pending -= 1

    def get_many(self, key, n):
        """``get key key ... key`` for n keys (as many command lines as memcached's 2048
        byte line limit needs, sent at once); returns the (flags, data) it got, in order
        (fewer than n when the queue ran dry)."""
        k = key.encode()
        per_line = max(1, (2048 - 6) // (len(k) + 1))
        counts = [min(per_line, n - i) for i in range(0, n, per_line)]
        self.sock.sendall(b"".join(b"get " + b" ".join([k] * c) + b"\r\n" for c in counts))
        got = []
        for _ in counts:
            while True:
                line = self._line()
                if line == b"END":
                    break
                parts = line.split()
                assert parts[0] == b"VALUE", line
                data = self._exact(int(parts[3]) + 2)[:-2]
                got.append((int(parts[2]), data))
        return got

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
