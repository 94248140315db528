"""Start, stop and kill -9 a qgate child process on a data directory of the test's
choosing (restart and crash tests need the same directory across processes)."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LISTEN_RE = re.compile(r"listening protocol=(\w+) addr=([\d.]+):(\d+)")


def qgate_bin():
    return os.environ.get("QGATE_BIN") or os.path.join(REPO, "target", "debug", "qgate")


class Qgate:
    """One broker process. ``start()`` waits for the three listening lines."""

    def __init__(self, data_dir, fsync="always", extra=()):
        self.data_dir = data_dir
        self.fsync = fsync
        self.extra = list(extra)
        self.proc = None
        self.ports = {}
        self.lines = []

    def start(self, timeout=30):
        cmd = [qgate_bin(), "serve", "--amqp-listen", "127.0.0.1:0",
               "--memcache-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
               "--management-listen", "127.0.0.1:0",
               "--data-dir", self.data_dir, "--fsync", self.fsync, "--log", "info"] + self.extra
        self.lines = []
        self.ports = {}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()

        def drain(proc, lines, ports):
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                lines.append(line)
                m = LISTEN_RE.search(line)
                if m:
                    ports[m.group(1)] = int(m.group(3))
                    if len(ports) == 4:
                        ready.set()
            ready.set()

        threading.Thread(target=drain, args=(self.proc, self.lines, self.ports), daemon=True).start()
        if not ready.wait(timeout) or len(self.ports) < 4:
            self.kill()
            raise RuntimeError("qgate did not start:\n" + "\n".join(self.lines))
        return self

    @property
    def amqp_port(self):
        return self.ports["amqp"]

    @property
    def memcache_port(self):
        return self.ports["memcache"]

    def stop(self, timeout=15):
        """SIGTERM; returns the exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self):
        """kill -9."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log(self):
        return "\n".join(self.lines)


class Memcache:
    """A minimal memcache text-protocol client over one socket."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def set(self, key, value, flags=0, exptime=0):
        self.sock.sendall(b"set %s %d %d %d\r\n%s\r\n" % (key.encode(), flags, exptime, len(value), value))
        return self._line()

    def get(self, key):
        """Returns (flags, data) or None."""
        self.sock.sendall(b"get %s\r\n" % key.encode())
        line = self._line()
        if line == b"END":
            return None
        parts = line.split()
        assert parts[0] == b"VALUE", line
        data = self._exact(int(parts[3]) + 2)[:-2]
        assert self._line() == b"END"
        return int(parts[2]), data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def wait_port_closed(port, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)
