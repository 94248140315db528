"""The disk alarm (--disk-free-limit) on a small file system the test makes and fills:
publishers are blocked (connection.blocked "low on disk"), confirms and memcache STORED
wait, and once space is freed everything resumes and every message is kept."""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pika
import pytest

from qgate_proc import Qgate, qgate_bin

pytestmark = pytest.mark.skipif(bool(os.environ.get("QGATE_TEST_AMQP_URL")),
                                reason="starts its own qgate on its own file system")

MiB = 1 << 20
# The tmpfs is 64 MiB; the alarm fires below 40 MB free.
LIMIT = 40_000_000


@pytest.fixture
def small_fs():
    d = tempfile.mkdtemp(prefix="qgate-diskalarm-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", d],
                       capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip("cannot mount a tmpfs here (%s)" % r.stderr.strip())
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], check=False)
        shutil.rmtree(d, ignore_errors=True)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def metric(b, name):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % b.ports["http"], timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("metric %s not served" % name)


def wait_until(pred, timeout, step=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        if step:
            step()
        else:
            time.sleep(0.05)
    return pred()


def test_disk_alarm_blocks_and_unblocks(small_fs):
    data = os.path.join(small_fs, "data")
    b = Qgate(data, fsync="always", extra=["--disk-free-limit", str(LIMIT)]).start()
    filler = os.path.join(small_fs, "filler")
    try:
        assert metric(b, "qgate_disk_space_available_limit_bytes") == LIMIT
        assert metric(b, "qgate_alarms_free_disk_space_watermark") == 0

        events = []
        pub = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.amqp_port))
        pub.add_on_connection_blocked_callback(
            lambda c, m: events.append(("blocked", m.method.reason)))
        pub.add_on_connection_unblocked_callback(lambda c, m: events.append(("unblocked",)))
        pub.channel().basic_publish("", "disk-alarm-other", b"makes it a publisher")
        # A second publishing connection, with confirms, publishes from a thread (pika
        # dispatches connection.blocked only in process_data_events, so the first one
        # watches for that).
        conf = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.amqp_port))
        pch = conf.channel()
        pch.queue_declare("disk-alarm", durable=True)
        pch.confirm_delivery()
        pch.basic_publish("", "disk-alarm", b"before", pika.BasicProperties(delivery_mode=2))

        mc = socket.create_connection(("127.0.0.1", b.memcache_port), timeout=10)
        mc.sendall(b"set disk-mcq 0 0 6\r\nbefore\r\n")
        assert mc.recv(100) == b"STORED\r\n"

        # Fill the file system to just under the limit.
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free_bytes(small_fs) - LIMIT + 4 * MiB))
        assert free_bytes(small_fs) < LIMIT
        assert wait_until(lambda: metric(b, "qgate_alarms_free_disk_space_watermark") == 1, 15)
        # A publish with confirms: the broker stops reading from the connection, tells
        # the client why (as RabbitMQ does) and the confirm does not come.
        done = threading.Event()

        def publish_during():
            pch.basic_publish("", "disk-alarm", b"during", pika.BasicProperties(delivery_mode=2))
            done.set()

        t = threading.Thread(target=publish_during, daemon=True)
        t.start()
        assert wait_until(lambda: ("blocked", "low on disk") in events, 10,
                          step=lambda: pub.process_data_events(0.1)), events
        mc.sendall(b"set disk-mcq 0 0 6\r\nduring\r\n")
        mc.settimeout(1.5)
        with pytest.raises(socket.timeout):
            mc.recv(100)
        pub.process_data_events(0.5)
        assert not done.is_set()
        assert ("unblocked",) not in events
        # Nothing of "during" reached the store while the alarm was on.
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.amqp_port))
        ch = conn.channel()
        q = ch.queue_declare("disk-alarm", durable=True, passive=True)
        assert q.method.message_count == 1
        conn.close()

        # Free the space: publishers resume, the confirm and STORED arrive.
        os.remove(filler)
        t.join(15)
        assert done.is_set()
        assert wait_until(lambda: ("unblocked",) in events, 15,
                          step=lambda: pub.process_data_events(0.1))
        assert events == [("blocked", "low on disk"), ("unblocked",)]
        mc.settimeout(10)
        assert mc.recv(100) == b"STORED\r\n"
        pch.basic_publish("", "disk-alarm", b"after", pika.BasicProperties(delivery_mode=2))
        assert metric(b, "qgate_alarms_free_disk_space_watermark") == 0
        pub.close()
        conf.close()
        mc.close()

        # Everything is kept, across a restart too.
        assert b.stop() == 0
        b = Qgate(data, fsync="always", extra=["--disk-free-limit", str(LIMIT)]).start()
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", b.amqp_port))
        ch = conn.channel()
        bodies = []
        while True:
            m, _, body = ch.basic_get("disk-alarm", auto_ack=True)
            if m is None:
                break
            bodies.append(body)
        assert bodies == [b"before", b"during", b"after"]
        conn.close()
        mc = socket.create_connection(("127.0.0.1", b.memcache_port), timeout=10)
        got = b""
        for _ in range(2):
            mc.sendall(b"get disk-mcq\r\n")
            got += mc.recv(200)
        assert got.count(b"VALUE") == 2 and b"before" in got and b"during" in got
        mc.close()
    finally:
        if os.path.exists(filler):
            os.remove(filler)
        b.stop()


def test_disk_free_limit_is_checked_at_start(tmp_path):
    r = subprocess.run([qgate_bin(), "serve",
                        "--data-dir", str(tmp_path), "--disk-free-limit", "lots"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "disk_free_limit (--disk-free-limit, QGATE_DISK_FREE_LIMIT)" in r.stdout + r.stderr
