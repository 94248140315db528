"""Small helpers shared by the test modules (unique names, bounded waits)."""

import threading
import time
import uuid

import pika


def uniq(prefix="t"):
    """A unique queue/exchange name for one test."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def wait_for(pred, timeout=10.0, interval=0.02, conn=None):
    """Poll pred() until true or timeout; with conn, pump its I/O meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        if conn is not None:
            conn.process_data_events(time_limit=interval)
        else:
            time.sleep(interval)


def drain(ch, queue, n, timeout=10.0, auto_ack=True):
    """Consume exactly n messages from queue with ch.consume (bounded in time).

    Returns a list of (method, properties, body); fewer if the timeout expires.
    The generator consumer is cancelled afterwards (unacked messages requeued).
    """
    got = []
    deadline = time.monotonic() + timeout
    for method, props, body in ch.consume(queue, auto_ack=auto_ack, inactivity_timeout=0.2):
        if method is not None:
            got.append((method, props, body))
            if len(got) >= n:
                break
        if time.monotonic() >= deadline:
            break
    ch.cancel()
    return got


def get_all(ch, queue, limit=100000):
    """basic_get (auto ack) until empty; returns the bodies."""
    bodies = []
    while len(bodies) < limit:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        bodies.append(body)
    return bodies


def pump_until(conn, pred, timeout=10.0):
    """Process pika events on conn until pred() or timeout; returns pred()."""
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    return pred()


class Worker(threading.Thread):
    """A consumer on its own connection and thread (pika is not thread-safe).

    on_message(worker, ch, method, props, body) is called for each delivery; the
    thread stops when stop() is called or after `timeout` seconds.
    """

    def __init__(self, broker, queue, on_message, prefetch=None, auto_ack=False,
                 timeout=30.0, declare=None):
        super().__init__(daemon=True)
        self.broker = broker
        self.queue = queue
        self.on_message = on_message
        self.prefetch = prefetch
        self.auto_ack = auto_ack
        self.timeout = timeout
        self.declare = declare
        self.received = []
        self.ready = threading.Event()
        self.error = None
        self._halt = threading.Event()
        self._die = threading.Event()
        self.conn = None

    def run(self):
        try:
            self.conn = self.broker.connect()
            ch = self.conn.channel()
            if self.declare:
                self.declare(ch)
            if self.prefetch is not None:
                ch.basic_qos(prefetch_count=self.prefetch)

            def cb(ch_, method, props, body):
                self.received.append((method, props, body))
                self.on_message(self, ch_, method, props, body)

            ch.basic_consume(queue=self.queue, on_message_callback=cb, auto_ack=self.auto_ack)
            self.ready.set()
            deadline = time.monotonic() + self.timeout
            while not self._halt.is_set() and time.monotonic() < deadline:
                if self._die.is_set():
                    # die: close the connection without acking what we hold
                    self.conn.close()
                    return
                self.conn.process_data_events(time_limit=0.05)
            if self.conn.is_open:
                self.conn.close()
        except Exception as e:  # surfaced by the test via .error
            self.error = e
            self.ready.set()

    def stop(self, join=True):
        self._halt.set()
        if join:
            self.join(timeout=15)

    def die(self):
        """Close the connection without acking anything (a crashed consumer)."""
        self._die.set()
        self.join(timeout=15)


def publish_many(ch, queue, bodies, exchange="", **props):
    for b in bodies:
        ch.basic_publish(exchange=exchange, routing_key=queue, body=b,
                         properties=pika.BasicProperties(**props) if props else None)
