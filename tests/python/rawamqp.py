"""A tiny hand-written AMQP 0-9-1 client for error-path tests (struct, no pika).

Only what the tests need: the protocol header, start-ok (PLAIN), tune-ok, open,
channel.open, arbitrary method frames, raw frames, and reading frames back.
"""

import socket
import struct
import time

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE

# (class_id, method_id)
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
QUEUE_DECLARE = (50, 10)
BASIC_PUBLISH = (60, 40)


def shortstr(s):
    if isinstance(s, str):
        s = s.encode()
    assert len(s) < 256
    return struct.pack(">B", len(s)) + s


def longstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">I", len(s)) + s


def table(d=None):
    """Encode a field table; values: str -> 'S', bool -> 't', int -> 'I'."""
    out = b""
    for k, v in (d or {}).items():
        out += shortstr(k)
        if isinstance(v, bool):
            out += b"t" + struct.pack(">B", int(v))
        elif isinstance(v, int):
            out += b"I" + struct.pack(">i", v)
        elif isinstance(v, dict):
            out += b"F" + table(v)
        else:
            out += b"S" + longstr(v)
    return struct.pack(">I", len(out)) + out


def frame(ftype, channel, payload, end=FRAME_END):
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes([end])


def method_frame(channel, cm, args=b""):
    return frame(FRAME_METHOD, channel, struct.pack(">HH", *cm) + args)


def start_ok(user="guest", password="guest", mechanism="PLAIN", locale="en_US"):
    client_props = table({"product": "qgate-rawamqp", "capabilities": {
        "authentication_failure_close": True}})
    resp = b"\x00" + user.encode() + b"\x00" + password.encode()
    return method_frame(0, CONNECTION_START_OK,
                        client_props + shortstr(mechanism) + longstr(resp) + shortstr(locale))


def tune_ok(channel_max=2047, frame_max=131072, heartbeat=0):
    return method_frame(0, CONNECTION_TUNE_OK, struct.pack(">HIH", channel_max, frame_max, heartbeat))


def connection_open(vhost="/"):
    return method_frame(0, CONNECTION_OPEN, shortstr(vhost) + shortstr("") + b"\x00")


def channel_open(channel):
    return method_frame(channel, CHANNEL_OPEN, shortstr(""))


def queue_declare(channel, name, passive=False, durable=False, exclusive=False,
                  auto_delete=False, nowait=False):
    bits = (passive << 0) | (durable << 1) | (exclusive << 2) | (auto_delete << 3) | (nowait << 4)
    return method_frame(channel, QUEUE_DECLARE,
                        struct.pack(">H", 0) + shortstr(name) + struct.pack(">B", bits) + table())


def basic_publish(channel, exchange, routing_key, mandatory=False):
    return method_frame(channel, BASIC_PUBLISH, struct.pack(">H", 0) + shortstr(exchange)
                        + shortstr(routing_key) + struct.pack(">B", int(mandatory)))


def basic_consume(channel, queue, tag="", no_ack=True):
    return method_frame(channel, (60, 20), struct.pack(">H", 0) + shortstr(queue) + shortstr(tag)
                        + struct.pack(">B", int(no_ack) << 1) + table())


def content_header(channel, body_size, class_id=60, flags=0):
    return frame(FRAME_HEADER, channel, struct.pack(">HHQH", class_id, 0, body_size, flags))


def body_frame(channel, body):
    return frame(FRAME_BODY, channel, body)


class Frame:
    def __init__(self, ftype, channel, payload):
        self.type = ftype
        self.channel = channel
        self.payload = payload

    @property
    def method(self):
        if self.type != FRAME_METHOD:
            return None
        return struct.unpack(">HH", self.payload[:4])

    def close_args(self):
        """(reply_code, reply_text, class_id, method_id) of a connection/channel close."""
        p = self.payload[4:]
        code, = struct.unpack(">H", p[:2])
        n = p[2]
        text = p[3:3 + n].decode("utf-8", "replace")
        cls, meth = struct.unpack(">HH", p[3 + n:7 + n])
        return code, text, cls, meth

    def tune_args(self):
        return struct.unpack(">HIH", self.payload[4:12])

    def __repr__(self):
        return "<Frame type=%d ch=%d method=%s len=%d>" % (
            self.type, self.channel, self.method, len(self.payload))


class RawConnection:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed by peer after %r" % self.buf[:64])
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self, skip_heartbeats=True):
        while True:
            ftype, channel, size = struct.unpack(">BHI", self.recv_exact(7))
            payload = self.recv_exact(size)
            end = self.recv_exact(1)
            assert end[0] == FRAME_END, "bad frame end %r" % end
            if ftype == FRAME_HEARTBEAT and skip_heartbeats:
                continue
            return Frame(ftype, channel, payload)

    def expect(self, cm):
        f = self.read_frame()
        assert f.method == cm, "expected method %s, got %r (close args %s)" % (
            cm, f, f.close_args() if f.method in (CONNECTION_CLOSE, CHANNEL_CLOSE) else None)
        return f

    def read_all_until_eof(self, timeout=5.0):
        """Read everything the peer sends until it closes (or timeout); returns bytes."""
        data = self.buf
        self.buf = b""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return data, True
            if not chunk:
                return data, True
            data += chunk
        return data, False

    def handshake(self, user="guest", password="guest", vhost="/", frame_max=131072,
                  heartbeat=0, open_vhost=True):
        """Header, start/start-ok, tune/tune-ok, open/open-ok. Returns the tune frame args."""
        self.send(PROTOCOL_HEADER)
        self.expect(CONNECTION_START)
        self.send(start_ok(user, password))
        tune = self.expect(CONNECTION_TUNE)
        server_channel_max, server_frame_max, server_hb = tune.tune_args()
        self.send(tune_ok(channel_max=server_channel_max or 2047, frame_max=frame_max,
                          heartbeat=heartbeat))
        if open_vhost:
            self.send(connection_open(vhost))
            self.expect(CONNECTION_OPEN_OK)
        return server_channel_max, server_frame_max, server_hb

    def expect_connection_close(self):
        """Read frames until connection.close; reply close-ok; return its args."""
        while True:
            f = self.read_frame()
            if f.method == CONNECTION_CLOSE:
                try:
                    self.send(method_frame(0, CONNECTION_CLOSE_OK))
                except OSError:
                    pass
                return f.close_args()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
