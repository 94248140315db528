"""Users, vhosts and permissions through real clients (pika, raw memcache) against the
qgate binary: each permission kind allowed and refused for every operation that needs
one, compared answer by answer with RabbitMQ 3.10.8; the memcache user's permissions;
and what a restart or kill -9 keeps. qgate only: each test runs its own broker on its
own data dir, with users and permissions seeded from a config file."""

import os
import re
import shutil
import tempfile

import pika
import pytest

from qgate_proc import Memcache, Qgate

pytestmark = pytest.mark.skipif(bool(os.environ.get("QGATE_TEST_AMQP_URL")),
                                reason="starts its own qgate processes")

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "fixtures")


@pytest.fixture
def data_dir():
    d = tempfile.mkdtemp(prefix="qgate-access-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def config(path, users, permissions, extra=""):
    """Writes a qgate TOML config seeding `users` {name: (password, [tags])} and
    `permissions` [(user, vhost, configure, write, read)]."""
    vhosts = sorted({p[1] for p in permissions} | {"/"})
    lines = [extra, "vhosts = [%s]" % ", ".join('"%s"' % v for v in vhosts)]
    for name, (password, tags) in users.items():
        lines += ["[[users]]", 'name = "%s"' % name, 'password = "%s"' % password,
                  "tags = [%s]" % ", ".join('"%s"' % t for t in tags)]
    for user, vhost, c, w, r in permissions:
        lines += ["[[permissions]]", 'user = "%s"' % user, 'vhost = "%s"' % vhost,
                  "configure = '%s'" % c, "write = '%s'" % w, "read = '%s'" % r]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start(data_dir, cfg, *extra):
    return Qgate(data_dir, extra=["--config", cfg] + list(extra)).start()


def params(port, user, password, vhost="/"):
    return pika.ConnectionParameters("127.0.0.1", port, vhost,
                                     pika.PlainCredentials(user, password),
                                     connection_attempts=1)


def login(port, user, password, vhost="/"):
    """None when the connection opens, else the broker's (code, text)."""
    try:
        pika.BlockingConnection(params(port, user, password, vhost)).close()
        return None
    except pika.exceptions.ProbableAuthenticationError as e:
        return 403, str(e)
    except pika.exceptions.ProbableAccessDeniedError as e:
        return 530, str(e)


# ---- the permission matrix, checked against RabbitMQ's answers --------------------

MATRIX_USERS = {
    "uc": ".*|||",   # configure only
    "uw": "|.*||",   # write only
    "ur": "||.*|",   # read only
    "un": "|||",     # a permissions record with three empty patterns
}

OPS = {
    "queue.declare q1": lambda ch: ch.queue_declare("q1"),
    "queue.declare passive pre": lambda ch: ch.queue_declare("pre", passive=True),
    "queue.declare server-named": lambda ch: ch.queue_declare("", exclusive=True),
    "queue.declare dlx": lambda ch: ch.queue_declare(
        "q2", arguments={"x-dead-letter-exchange": "prex"}),
    "exchange.declare x1": lambda ch: ch.exchange_declare("x1", "direct"),
    "exchange.declare passive prex": lambda ch: ch.exchange_declare("prex", passive=True),
    "exchange.declare ae": lambda ch: ch.exchange_declare(
        "x3", "direct", arguments={"alternate-exchange": "prex2"}),
    "exchange.delete prex2": lambda ch: ch.exchange_delete("prex2"),
    "queue.bind pre prex": lambda ch: ch.queue_bind("pre", "prex", "k2"),
    "queue.unbind pre prex": lambda ch: ch.queue_unbind("pre", "prex", "k"),
    "exchange.bind prex2<-prex": lambda ch: ch.exchange_bind("prex2", "prex", "k"),
    "basic.publish prex": lambda ch: (ch.confirm_delivery(), ch.basic_publish("prex", "k", b"x")),
    "basic.publish default": lambda ch: (ch.confirm_delivery(), ch.basic_publish("", "pre", b"x")),
    "basic.publish missing exchange": lambda ch: (
        ch.confirm_delivery(), ch.basic_publish("nosuchx", "pre", b"x")),
    "basic.consume pre": lambda ch: ch.basic_consume("pre", lambda *a: None),
    "basic.get pre": lambda ch: ch.basic_get("pre"),
    "queue.purge pre": lambda ch: ch.queue_purge("pre"),
    "queue.delete pre": lambda ch: ch.queue_delete("pre"),
    "queue.delete missing": lambda ch: ch.queue_delete("nosuchq"),
    "queue.bind to default": lambda ch: ch.queue_bind("pre", "", "k"),
}


def rabbitmq_answers():
    """tests/fixtures/rabbitmq-permissions.txt: the same operations by the same users
    against a private RabbitMQ 3.10.8 node (user | operation | answer)."""
    out = {}
    with open(os.path.join(FIXTURES, "rabbitmq-permissions.txt")) as f:
        for line in f:
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3:
                out[(parts[0], parts[1])] = parts[2]
    return out


def normalize(text):
    return re.sub(r"amq\.gen-[A-Za-z0-9_-]+", "amq.gen-X", text)


def test_each_permission_kind_allowed_and_refused_as_rabbitmq(data_dir):
    users = {"guest": ("guest", ["administrator"])}
    perms = [("guest", "/", ".*", ".*", ".*"), ("guest", "pv", ".*", ".*", ".*")]
    for u, spec in MATRIX_USERS.items():
        users[u] = ("pw", [])
        c, w, r, _ = spec.split("|")
        perms.append((u, "pv", c, w, r))
    users["unone"] = ("pw", [])
    q = start(data_dir, config(os.path.join(data_dir, "q.toml"), users, perms))
    try:
        def setup():
            c = pika.BlockingConnection(params(q.amqp_port, "guest", "guest", "pv"))
            ch = c.channel()
            ch.exchange_declare("prex", "direct", durable=True)
            ch.exchange_declare("prex2", "fanout", durable=True)
            ch.queue_declare("pre", durable=True)
            ch.queue_bind("pre", "prex", "k")
            ch.basic_publish("", "pre", b"m")
            c.close()

        expected = rabbitmq_answers()
        assert len(expected) == len(MATRIX_USERS) * len(OPS)
        allowed = refused = 0
        for user in MATRIX_USERS:
            c = pika.BlockingConnection(params(q.amqp_port, user, "pw", "pv"))
            for name, op in OPS.items():
                setup()
                try:
                    ch = c.channel()
                    op(ch)
                    got = "ok"
                    ch.close()
                except pika.exceptions.ChannelClosedByBroker as e:
                    got = "%d %s" % (e.reply_code, e.reply_text)
                want = expected[(user, name)]
                assert normalize(got) == normalize(want), (user, name)
                if got == "ok":
                    allowed += 1
                else:
                    refused += 1
            c.close()
        assert allowed and refused
        # No permissions record at all: the vhost cannot be opened.
        assert login(q.amqp_port, "unone", "pw", "pv")[0] == 530
        assert "access to vhost 'pv' refused for user 'unone'" in login(
            q.amqp_port, "unone", "pw", "pv")[1]
        assert "NOT_ALLOWED - vhost nosuch not found" in login(
            q.amqp_port, "uc", "pw", "nosuch")[1]
        bad = login(q.amqp_port, "uc", "wrong", "pv")
        assert bad[0] == 403 and "Login was refused using authentication mechanism PLAIN" in bad[1]
    finally:
        assert q.stop() == 0


# ---- memcache ------------------------------------------------------------------------

def test_memcache_user_permissions_apply(data_dir):
    users = {"guest": ("guest", ["administrator"]), "mc": ("mcpw", [])}
    perms = [("guest", "/", ".*", ".*", ".*"),
             # may create and fill jobs, read only from results
             ("mc", "/", "^jobs$", "^jobs$", "^results$")]
    q = start(data_dir, config(os.path.join(data_dir, "q.toml"), users, perms),
              "--memcache-user", "mc")
    try:
        m = Memcache(q.memcache_port)
        assert m.set("jobs", b"j1") == b"STORED"
        # write without configure: refused for a queue set would have to create
        assert m.set("other", b"x") == b"SERVER_ERROR access refused"
        # read refused: the message stays
        m.sock.sendall(b"get jobs\r\n")
        assert m._line() == b"SERVER_ERROR access refused"
        assert m.set("results", b"r") == b"SERVER_ERROR access refused"
        m.sock.sendall(b"delete results\r\n")
        assert m._line() == b"SERVER_ERROR access refused"
        # a refused noreply set may answer its SERVER_ERROR (nothing was stored); the
        # connection keeps working either way
        m.sock.sendall(b"set other 0 0 1 noreply\r\nx\r\n")
        answer = m.set("jobs", b"j2")
        if answer == b"SERVER_ERROR access refused":
            answer = m._line()
        assert answer == b"STORED"
        m.sock.sendall(b"delete results noreply\r\n")
        assert m._line() == b"SERVER_ERROR access refused"
        m.close()

        conn = pika.BlockingConnection(params(q.amqp_port, "guest", "guest"))
        ch = conn.channel()
        assert ch.queue_declare("jobs", durable=True, passive=True).method.message_count == 2
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare("other", passive=True)
        assert e.value.reply_code == 404, "a refused set must not declare its queue"
        ch = conn.channel()
        ch.queue_declare("results", durable=True)
        ch.basic_publish("", "results", b"done")
        ch.basic_publish("", "results", b"done2")
        conn.close()

        m = Memcache(q.memcache_port)
        assert m.get("results") == (0, b"done")
        # delete needs configure on the queue
        m.sock.sendall(b"delete jobs\r\n")
        assert m._line() == b"DELETED"
        m.close()
    finally:
        assert q.stop() == 0


def test_memcache_default_user_is_guest(data_dir):
    users = {"guest": ("guest", ["administrator"])}
    # guest may read but not write in this data dir
    q = start(data_dir, config(os.path.join(data_dir, "q.toml"), users,
                               [("guest", "/", ".*", "", ".*")]))
    try:
        m = Memcache(q.memcache_port)
        assert m.set("q", b"x") == b"SERVER_ERROR access refused"
        m.close()
    finally:
        assert q.stop() == 0


# ---- what the data directory keeps -----------------------------------------------------

@pytest.mark.parametrize("how", ["restart", "kill -9"])
def test_seeded_users_survive_and_the_data_dir_is_the_truth(data_dir, how):
    first = config(os.path.join(data_dir, "a.toml"),
                   {"alice": ("apw", ["administrator"])},
                   [("alice", "shop", ".*", ".*", ".*")])
    q = start(data_dir, first)
    assert login(q.amqp_port, "alice", "apw", "shop") is None
    # seeded without guest: guest does not exist
    assert login(q.amqp_port, "guest", "guest")[0] == 403
    if how == "restart":
        assert q.stop() == 0
    else:
        q.kill()
    # A second config naming other users changes nothing: it only seeds a fresh dir.
    second = config(os.path.join(data_dir, "b.toml"),
                    {"bob": ("bpw", [])}, [("bob", "/", ".*", ".*", ".*")])
    q = start(data_dir, second)
    try:
        assert login(q.amqp_port, "alice", "apw", "shop") is None
        assert login(q.amqp_port, "bob", "bpw")[0] == 403
        assert login(q.amqp_port, "alice", "apw", "/")[0] == 530
    finally:
        assert q.stop() == 0


def test_fresh_data_dir_defaults_to_guest_on_slash(data_dir):
    q = Qgate(data_dir).start()
    try:
        conn = pika.BlockingConnection(params(q.amqp_port, "guest", "guest"))
        conn.channel().queue_declare("defaults-ok")
        conn.close()
        assert login(q.amqp_port, "guest", "nope")[0] == 403
    finally:
        assert q.stop() == 0
