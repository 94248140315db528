"""The tutorials' first steps, end to end, through the real `qgate ctl` binary and
pika: users, vhosts, permissions and definitions changed at runtime, what clients see,
and what a restart or kill -9 keeps. Outputs are rabbitmqctl 3.10.8's (compared with a
private RabbitMQ node). qgate only: each test runs its own broker on its own data dir."""

import json
import os
import shutil
import subprocess
import tempfile
import time

import pika
import pytest

from qgate_proc import Qgate, qgate_bin

pytestmark = pytest.mark.skipif(bool(os.environ.get("QGATE_TEST_AMQP_URL")),
                                reason="starts its own qgate processes")

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(os.path.dirname(HERE), "fixtures", "rabbitmq-definitions.json")


@pytest.fixture
def data_dir():
    d = tempfile.mkdtemp(prefix="qgate-ctl-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Ctl:
    """`qgate ctl` against one broker, authenticated by its local cookie."""

    def __init__(self, q, *auth):
        self.q = q
        self.auth = list(auth)

    def run(self, *args, ok=True):
        env = {k: v for k, v in os.environ.items() if not k.startswith("QGATE_")}
        cmd = [qgate_bin(), "ctl", "--url", "http://127.0.0.1:%d" % self.q.ports["management"],
               "--data-dir", self.q.data_dir] + self.auth + list(args)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
        if ok:
            assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
        return p

    def out(self, *args):
        return self.run(*args).stdout


def params(q, user, password, vhost="/"):
    return pika.ConnectionParameters("127.0.0.1", q.amqp_port, vhost,
                                     pika.PlainCredentials(user, password),
                                     connection_attempts=1, heartbeat=0)


def refused(q, user, password, vhost="/"):
    """The reply code with which the broker refuses the login, or None."""
    try:
        pika.BlockingConnection(params(q, user, password, vhost)).close()
        return None
    except pika.exceptions.ProbableAuthenticationError:
        return 403
    except pika.exceptions.ProbableAccessDeniedError:
        return 530


def test_the_tutorial_sequence(data_dir):
    q = Qgate(data_dir).start()
    ctl = Ctl(q)
    try:
        assert ctl.out("delete_user", "guest") == 'Deleting user "guest" ...\n'
        assert refused(q, "guest", "guest") == 403
        assert ctl.out("add_user", "admin", "123456") == (
            'Adding user "admin" ...\n'
            "Done. Don't forget to grant the user permissions to some virtual hosts! "
            "See 'rabbitmqctl help set_permissions' to learn more.\n")
        assert ctl.out("set_user_tags", "admin", "administrator") == (
            'Setting tags for user "admin" to [administrator] ...\n')
        assert ctl.out("add_vhost", "myvhost") == 'Adding vhost "myvhost" ...\n'
        ctl.out("-q", "add_user", "myuser", "mypass")
        assert ctl.out("set_permissions", "-p", "myvhost", "myuser", ".*", ".*", ".*") == (
            'Setting permissions for user "myuser" in vhost "myvhost" ...\n')
        assert ctl.out("list_users") == (
            "Listing users ...\nuser\ttags\nadmin\t[administrator]\nmyuser\t[]\n")
        assert ctl.out("-q", "list_vhosts") == "name\n/\nmyvhost\n"
        assert ctl.out("list_permissions", "-p", "myvhost") == (
            'Listing permissions for vhost "myvhost" ...\n'
            "user\tconfigure\twrite\tread\nmyuser\t.*\t.*\t.*\n")
        assert ctl.out("list_user_permissions", "myuser") == (
            'Listing permissions for user "myuser" ...\n'
            "vhost\tconfigure\twrite\tread\nmyvhost\t.*\t.*\t.*\n")

        # The new user works in the new vhost, and only there.
        conn = pika.BlockingConnection(params(q, "myuser", "mypass", "myvhost"))
        ch = conn.channel()
        ch.queue_declare("tasks", durable=True)
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", "tasks", b"task %d" % i,
                             pika.BasicProperties(delivery_mode=2))
        method, _, body = ch.basic_get("tasks")
        assert body == b"task 0"
        assert ctl.out("-q", "list_queues", "-p", "myvhost", "name", "messages_ready",
                       "messages_unacknowledged") == (
            "name\tmessages_ready\tmessages_unacknowledged\ntasks\t2\t1\n")
        ch.basic_ack(method.delivery_tag)
        conn.close()
        assert refused(q, "myuser", "wrong", "myvhost") == 403
        assert refused(q, "myuser", "mypass", "/") == 530     # no permissions on /
        assert refused(q, "admin", "123456", "myvhost") == 530

        # change_password: the old password stops working.
        assert ctl.out("change_password", "myuser", "newpass") == (
            'Changing password for user "myuser" ...\n')
        assert refused(q, "myuser", "mypass", "myvhost") == 403
        assert ctl.out("authenticate_user", "myuser", "newpass") == (
            'Authenticating user "myuser" ...\nSuccess\n')
        bad = ctl.run("authenticate_user", "myuser", "mypass", ok=False)
        assert bad.returncode == 65
        assert 'failed to authenticate user "myuser"' in bad.stderr

        # Errors as rabbitmqctl's: message on stderr, its exit code.
        dup = ctl.run("add_user", "admin", "x", ok=False)
        assert (dup.returncode, dup.stderr) == (70, 'Error:\nUser "admin" already exists\n')
        gone = ctl.run("delete_user", "nobody", ok=False)
        assert (gone.returncode, gone.stderr) == (67, 'Error:\nUser "nobody" does not exist\n')
        novh = ctl.run("set_permissions", "-p", "nov", "myuser", ".*", ".*", ".*", ok=False)
        assert (novh.returncode, novh.stderr) == (69, "Error:\nVirtual host nov does not exist\n")

        # Remote-style use: an administrator's credentials instead of the cookie.
        remote = Ctl(q, "--user", "admin", "--password", "123456")
        assert remote.out("-q", "list_vhosts") == "name\n/\nmyvhost\n"
        wrong = Ctl(q, "--user", "myuser", "--password", "newpass").run(
            "add_vhost", "x", ok=False)
        assert wrong.returncode != 0

        # delete_user closes the user's open connection.
        conn = pika.BlockingConnection(params(q, "myuser", "newpass", "myvhost"))
        ctl.out("delete_user", "myuser")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            deadline = time.time() + 10
            while time.time() < deadline:
                conn.process_data_events(time_limit=0.2)
        assert e.value.reply_code == 320
        assert refused(q, "myuser", "newpass", "myvhost") == 403

        # stop: the broker exits cleanly.
        assert ctl.out("stop").startswith("Stopping and halting node ")
        assert q.proc.wait(20) == 0
        q.proc = None
    finally:
        q.stop()


@pytest.mark.parametrize("how", ["restart", "kill -9"])
def test_runtime_changes_survive(data_dir, how):
    q = Qgate(data_dir).start()
    ctl = Ctl(q)
    ctl.out("add_user", "carol", "c1")
    ctl.out("add_vhost", "v2")
    ctl.out("set_permissions", "-p", "v2", "carol", "^c-", ".*", ".*")
    ctl.out("set_user_tags", "carol", "monitoring")
    ctl.out("change_password", "carol", "c2")
    ctl.out("delete_user", "guest")
    if how == "restart":
        assert q.stop() == 0
    else:
        q.kill()
    q = Qgate(data_dir).start()
    ctl = Ctl(q)
    try:
        assert refused(q, "carol", "c2", "v2") is None
        assert refused(q, "carol", "c1", "v2") == 403
        assert refused(q, "guest", "guest") == 403
        assert ctl.out("-q", "list_users") == "user\ttags\ncarol\t[monitoring]\n"
        assert ctl.out("-q", "list_permissions", "-p", "v2") == (
            "user\tconfigure\twrite\tread\ncarol\t^c-\t.*\t.*\n")
        conn = pika.BlockingConnection(params(q, "carol", "c2", "v2"))
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare("d-queue")
        assert e.value.reply_code == 403
        conn.close()
    finally:
        assert q.stop() == 0


def test_rabbitmq_export_imports_and_its_users_log_in(data_dir):
    q = Qgate(data_dir).start()
    ctl = Ctl(q)
    try:
        assert ctl.out("import_definitions", FIXTURE) == (
            'Importing definitions in JSON from a file at "%s" ...\n'
            "Successfully started definition import. This process is asynchronous "
            "and can take some time.\n" % FIXTURE)
        # Passwords set on RabbitMQ, hashes carried over unchanged.
        conn = pika.BlockingConnection(params(q, "myuser", "s3cret-pass", "myvhost"))
        ch = conn.channel()
        ch.basic_publish("my-orders", "orders.eu", b"o1")
        deadline = time.time() + 5
        while time.time() < deadline:
            method, _, body = ch.basic_get("my-queue", auto_ack=True)
            if method:
                break
            time.sleep(0.05)
        assert body == b"o1"
        conn.close()
        assert refused(q, "admin", "123456", "myvhost") is None
        assert ctl.out("-q", "list_users") == (
            "user\ttags\nadmin\t[administrator]\nguest\t[administrator]\nmyuser\t[monitoring]\n")
        # Round trip: qgate's export loads into a fresh qgate.
        out = os.path.join(data_dir, "export.json")
        ctl.out("-q", "export_definitions", out)
        with open(out) as f:
            exported = json.load(f)
        assert {u["name"] for u in exported["users"]} == {"admin", "guest", "myuser"}
        bad = ctl.run("import_definitions", os.path.join(data_dir, "missing.json"), ok=False)
        assert bad.returncode == 65
        assert "does not exist" in bad.stderr
    finally:
        assert q.stop() == 0

    other = tempfile.mkdtemp(prefix="qgate-ctl-import-")
    try:
        q2 = Qgate(other).start()
        try:
            Ctl(q2).out("-q", "import_definitions", out)
            assert refused(q2, "myuser", "s3cret-pass", "myvhost") is None
        finally:
            assert q2.stop() == 0
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_deleting_the_memcache_vhost_closes_memcache_connections(data_dir):
    from qgate_proc import Memcache
    q = Qgate(data_dir, extra=["--memcache-vhost", "mv"]).start()
    ctl = Ctl(q)
    try:
        ctl.out("-q", "add_vhost", "mv")
        ctl.out("-q", "set_permissions", "-p", "mv", "guest", ".*", ".*", ".*")
        m = Memcache(q.memcache_port)
        assert m.set("jobs", b"j") == b"STORED"
        assert ctl.out("-q", "list_queues", "-p", "mv") == "name\tmessages\njobs\t1\n"
        ctl.out("-q", "delete_vhost", "mv")
        m.sock.settimeout(5)
        assert m.sock.recv(100) == b"", "the session is closed"
        m.close()
    finally:
        assert q.stop() == 0


def test_a_data_dir_emptied_of_users_is_not_seeded_again(data_dir):
    q = Qgate(data_dir).start()
    Ctl(q).out("-q", "delete_user", "guest")
    assert q.stop() == 0
    q = Qgate(data_dir).start()
    try:
        assert refused(q, "guest", "guest") == 403
        # the local cookie still works with no user left
        assert Ctl(q).out("-q", "list_users") == ""
    finally:
        assert q.stop() == 0


def test_status_shows_alarms_disk_space_and_every_limit(data_dir):
    q = Qgate(data_dir, extra=["--memcache-connection-max", "77", "--channel-max", "99",
                               "--disk-free-limit", "1GB"]).start()
    try:
        text = Ctl(q).out("status")
        assert "\nAlarms\n\n(none)\n" in text, text
        assert "Low free disk space watermark: 1.0000 gb" in text, text
        assert "Free disk space: " in text and "Total memory used: " in text, text
        limits = text.split("\nLimits\n\n", 1)[1]
        for line in ("memcache_connection_max: 77", "channel_max: 99", "frame_max: 131072",
                     "amqp_connection_max: 0", "handshake_timeout_ms: 10000",
                     "memcache_max_message: 1048576", "table_max_depth: 64"):
            assert line in limits, (line, text)
        assert "\nUpstream\n" not in text  # local mode has no gateway figures
    finally:
        q.stop()
    # a broker short of disk says so (a limit no disk can meet)
    q = Qgate(data_dir, extra=["--disk-free-limit", "1000000GB"]).start()
    try:
        deadline = time.monotonic() + 10
        while True:
            text = Ctl(q).out("status")
            if "Free disk space alarm on node " in text or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "Free disk space alarm on node " in text, text
    finally:
        q.stop()
