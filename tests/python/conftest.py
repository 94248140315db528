"""Harness for qgate's black-box Python tests.

Two modes:

* ``QGATE_TEST_AMQP_URL`` set (e.g. ``amqp://guest:guest@127.0.0.1:5673/``): the
  tests talk to that external broker (this is how the suite is validated against a
  real RabbitMQ).  Memcache tests are skipped unless ``QGATE_TEST_MEMCACHE_ADDR``
  (``host:port``) is set too; tests marked ``qgate_only`` are skipped.
* otherwise the qgate binary (``QGATE_BIN``, default ``<repo>/target/debug/qgate``)
  is started with every listener on 127.0.0.1 port 0; the bound ports are read from
  its ``listening protocol=<p> addr=<ip:port>`` log lines.  Teardown sends SIGTERM
  and requires exit status 0 (clean shutdown is part of the contract).
"""

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import pika
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))  # tests/python -> tests -> repo
if HERE not in sys.path:
    sys.path.insert(0, HERE)

LISTEN_RE = re.compile(r"listening protocol=(\w+) addr=([\d.]+):(\d+)")
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0


def external_url():
    return os.environ.get("QGATE_TEST_AMQP_URL") or None


def external_memcache_addr():
    addr = os.environ.get("QGATE_TEST_MEMCACHE_ADDR")
    if not addr:
        return None
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


class Broker:
    """Addresses of one running broker (qgate child process or external)."""

    def __init__(self, amqp_host, amqp_port, memcache_host=None, memcache_port=None,
                 http_port=None, external=False, vhost="/", proc=None, output=None):
        self.amqp_host = amqp_host
        self.amqp_port = amqp_port
        self.memcache_host = memcache_host
        self.memcache_port = memcache_port
        self.http_port = http_port
        self.management_port = None
        self.data_dir = None
        self.external = external
        self.vhost = vhost
        self.proc = proc
        self._output = output  # list of lines printed by the child, if any

    @property
    def url(self):
        return "amqp://guest:guest@%s:%d/%s" % (
            self.amqp_host, self.amqp_port, urllib.parse.quote(self.vhost, safe=""))

    @property
    def has_memcache(self):
        return self.memcache_port is not None

    def params(self, **kw):
        kw.setdefault("virtual_host", self.vhost)
        kw.setdefault("credentials", pika.PlainCredentials("guest", "guest"))
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("blocked_connection_timeout", 30)
        return pika.ConnectionParameters(host=self.amqp_host, port=self.amqp_port, **kw)

    def connect(self, **kw):
        return pika.BlockingConnection(self.params(**kw))

    def output(self):
        return "".join(self._output or [])

    def __repr__(self):
        return "<Broker amqp=%s:%s memcache=%s:%s http=%s external=%s>" % (
            self.amqp_host, self.amqp_port, self.memcache_host, self.memcache_port,
            self.http_port, self.external)


def _external_broker():
    url = external_url()
    p = pika.URLParameters(url)
    mc = external_memcache_addr()
    return Broker(p.host, p.port, mc[0] if mc else None, mc[1] if mc else None,
                  None, external=True, vhost=p.virtual_host)


def _die_with_parent():
    """In the child: get SIGTERM if pytest dies, so no qgate is left behind (Linux)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def qgate_binary():
    return os.environ.get("QGATE_BIN") or os.path.join(REPO, "target", "debug", "qgate")


class QgateProcess:
    """A qgate child process; start() waits for the three listening lines."""

    def __init__(self):
        self.data_dir = tempfile.mkdtemp(prefix="qgate-pytest-")
        self.lines = []
        self.proc = None
        self._q = queue.Queue()
        self._reader = None

    def start(self):
        binary = qgate_binary()
        if not os.path.exists(binary):
            pytest.fail("qgate binary not found at %s (build with `cargo build`, or set "
                        "QGATE_BIN, or QGATE_TEST_AMQP_URL for an external broker)" % binary)
        cmd = [binary, "serve",
               "--amqp-listen", "127.0.0.1:0",
               "--memcache-listen", "127.0.0.1:0",
               "--http-listen", "127.0.0.1:0",
               "--management-listen", "127.0.0.1:0",
               "--data-dir", self.data_dir,
               "--log", "info"]
        if os.environ.get("QGATE_TEST_FSYNC"):
            cmd += ["--fsync", "never"]
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        addrs = {}
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len(addrs) < 4:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail("qgate did not print its four `listening` lines within %ss; "
                            "command %r; output:\n%s" % (STARTUP_TIMEOUT, cmd, self.text()))
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                rc = self.proc.wait(timeout=5)
                pytest.fail("qgate exited with status %s before listening; command %r; "
                            "output:\n%s" % (rc, cmd, self.text()))
            m = LISTEN_RE.search(line)
            if m:
                addrs[m.group(1)] = (m.group(2), int(m.group(3)))
        missing = {"amqp", "memcache", "http", "management"} - set(addrs)
        if missing:
            self.kill()
            pytest.fail("qgate did not report listeners %s; output:\n%s" % (missing, self.text()))
        amqp, mc, http = addrs["amqp"], addrs["memcache"], addrs["http"]
        broker = Broker(amqp[0], amqp[1], mc[0], mc[1], http[1], external=False,
                        proc=self.proc, output=self.lines)
        broker.management_port = addrs["management"][1]
        broker.data_dir = self.data_dir
        return broker

    def _drain(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def text(self):
        return "".join(self.lines[-200:])

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        """SIGTERM, wait, require a clean exit (status 0)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    rc = self.proc.wait(timeout=SHUTDOWN_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.kill()
                    pytest.fail("qgate did not exit within %ss of SIGTERM; output:\n%s"
                                % (SHUTDOWN_TIMEOUT, self.text()))
            else:
                rc = self.proc.returncode
            if self._reader:
                self._reader.join(timeout=5)
            assert rc == 0, "qgate exited with status %s after SIGTERM; output:\n%s" % (
                rc, self.text())
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def broker():
    """One broker shared by the whole session (tests use unique names)."""
    if external_url():
        yield _external_broker()
        return
    qp = QgateProcess()
    b = qp.start()
    _RUNNING.append(qp)
    try:
        yield b
    finally:
        _RUNNING.remove(qp)
        qp.stop()


@pytest.fixture
def fresh_broker():
    """A broker of its own for one test (isolation: counts, stats, connection lists).

    Against an external broker there is no such thing: the external broker is
    returned, and tests must still use unique names.
    """
    if external_url():
        yield _external_broker()
        return
    qp = QgateProcess()
    b = qp.start()
    _RUNNING.append(qp)
    try:
        yield b
    finally:
        _RUNNING.remove(qp)
        qp.stop()


@pytest.fixture
def conn(broker):
    """A pika BlockingConnection to the shared broker, closed after the test."""
    c = broker.connect()
    yield c
    if c.is_open:
        try:
            c.close()
        except Exception:
            pass


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def mc_addr(broker):
    """(host, port) of the memcache listener; skips when there is none."""
    if not broker.has_memcache:
        pytest.skip("no memcache listener (external AMQP broker without "
                    "QGATE_TEST_MEMCACHE_ADDR)")
    return broker.memcache_host, broker.memcache_port


def pytest_collection_modifyitems(config, items):
    if not external_url():
        return
    skip = pytest.mark.skip(reason="qgate-only behaviour; QGATE_TEST_AMQP_URL points at "
                                   "an external broker")
    for item in items:
        if "qgate_only" in item.keywords:
            item.add_marker(skip)


_RUNNING = []  # QgateProcess objects alive now (for failure reports)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of the qgate child's output to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _RUNNING:
        for qp in _RUNNING:
            rep.sections.append(("qgate output (pid %s, last 60 lines)" % qp.proc.pid,
                                 "".join(qp.lines[-60:])))
