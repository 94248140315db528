"""The management HTTP API (issue 12) on qgate's management listener, through plain HTTP
(urllib) and through RabbitMQ's own CLI, rabbitmqadmin, taken from the installed
rabbitmq-server package.

What RabbitMQ 3.10.8 answers was checked against a private node with the management
plugin enabled; these tests pin qgate to the same paths, status codes, JSON field names
and types, and error bodies.
"""

import base64
import glob
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest
from pymemcache.client.base import Client as Memcache

from helpers import uniq

pytestmark = pytest.mark.qgate_only

NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}


class Api:
    """A tiny client: every call returns (status, headers, parsed JSON body or None)."""

    def __init__(self, port, user="guest", password="guest", headers=None):
        self.base = "http://127.0.0.1:%d" % port
        self.auth = (user, password) if user is not None else None
        self.headers = dict(headers or {})

    def as_user(self, user, password):
        return Api(int(self.base.rsplit(":", 1)[1]), user, password)

    def call(self, method, path, body=None, raw=None, headers=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.auth:
            token = base64.b64encode(("%s:%s" % self.auth).encode()).decode()
            req.add_header("Authorization", "Basic " + token)
        for k, v in {**self.headers, **(headers or {})}.items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, hdrs, text = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, hdrs, text = e.code, e.headers, e.read()
        parsed = json.loads(text) if text else None
        return status, hdrs, parsed

    def get(self, path):
        status, _, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def put(self, path, body=None):
        return self.call("PUT", path, body if body is not None else {})[0]

    def delete(self, path):
        return self.call("DELETE", path)[0]

    def post(self, path, body):
        return self.call("POST", path, body)


def q(name):
    return urllib.parse.quote(name, safe="")


@pytest.fixture
def api(fresh_broker):
    return Api(fresh_broker.management_port)


def add_user(api, name, tags, password="pw", vhost="/", perms=True):
    assert api.put("/api/users/" + q(name), {"password": password, "tags": tags}) == 201
    if perms:
        assert api.put("/api/permissions/%s/%s" % (q(vhost), q(name)),
                       {"configure": ".*", "write": ".*", "read": ".*"}) == 201
    return api.as_user(name, password)


# ---- auth ------------------------------------------------------------------------------

def test_auth_refusals_are_401_as_rabbitmq(api):
    anon = Api(int(api.base.rsplit(":", 1)[1]), user=None)
    status, hdrs, body = anon.call("GET", "/api/overview")
    assert (status, body) == (401, None)
    assert hdrs["WWW-Authenticate"] == 'Basic realm="RabbitMQ Management"'
    status, hdrs, body = api.as_user("guest", "wrong").call("GET", "/api/overview")
    assert status == 401
    assert body == {"error": "not_authorized", "reason": "Login failed"}
    assert api.as_user("nobody", "x").call("GET", "/api/whoami")[0] == 401
    # A valid user without a management tag is refused, as RabbitMQ refuses it.
    plain = add_user(api, "plain", "")
    status, _, body = plain.call("GET", "/api/overview")
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Not management user"})


def test_tag_rules(api):
    assert api.put("/api/vhosts/other") == 201
    assert api.put("/api/queues/other/in-other") == 201
    assert api.put("/api/queues/%2F/in-root") == 201
    mgr = add_user(api, "mgr", "management")
    mon = add_user(api, "mon", "monitoring")
    assert mgr.get("/api/whoami") == {"name": "mgr", "tags": ["management"]}
    # management: own vhosts only, nothing admin-only.
    assert [x["name"] for x in mgr.get("/api/queues")] == ["in-root"]
    assert [v["name"] for v in mgr.get("/api/vhosts")] == ["/"]
    for path in ["/api/users", "/api/permissions", "/api/definitions", "/api/vhosts/other"]:
        status, _, body = mgr.call("GET", path)
        assert (status, body) == (401, {"error": "not_authorised",
                                        "reason": "Not administrator user"}), path
    status, _, body = mgr.call("GET", "/api/queues/other")
    assert (status, body) == (401, {"error": "not_authorised",
                                    "reason": "User not authorised to access virtual host"})
    # monitoring: reads every vhost's objects, changes nothing it has no rights for.
    assert sorted(x["name"] for x in mon.get("/api/queues")) == ["in-other", "in-root"]
    assert "listeners" in mon.get("/api/overview")
    assert "listeners" not in mgr.get("/api/overview")
    assert mon.call("PUT", "/api/users/x", {"password": "p", "tags": ""})[0] == 401
    assert mon.put("/api/queues/other/nope") == 401
    # Permissions apply to what a user does through the API, as over AMQP.
    assert api.put("/api/permissions/%2F/mgr", {"configure": "^mine", "write": ".*",
                                               "read": ".*"}) == 204
    assert mgr.put("/api/queues/%2F/mine.1") == 201
    status, _, body = mgr.call("PUT", "/api/queues/%2F/theirs.1", {})
    assert (status, body) == (401, {"error": "not_authorised", "reason": "Access refused."})


def test_refusal_order(api):
    """Which refusal a request that is wrong in two ways gets, where qgate answers as
    RabbitMQ 3.10.8 does: credentials first, then the tag, then the vhost (404 when it
    does not exist, 401 when the caller has no permissions on it), then the object."""
    assert api.put("/api/vhosts/other") == 201
    mgr = add_user(api, "mgr", "management")
    anon = Api(int(api.base.rsplit(":", 1)[1]), user=None)
    assert anon.call("GET", "/api/queues/no-such-vhost")[:3:2] == (401, None)
    assert mgr.call("GET", "/api/queues/no-such-vhost")[:3:2] == (404, NOT_FOUND)
    refused = {"error": "not_authorised", "reason": "User not authorised to access virtual host"}
    for method, path in [("GET", "/api/queues/other"), ("GET", "/api/exchanges/other"),
                         ("GET", "/api/bindings/other"),
                         ("GET", "/api/exchanges/other/amq.direct"),
                         ("GET", "/api/vhosts/other/connections"),
                         ("GET", "/api/aliveness-test/other"),
                         ("GET", "/api/queues/other/missing/bindings"),
                         ("GET", "/api/exchanges/other/missing/bindings/source"),
                         ("GET", "/api/bindings/other/e/amq.direct/q/missing"),
                         ("DELETE", "/api/queues/other/missing"),
                         ("DELETE", "/api/queues/other/missing/contents")]:
        assert mgr.call(method, path)[:3:2] == (401, refused), path
    assert mgr.call("PUT", "/api/queues/other/x", {})[:3:2] == (401, refused)
    assert mgr.call("POST", "/api/bindings/other/e/amq.direct/q/x", {})[:3:2] == (401, refused)
    not_admin = {"error": "not_authorised", "reason": "Not administrator user"}
    assert mgr.call("PUT", "/api/users/x", raw=b"{bad")[:3:2] == (401, not_admin)
    assert mgr.call("DELETE", "/api/users/missing")[:3:2] == (401, not_admin)


def test_cookie_is_private_and_acts_as_administrator(fresh_broker):
    path = os.path.join(fresh_broker.data_dir, ".qgate-cookie")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = open(path).read().strip()
    assert len(token) >= 32
    ctl = Api(fresh_broker.management_port, user=None, headers={"X-Qgate-Cookie": token})
    assert ctl.get("/api/whoami") == {"name": "qgate-ctl", "tags": ["administrator"]}
    assert ctl.put("/api/queues/%2F/" + uniq("ctl")) == 201
    # It keeps working after the last administrator is gone.
    assert ctl.delete("/api/users/guest") == 204
    assert ctl.get("/api/users") == []
    bad = Api(fresh_broker.management_port, user=None, headers={"X-Qgate-Cookie": "0" * 64})
    assert bad.call("GET", "/api/whoami")[0] == 401


# ---- errors ----------------------------------------------------------------------------

def test_not_found_and_malformed_bodies(api):
    for path in ["/api/queues/%2F/missing", "/api/queues/missing-vhost",
                 "/api/exchanges/%2F/missing", "/api/vhosts/missing", "/api/users/missing",
                 "/api/permissions/%2F/missing", "/api/nope", "/api/connections/missing",
                 "/api/bindings/%2F/e/amq.direct/q/missing"]:
        status, hdrs, body = api.call("GET", path)
        assert (status, body) == (404, NOT_FOUND), path
        assert hdrs["Content-Type"] == "application/json"
    assert api.call("DELETE", "/api/queues/%2F/missing")[:3:2] == (404, NOT_FOUND)
    status, _, body = api.call("PUT", "/api/queues/%2F/x", raw=b"{not json")
    assert (status, body) == (400, {"error": "bad_request", "reason": "not_json"})
    status, _, body = api.call("PUT", "/api/queues/%2F/x", raw=b"[1, 2]")
    assert (status, body) == (400, {"error": "bad_request", "reason": "not_json"})
    status, _, body = api.call("PUT", "/api/queues/%2F/x", {"durable": "maybe"})
    assert status == 400 and body["error"] == "bad_request"
    status, _, body = api.call("PUT", "/api/queues/no-such-vhost/x", {})
    assert (status, body) == (404, {"error": "not_found", "reason": "vhost_not_found"})
    status, _, body = api.call("PUT", "/api/queues/%2F/big", raw=b" " * (21 * 1024 * 1024))
    assert (status, body["error"]) == (413, "payload_too_large")
    status, hdrs, _ = api.call("PATCH", "/api/queues")
    assert status == 405 and "GET" in hdrs["Allow"]
    status, _, body = api.call("POST", "/api/exchanges/%2F/amq.default/publish",
                               {"payload": "x"})
    assert status == 400 and "key_missing" in body["reason"]
    # A browser on another site cannot make changes with cached credentials.
    status, _, body = api.call("PUT", "/api/queues/%2F/csrf", {},
                               headers={"Origin": "http://evil.example"})
    assert (status, body["error"]) == (403, "forbidden")
    assert api.call("GET", "/api/queues/%2F/csrf")[0] == 404
    same = api.base.split("://", 1)[1]
    assert api.call("PUT", "/api/queues/%2F/csrf", {},
                    headers={"Origin": "http://" + same})[0] == 201


# ---- queues, with traffic from both front ends ------------------------------------------

def test_queue_counts_amqp_plus_memcache(fresh_broker, api):
    name = uniq("mgmt-q")
    n_amqp, n_mc = 3, 4
    conn = fresh_broker.connect()
    ch = conn.channel()
    ch.queue_declare(name, durable=True)
    ch.confirm_delivery()
    for i in range(n_amqp):
        ch.basic_publish("", name, b"amqp-%d" % i)
    mc = Memcache((fresh_broker.memcache_host, fresh_broker.memcache_port))
    for i in range(n_mc):
        assert mc.set(name, b"mc-%d" % i, noreply=False)
    one = api.get("/api/queues/%2F/" + q(name))
    assert one["name"] == name and one["vhost"] == "/"
    assert one["messages"] == n_amqp + n_mc
    assert one["messages_ready"] == n_amqp + n_mc
    assert one["messages_unacknowledged"] == 0
    assert one["consumers"] == 0
    assert one["message_stats"]["publish"] == n_amqp + n_mc
    for field, kind in [("durable", bool), ("auto_delete", bool), ("exclusive", bool),
                        ("arguments", dict), ("state", str), ("type", str), ("node", str),
                        ("messages", int), ("messages_ready", int),
                        ("messages_unacknowledged", int), ("consumers", int)]:
        assert isinstance(one[field], kind), field
    assert one["durable"] is True and one["state"] == "running"
    for field in ["messages", "messages_ready", "messages_unacknowledged"]:
        assert isinstance(one[field + "_details"]["rate"], float)
    for field in ["publish", "deliver_get", "ack", "redeliver"]:
        assert isinstance(one["message_stats"][field + "_details"]["rate"], float)
    assert one.pop("consumer_details") == []
    assert one in api.get("/api/queues/%2F")
    assert one in api.get("/api/queues")
    overview = api.get("/api/overview")
    assert overview["queue_totals"]["messages"] == n_amqp + n_mc
    assert overview["message_stats"]["publish"] == n_amqp + n_mc
    assert overview["object_totals"]["queues"] == 1
    # A consumer with one unacked message shows up in the counts and in /api/consumers.
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(name, lambda *a: None, consumer_tag="mgmt-ctag")
    conn.process_data_events(time_limit=0.5)
    one = api.get("/api/queues/%2F/" + q(name))
    assert (one["consumers"], one["messages_unacknowledged"]) == (1, 1)
    consumers = api.get("/api/consumers/%2F")
    assert [(c["consumer_tag"], c["queue"], c["ack_required"], c["prefetch_count"])
            for c in consumers] == [("mgmt-ctag", {"name": name, "vhost": "/"}, True, 1)]
    assert one["consumer_details"] == consumers
    conn.close()
    mc.close()


def test_queue_lifecycle(fresh_broker, api):
    name = uniq("life")
    path = "/api/queues/%2F/" + q(name)
    # rabbitmqadmin sends booleans as strings.
    assert api.put(path, {"durable": "true", "auto_delete": "false",
                          "arguments": {"x-max-length": 10}}) == 201
    assert api.put(path, {"durable": True, "arguments": {"x-max-length": 10}}) == 204
    status, _, body = api.call("PUT", path, {"durable": False})
    assert status == 400
    assert body["reason"] == ("inequivalent arg 'durable' for queue '%s' in vhost '/': "
                              "received 'false' but current is 'true'" % name)
    one = api.get(path)
    assert (one["durable"], one["arguments"]) == (True, {"x-max-length": 10})
    for i in range(3):
        status, _, body = api.post("/api/exchanges/%2F/amq.default/publish",
                                   {"routing_key": name, "payload": "m%d" % i,
                                    "payload_encoding": "string",
                                    "properties": {"delivery_mode": "2",
                                                   "headers": {"h": 1}}})
        assert (status, body) == (200, {"routed": True})
    status, _, body = api.call("DELETE", path + "?if-empty=true")
    assert (status, body) == (400, {"error": "bad_request",
                                    "reason": "queue '%s' in vhost '/' not empty" % name})
    # get: ack_requeue_true leaves them, ack_requeue_false takes them.
    status, _, got = api.post(path + "/get", {"count": "2", "ackmode": "ack_requeue_true",
                                              "encoding": "auto", "truncate": "50000"})
    assert status == 200
    assert [(m["payload"], m["payload_encoding"], m["payload_bytes"], m["redelivered"],
             m["exchange"], m["routing_key"], m["message_count"]) for m in got] == [
        ("m0", "string", 2, False, "", name, 2), ("m1", "string", 2, False, "", name, 1)]
    assert got[0]["properties"] == {"delivery_mode": 2, "headers": {"h": 1}}
    assert api.get(path)["messages"] == 3
    _, _, got = api.post(path + "/get", {"count": 1, "ackmode": "ack_requeue_false",
                                         "encoding": "base64", "truncate": 1})
    assert [(m["payload"], m["payload_encoding"], m["payload_bytes"], m["redelivered"])
            for m in got] == [(base64.b64encode(b"m").decode(), "base64", 2, True)]
    assert api.get(path)["messages"] == 2
    status, _, body = api.post(path + "/get", {"count": 1, "encoding": "auto"})
    assert (status, body) == (400, {"error": "bad_request", "reason": "[{key_missing,ackmode}]"})
    # Another connection's exclusive queue is locked for get, purge and delete.
    owner = fresh_broker.connect()
    excl = owner.channel().queue_declare("", exclusive=True).method.queue
    for method, sub, body in [("POST", "/get", {"count": 1, "ackmode": "ack_requeue_true",
                                                "encoding": "auto"}),
                              ("DELETE", "/contents", None), ("DELETE", "", None)]:
        status, _, err = api.call(method, "/api/queues/%2F/" + q(excl) + sub, body)
        assert (status, err["error"]) == (400, "bad_request"), (method, sub)
        assert "exclusive access to locked queue" in err["reason"]
    assert api.get("/api/queues/%2F/" + q(excl))["exclusive"] is True
    owner.close()
    assert api.delete(path + "/contents") == 204
    assert api.get(path)["messages"] == 0
    assert api.delete(path + "?if-empty=true") == 204
    assert api.call("GET", path)[0] == 404


def test_encoded_vhost_and_names(api):
    vhost, name = "team/a b", "odd name/with%chars"
    assert api.put("/api/vhosts/" + q(vhost)) == 201
    assert api.put("/api/queues/%s/%s" % (q(vhost), q(name))) == 201
    one = api.get("/api/queues/%s/%s" % (q(vhost), q(name)))
    assert (one["vhost"], one["name"]) == (vhost, name)
    assert [x["name"] for x in api.get("/api/queues/" + q(vhost))] == [name]
    # The creating administrator got full permissions on the new vhost, as in RabbitMQ.
    assert api.get("/api/permissions/%s/guest" % q(vhost))["configure"] == ".*"
    assert api.delete("/api/vhosts/" + q(vhost)) == 204
    assert api.call("GET", "/api/queues/" + q(vhost))[0] == 404


# ---- exchanges and bindings -----------------------------------------------------------

def test_exchanges_bindings_and_publish(api):
    x, qn = uniq("x"), uniq("bq")
    assert api.put("/api/exchanges/%2F/" + x, {"type": "topic", "durable": "true"}) == 201
    assert api.put("/api/exchanges/%2F/" + x, {"type": "topic", "durable": True}) == 204
    status, _, body = api.call("PUT", "/api/exchanges/%2F/" + x, {"type": "direct"})
    assert status == 400 and body["reason"].startswith("inequivalent arg 'type'")
    status, _, body = api.call("PUT", "/api/exchanges/%2F/" + uniq("x"), {"type": "bogus"})
    assert (status, body) == (400, {"error": "bad_request",
                                    "reason": "invalid exchange type 'bogus'"})
    assert api.get("/api/exchanges/%2F/" + x) == {
        "name": x, "vhost": "/", "type": "topic", "durable": True, "auto_delete": False,
        "internal": False, "arguments": {}}
    default = api.get("/api/exchanges/%2F/amq.default")
    assert (default["name"], default["type"]) == ("", "direct")
    assert api.put("/api/queues/%2F/" + qn) == 201
    status, hdrs, _ = api.call("POST", "/api/bindings/%%2F/e/%s/q/%s" % (x, qn),
                               {"routing_key": "a.*", "arguments": {}})
    assert status == 201 and hdrs["Location"] == "%s/a.%%2A" % qn
    status, _, _ = api.call("POST", "/api/bindings/%%2F/e/%s/q/%s" % (x, qn),
                            {"routing_key": "b.#", "arguments": {"k": "v"}})
    assert status == 201
    listed = api.get("/api/bindings/%%2F/e/%s/q/%s" % (x, qn))
    assert [(b["source"], b["destination"], b["destination_type"], b["routing_key"],
             b["arguments"]) for b in listed] == [
        (x, qn, "queue", "a.*", {}), (x, qn, "queue", "b.#", {"k": "v"})]
    assert listed[0]["properties_key"] == "a.*"
    keyed = listed[1]["properties_key"]
    assert keyed.startswith("b.#~")
    assert api.get("/api/bindings/%%2F/e/%s/q/%s/%s" % (x, qn, q(keyed))) == listed[1]
    in_queue = api.get("/api/queues/%%2F/%s/bindings" % qn)
    assert [b["source"] for b in in_queue] == ["", x, x]
    assert len(api.get("/api/exchanges/%%2F/%s/bindings/source" % x)) == 2
    status, _, body = api.post("/api/exchanges/%2F/" + x + "/publish",
                               {"routing_key": "a.1", "payload": "aGk=",
                                "payload_encoding": "base64", "properties": {}})
    assert (status, body) == (200, {"routed": True})
    status, _, body = api.post("/api/exchanges/%2F/" + x + "/publish",
                               {"routing_key": "zzz", "payload": "x",
                                "payload_encoding": "string", "properties": {}})
    assert (status, body) == (200, {"routed": False})
    _, _, got = api.post("/api/queues/%2F/" + qn + "/get",
                         {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert [(m["payload"], m["routing_key"], m["exchange"]) for m in got] == [("hi", "a.1", x)]
    assert api.delete("/api/bindings/%%2F/e/%s/q/%s/%s" % (x, qn, q(keyed))) == 204
    assert api.call("DELETE", "/api/bindings/%%2F/e/%s/q/%s/%s" % (x, qn, q(keyed)))[0] == 404
    assert len(api.get("/api/bindings/%%2F/e/%s/q/%s" % (x, qn))) == 1
    status, _, body = api.call("POST", "/api/bindings/%2F/e/nope/q/" + qn, {"routing_key": ""})
    assert (status, body) == (404, {"error": "not_found",
                                    "reason": "no exchange 'nope' in vhost '/'"})
    assert api.delete("/api/exchanges/%2F/amq.direct") == 401
    assert api.delete("/api/exchanges/%2F/" + x) == 204
    assert api.call("GET", "/api/exchanges/%2F/" + x)[0] == 404
    names = [e["name"] for e in api.get("/api/exchanges/%2F")]
    assert "" in names and "amq.topic" in names


# ---- connections ----------------------------------------------------------------------

def test_connections_of_both_protocols_and_forced_close(fresh_broker, api):
    conn = fresh_broker.connect()
    conn.channel()
    mc = Memcache((fresh_broker.memcache_host, fresh_broker.memcache_port))
    mc.set(uniq("mcq"), b"x", noreply=False)
    conns = api.get("/api/connections")
    protocols = sorted(c["protocol"] for c in conns)
    assert protocols == ["AMQP 0-9-1", "memcache"]
    amqp = next(c for c in conns if c["protocol"] == "AMQP 0-9-1")
    assert (amqp["user"], amqp["vhost"], amqp["channels"], amqp["state"]) == ("guest", "/", 1,
                                                                              "running")
    assert amqp["port"] == fresh_broker.amqp_port
    assert isinstance(amqp["recv_oct"], int) and amqp["recv_oct"] > 0
    assert api.get("/api/connections/" + q(amqp["name"])) == amqp
    conn.channel(5)
    channels = api.get("/api/channels")
    assert [(c["connection_details"]["name"], c["number"], c["name"]) for c in channels] == [
        (amqp["name"], 1, amqp["name"] + " (1)"), (amqp["name"], 5, amqp["name"] + " (5)")]
    assert api.get("/api/connections/%s/channels" % q(amqp["name"])) == channels
    assert api.get("/api/channels/" + q(channels[1]["name"])) == channels[1]
    assert isinstance(amqp["recv_oct_details"]["rate"], float)
    assert api.get("/api/vhosts/%2F/connections")
    status, _, _ = api.call("DELETE", "/api/connections/" + q(amqp["name"]),
                            headers={"X-Reason": "bye from the test"})
    assert status == 204
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        deadline = time.time() + 10
        while time.time() < deadline:
            conn.process_data_events(time_limit=0.2)
    assert e.value.reply_code == 320
    assert "bye from the test" in e.value.reply_text
    deadline = time.time() + 5
    while time.time() < deadline and len(api.get("/api/connections")) > 1:
        time.sleep(0.05)
    left = api.get("/api/connections")
    assert [(c["protocol"], c["user"], c["vhost"]) for c in left] == [("memcache", "guest", "/")]
    # A memcache connection is closed the same way: the server ends the TCP connection.
    raw = socket.create_connection((fresh_broker.memcache_host, fresh_broker.memcache_port))
    raw.sendall(b"version\r\n")
    assert raw.recv(100).startswith(b"VERSION")
    mine = [c for c in api.get("/api/connections") if c["peer_port"] == raw.getsockname()[1]]
    assert len(mine) == 1
    assert api.delete("/api/connections/" + q(mine[0]["name"])) == 204
    raw.settimeout(5)
    assert raw.recv(100) == b""
    raw.close()
    mc.close()


# ---- users, vhosts, permissions, definitions ------------------------------------------

def test_users_vhosts_permissions(api):
    assert api.put("/api/users/u1", {"password": "p1", "tags": "management,monitoring"}) == 201
    u = api.get("/api/users/u1")
    assert (u["name"], u["tags"], u["hashing_algorithm"], u["limits"]) == (
        "u1", ["management", "monitoring"], "rabbit_password_hashing_sha256", {})
    assert isinstance(u["password_hash"], str) and u["password_hash"]
    # password_hash copied from another user logs in with that user's password.
    assert api.put("/api/users/u2", {"password_hash": u["password_hash"],
                                     "tags": ["management"]}) == 201
    assert api.as_user("u2", "p1").get("/api/whoami") == {"name": "u2", "tags": ["management"]}
    assert api.put("/api/users/u1", {"password": "p2", "tags": "administrator"}) == 204
    assert api.as_user("u1", "p2").get("/api/whoami")["tags"] == ["administrator"]
    assert api.put("/api/vhosts/v1") == 201
    assert api.put("/api/vhosts/v1") == 204
    assert [v["name"] for v in api.get("/api/vhosts")] == ["/", "v1"]
    v = api.get("/api/vhosts/v1")
    assert (v["name"], v["messages"], v["tracing"]) == ("v1", 0, False)
    perms = {"configure": "^c", "write": "^w", "read": "^r"}
    assert api.put("/api/permissions/v1/u2", perms) == 201
    assert api.put("/api/permissions/v1/u2", perms) == 204
    assert api.get("/api/permissions/v1/u2") == {"user": "u2", "vhost": "v1", **perms}
    assert {"user": "u2", "vhost": "v1", **perms} in api.get("/api/permissions")
    assert [p["user"] for p in api.get("/api/vhosts/v1/permissions")] == ["guest", "u2"]
    assert [p["vhost"] for p in api.get("/api/users/u2/permissions")] == ["v1"]
    status, _, body = api.call("PUT", "/api/permissions/v1/nobody", perms)
    assert (status, body) == (400, {"error": "bad_request", "reason": "vhost_or_user_not_found"})
    status, _, body = api.call("PUT", "/api/permissions/v1/u2", {"configure": ".*"})
    assert (status, body) == (400, {"error": "bad_request",
                                    "reason": "[{key_missing,write},{key_missing,read}]"})
    assert api.delete("/api/permissions/v1/u2") == 204
    assert api.delete("/api/permissions/v1/u2") == 404
    assert api.delete("/api/users/u2") == 204
    assert api.delete("/api/users/u2") == 404
    assert api.delete("/api/vhosts/v1") == 204
    assert api.delete("/api/vhosts/v1") == 404


def test_definitions_round_trip(api):
    assert api.put("/api/queues/%2F/defs.q", {"durable": True}) == 201
    assert api.put("/api/exchanges/%2F/defs.x", {"type": "fanout", "durable": True}) == 201
    assert api.call("POST", "/api/bindings/%2F/e/defs.x/q/defs.q", {"routing_key": ""})[0] == 201
    defs = api.get("/api/definitions")
    for key in ["users", "vhosts", "permissions", "queues", "exchanges", "bindings"]:
        assert isinstance(defs[key], list), key
    assert any(x["name"] == "defs.q" for x in defs["queues"])
    defs["queues"].append({"name": "defs.imported", "vhost": "/", "durable": True,
                           "auto_delete": False, "arguments": {}})
    status, _, _ = api.post("/api/definitions", defs)
    assert status == 204
    assert api.get("/api/queues/%2F/defs.imported")["durable"] is True
    status, _, body = api.call("POST", "/api/definitions", raw=b"nope")
    assert (status, body["error"]) == (400, "bad_request")


# ---- broker-wide ----------------------------------------------------------------------

def test_overview_and_health(fresh_broker, api):
    o = api.get("/api/overview")
    for field, kind in [("management_version", str), ("product_name", str),
                        ("product_version", str), ("rabbitmq_version", str),
                        ("cluster_name", str), ("node", str), ("message_stats", dict),
                        ("queue_totals", dict), ("object_totals", dict),
                        ("churn_rates", dict), ("listeners", list), ("exchange_types", list),
                        ("rates_mode", str)]:
        assert isinstance(o[field], kind), field
    assert o["product_name"] == "qgate"
    ports = {(l["protocol"], l["port"]) for l in o["listeners"]}
    assert ("amqp", fresh_broker.amqp_port) in ports
    assert ("memcache", fresh_broker.memcache_port) in ports
    assert ("management", fresh_broker.management_port) in ports
    for key in ["publish", "deliver_get", "ack", "get_empty", "redeliver"]:
        assert isinstance(o["message_stats"][key], int)
        assert o["message_stats"][key + "_details"] == {"rate": 0.0}
    assert set(o["object_totals"]) == {"channels", "connections", "consumers", "exchanges",
                                       "queues"}
    assert api.get("/api/healthchecks/node") == {"status": "ok"}
    assert api.get("/api/aliveness-test/%2F") == {"status": "ok"}
    assert api.get("/api/whoami") == {"name": "guest", "tags": ["administrator"]}
    for check in ["alarms", "local-alarms", "virtual-hosts", "node-is-quorum-critical",
                  "port-listener/%d" % fresh_broker.amqp_port, "protocol-listener/amqp091",
                  "protocol-listener/memcache"]:
        assert api.get("/api/health/checks/" + check)["status"] == "ok", check
    status, _, body = api.call("GET", "/api/health/checks/port-listener/1")
    assert (status, body["status"], body["reason"]) == (503, "failed", "No active listener")
    nodes = api.get("/api/nodes")
    assert [n["name"] for n in nodes] == [o["node"]]
    for field, kind in [("mem_used", int), ("mem_limit", int), ("mem_alarm", bool),
                        ("disk_free", int), ("fd_used", int), ("fd_total", int),
                        ("running", bool), ("uptime", int), ("sockets_used", int)]:
        assert isinstance(nodes[0][field], kind), field
    assert nodes[0]["mem_used"] > 0 and nodes[0]["running"] is True
    assert api.get("/api/nodes/" + q(o["node"]))["name"] == o["node"]
    assert api.call("GET", "/api/nodes/nope@nowhere")[0] == 404
    assert api.get("/api/cluster-name") == {"name": o["cluster_name"]}


@pytest.mark.timeout(60)
def test_rates_are_sampled(fresh_broker, api):
    name = uniq("rates")
    conn = fresh_broker.connect()
    ch = conn.channel()
    ch.queue_declare(name)
    # Publish steadily across two sampling intervals (5 s each).
    deadline = time.time() + 12
    rate = 0.0
    while time.time() < deadline:
        for _ in range(20):
            ch.basic_publish("", name, b"r")
        conn.process_data_events(time_limit=0.2)
        one = api.get("/api/queues/%2F/" + q(name))
        rate = one["message_stats"]["publish_details"]["rate"]
        if rate > 0:
            break
    assert rate > 0, one
    o = api.get("/api/overview?msg_rates_age=60&msg_rates_incr=5&lengths_age=60&lengths_incr=5")
    assert o["message_stats"]["publish_details"]["rate"] > 0
    samples = o["message_stats"]["publish_details"]["samples"]
    assert len(samples) >= 2 and {"sample", "timestamp"} == set(samples[0])
    assert samples[0]["timestamp"] > samples[-1]["timestamp"]
    assert o["queue_totals"]["messages_details"]["samples"]
    conn.close()


def test_stop_is_a_graceful_shutdown(fresh_broker, api):
    conn = fresh_broker.connect()
    mon = add_user(api, "watcher", "monitoring")
    assert mon.call("POST", "/api/qgate/stop", {})[0] == 401
    status, _, _ = api.call("POST", "/api/qgate/stop", {})
    assert status == 202
    # As SIGTERM: AMQP clients get 320, the process exits 0.
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        deadline = time.time() + 10
        while time.time() < deadline:
            conn.process_data_events(time_limit=0.2)
    assert e.value.reply_code == 320
    assert fresh_broker.proc.wait(timeout=15) == 0


# ---- rabbitmqadmin --------------------------------------------------------------------

def rabbitmqadmin_path():
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/"
                             "rabbitmq_management-*/priv/www/cli/rabbitmqadmin"))
    return found[-1] if found else None


def test_rabbitmqadmin_works_unchanged(fresh_broker):
    tool = rabbitmqadmin_path()
    if not tool:
        pytest.skip("rabbitmqadmin not found: apt-get install rabbitmq-server")

    def run(*args, user="guest", password="guest"):
        p = subprocess.run([sys.executable, tool, "-H", "127.0.0.1",
                            "-P", str(fresh_broker.management_port), "-u", user,
                            "-p", password, "-f", "raw_json"] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def ok(*args):
        rc, out, err = run(*args)
        assert rc == 0, (args, out, err)
        return out

    name = uniq("admin-q")
    assert "queue declared" in ok("declare", "queue", "name=" + name, "durable=true")
    assert "exchange declared" in ok("declare", "exchange", "name=admin.x", "type=fanout")
    assert "binding declared" in ok("declare", "binding", "source=admin.x",
                                    "destination=" + name, "routing_key=k")
    assert "Message published" in ok("publish", "exchange=admin.x", "routing_key=k",
                                     "payload=hello world")
    assert "Message published" in ok("publish", "routing_key=" + name, "payload=second")
    queues = json.loads(ok("list", "queues", "name", "messages", "durable"))
    assert {"name": name, "messages": 2, "durable": True} in queues
    got = json.loads(ok("get", "queue=" + name, "count=2", "ackmode=ack_requeue_true"))
    assert [m["payload"] for m in got] == ["hello world", "second"]
    got = json.loads(ok("get", "queue=" + name, "ackmode=ack_requeue_false"))
    assert [(m["payload"], m["redelivered"]) for m in got] == [("hello world", True)]
    for kind in ["exchanges", "bindings", "connections", "users", "vhosts", "permissions",
                 "consumers", "channels", "nodes"]:
        json.loads(ok("list", kind))
    assert "binding deleted" in ok("delete", "binding", "source=admin.x",
                                   "destination_type=queue", "destination=" + name,
                                   "properties_key=k")
    assert "queue deleted" in ok("delete", "queue", "name=" + name)
    assert "exchange deleted" in ok("delete", "exchange", "name=admin.x")
    assert name not in ok("list", "queues")
    rc, out, err = run("list", "queues", password="wrong")
    assert rc != 0 and "Access refused" in out + err


# ---- field by field against RabbitMQ's answers ------------------------------------------

FIELDS_FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "fixtures", "rabbitmq-management-fields.json")
# Maps whose keys are data, not field names.
OPAQUE = {"arguments", "client_properties", "cluster_state", "capabilities", "headers",
          "properties", "effective_policy_definition", "socket_opts", "cowboy_opts",
          "backing_queue_status", "garbage_collection", "sample_retention_policies"}
# qgate's own additions (documented in the README).
EXTRAS = {"/api/overview": {"metrics_prefix", "uptime"}}
# Answers that must have these fields (what rabbitmqadmin, ctl and the console read).
REQUIRED = {
    "/api/overview": ["management_version", "product_name", "node", "listeners",
                      "message_stats.publish", "message_stats.publish_details.rate",
                      "message_stats.deliver_get_details.rate", "message_stats.ack_details.rate",
                      "queue_totals.messages", "queue_totals.messages_details.rate",
                      "object_totals.queues", "object_totals.consumers"],
    "/api/queues/%2F/fields.q": ["name", "vhost", "durable", "auto_delete", "exclusive",
                                 "arguments", "state", "messages", "messages_ready",
                                 "messages_unacknowledged", "consumers",
                                 "messages_details.rate", "message_stats.publish_details.rate",
                                 "consumer_details[].consumer_tag"],
    "/api/connections": ["name", "protocol", "user", "vhost", "channels", "peer_host",
                         "peer_port", "recv_oct_details.rate", "connected_at"],
    "/api/channels": ["name", "number", "connection_details.name", "user", "vhost"],
    "/api/consumers": ["consumer_tag", "queue.name", "ack_required", "prefetch_count",
                       "channel_details.connection_name"],
    "/api/vhosts": ["name", "messages", "message_stats.publish"],
    "/api/nodes": ["name", "mem_used", "mem_limit", "mem_alarm", "fd_used", "disk_free"],
}


def field_types(v, prefix=""):
    out = {}
    if isinstance(v, dict):
        for k, x in v.items():
            out[prefix + k] = type(x).__name__
            if k in OPAQUE:
                continue
            if isinstance(x, dict):
                out.update(field_types(x, prefix + k + "."))
            elif isinstance(x, list) and x and isinstance(x[0], dict):
                out.update(field_types(x[0], prefix + k + "[]."))
    return out


def test_fields_are_rabbitmqs(fresh_broker, api):
    """Every field qgate answers exists in RabbitMQ 3.10.8's answer to the same request
    after the same traffic, with the same JSON type (recorded from a real node:
    tests/fixtures/rabbitmq-management-fields.json). Definitions have their own fixture,
    a real RabbitMQ export (tests/fixtures/rabbitmq-definitions.json)."""
    rabbit = json.load(open(FIELDS_FIXTURE))
    conn = fresh_broker.connect()
    ch = conn.channel()
    ch.queue_declare("fields.q")
    ch.queue_bind("fields.q", "amq.direct", "k")
    for _ in range(3):
        ch.basic_publish("", "fields.q", b"x")
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume("fields.q", lambda *a: None, consumer_tag="fields-ctag")
    conn.process_data_events(time_limit=0.5)
    problems = []
    for path, theirs in sorted(rabbit.items()):
        v = api.get(path)
        if isinstance(v, list):
            v = next((x for x in v if x.get("name") in ("fields.q", "amq.direct") or
                      x.get("destination") == "fields.q" and x.get("source") == "amq.direct"),
                     v[0] if v else {})
        ours = field_types(v)
        for key, kind in sorted(ours.items()):
            if key in EXTRAS.get(path, ()):
                continue
            if key not in theirs:
                problems.append("%s: %s is not a RabbitMQ field" % (path, key))
            elif theirs[key] != kind and {theirs[key], kind} != {"NoneType", kind}:
                problems.append("%s: %s is %s, RabbitMQ's is %s" % (path, key, kind, theirs[key]))
        for key in REQUIRED.get(path, ()):
            if key not in ours:
                problems.append("%s: %s missing" % (path, key))
    assert not problems, "\n".join(problems)
    conn.close()
