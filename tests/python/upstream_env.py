"""A private 3-node RabbitMQ cluster (tests/rabbitmq-cluster) and qgate gateways in
upstream mode in front of it, for test_upstream.py and scripts/bench-compare."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SCRIPT = os.path.join(REPO, "tests", "rabbitmq-cluster")
LISTEN_RE = re.compile(r"listening protocol=(\w+) addr=([\d.]+):(\d+)")


def have_rabbitmq():
    return os.path.exists("/usr/lib/rabbitmq/bin/rabbitmq-server")


class Cluster:
    """Three RabbitMQ nodes on loopback (ports base+1..3), one data dir."""

    def __init__(self, base=26100, dir=None):
        self.base = base
        self.dir = dir or tempfile.mkdtemp(prefix="qgate-cluster-")
        self.env = dict(os.environ, QG_CLUSTER_BASE=str(base))

    def _run(self, *args, timeout=300):
        r = subprocess.run([SCRIPT, *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("rabbitmq-cluster %s failed:\n%s%s" % (
                " ".join(args), r.stdout, r.stderr))
        return r.stdout.strip()

    def start(self):
        self.url = self._run("start", self.dir)
        return self

    def stop(self):
        try:
            self._run("stop", self.dir, timeout=120)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def kill(self, n):
        self._run("kill", str(n), self.dir)

    def restart(self, n):
        self._run("restart", str(n), self.dir)

    def leader(self, queue):
        return int(self._run("leader", queue, self.dir, timeout=60))

    def port(self, n):
        return self.base + n

    @property
    def ports(self):
        return [self.port(n) for n in (1, 2, 3)]


def qgate_bin():
    return os.environ.get("QGATE_BIN") or os.path.join(REPO, "target", "debug", "qgate")


class Gateway:
    """One qgate in upstream mode; start() waits for the memcache and http lines."""

    def __init__(self, url, extra=()):
        self.url = url
        self.extra = list(extra)
        self.proc = None
        self.lines = []
        self.ports = {}
        self.data_dir = tempfile.mkdtemp(prefix="qgate-gw-")

    def start(self, timeout=30):
        cmd = [qgate_bin(), "serve", "--upstream", self.url,
               "--memcache-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
               "--amqp-listen", "127.0.0.1:0", "--management-listen", "127.0.0.1:0",
               "--data-dir", self.data_dir,
               "--log", "info"] + self.extra
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()

        def drain():
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                m = LISTEN_RE.search(line)
                if m:
                    self.ports[m.group(1)] = int(m.group(3))
                    if {"memcache", "http", "management"} <= set(self.ports):
                        ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(timeout) or "memcache" not in self.ports:
            self.kill()
            raise RuntimeError("gateway did not start:\n" + "\n".join(self.lines))
        return self

    @property
    def memcache_port(self):
        return self.ports["memcache"]

    @property
    def http_port(self):
        return self.ports["http"]

    @property
    def management_port(self):
        return self.ports["management"]

    def api(self, path):
        """GET /api/<path> on the management listener, as guest (an administrator)."""
        import base64
        import json
        import urllib.request
        req = urllib.request.Request(
            "http://127.0.0.1:%d/api/%s" % (self.management_port, path),
            headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read().decode())

    def stop(self, timeout=15):
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return code

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log(self):
        return "\n".join(self.lines)
