"""qgate's process contract (issue 2, "Crate and CLI"): listening lines, a port in use,
clean shutdown on SIGTERM with 320 CONNECTION_FORCED.  qgate only."""

import signal
import socket
import subprocess
import time

import pika.exceptions as pe
import pytest

from conftest import LISTEN_RE, qgate_binary
from helpers import uniq

pytestmark = pytest.mark.qgate_only


def test_listening_lines(fresh_broker):
    found = {m.group(1): int(m.group(3)) for m in LISTEN_RE.finditer(fresh_broker.output())}
    assert found == {"amqp": fresh_broker.amqp_port, "memcache": fresh_broker.memcache_port,
                     "http": fresh_broker.http_port, "management": fresh_broker.management_port}
    assert len(set(found.values())) == 4


def test_port_in_use_fails_with_nonzero_status(tmp_path):
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        p = subprocess.run([qgate_binary(), "serve", "--amqp-listen", "127.0.0.1:%d" % port,
                            "--memcache-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                            "--management-listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), "--log", "info"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    finally:
        holder.close()
    assert p.returncode != 0
    assert str(port) in p.stdout.decode("utf-8", "replace"), p.stdout


def test_sigterm_closes_amqp_connections_with_320_and_exits_0(fresh_broker):
    conn = fresh_broker.connect()
    ch = conn.channel()
    q = uniq("shutdown")
    ch.queue_declare(q, exclusive=True)
    fresh_broker.proc.send_signal(signal.SIGTERM)
    with pytest.raises(pe.ConnectionClosedByBroker) as ei:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
    assert ei.value.reply_code == 320
    assert ei.value.reply_text.startswith("CONNECTION_FORCED")
    assert fresh_broker.proc.wait(timeout=10) == 0  # the fixture checks it again
