#!/usr/bin/env bash
# Prometheus end-to-end check, run by tests/run (and CI):
#   1. static checks of docker/: `promtool check config docker/prometheus.yml`,
#      `docker-compose config` on docker/compose.yml (when docker-compose is installed),
#      JSON validity of the Grafana dashboard;
#   2. starts qgate (QGATE_BIN, default target/debug/qgate) on loopback port 0 and runs
#      `promtool check metrics` on a scrape;
#   3. starts Debian's `prometheus` on a free loopback port with a temporary config
#      (scraping qgate every second) and data dir, publishes messages over memcache and
#      (when pika is installed) AMQP, then asks Prometheus's HTTP API for
#      qgate_queue_messages_ready{queue="..."} (exact values) and
#      rate(qgate_global_messages_received_total[30s]) (> 0), and evaluates every
#      PromQL expression of docker/grafana/dashboards/qgate.json (each must return data).
# Exits non-zero on any failure; takes about 15 s.
set -euo pipefail
cd "$(dirname "$0")/.."

QGATE_BIN=${QGATE_BIN:-target/debug/qgate}
PROMETHEUS=${PROMETHEUS:-prometheus}
PROMTOOL=${PROMTOOL:-promtool}
DEADLINE=${E2E_DEADLINE:-30}

fail() { echo "prometheus_e2e: FAIL: $*" >&2; exit 1; }
step() { echo "prometheus_e2e: $*"; }

[ -x "$QGATE_BIN" ] || fail "qgate binary not found at $QGATE_BIN (cargo build, or set QGATE_BIN)"
command -v "$PROMETHEUS" >/dev/null || fail "prometheus not installed (apt-get install prometheus)"
command -v "$PROMTOOL" >/dev/null || fail "promtool not installed (apt-get install prometheus)"
command -v python3 >/dev/null || fail "python3 not installed"

work=$(mktemp -d "${TMPDIR:-/tmp}/qgate-prom-e2e.XXXXXX")
qgate_pid=""
prom_pid=""
cleanup() {
  status=$?
  set +e
  for pid in "$prom_pid" "$qgate_pid"; do
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
    fi
  done
  if [ "$status" -ne 0 ]; then
    echo "---- qgate log"; tail -n 30 "$work/qgate.log" 2>/dev/null || true
    echo "---- prometheus log"; tail -n 30 "$work/prometheus.log" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT INT TERM

# ---- 1. static checks -------------------------------------------------------------
step "promtool check config docker/prometheus.yml"
"$PROMTOOL" check config docker/prometheus.yml >/dev/null || fail "docker/prometheus.yml"
if command -v docker-compose >/dev/null; then
  step "docker-compose config (docker/compose.yml)"
  docker-compose -f docker/compose.yml config -q || fail "docker/compose.yml"
else
  step "docker-compose not installed: skipping the compose file check"
fi
python3 -m json.tool docker/grafana/dashboards/qgate.json >/dev/null \
  || fail "docker/grafana/dashboards/qgate.json is not valid JSON"

# ---- helpers (python3 standard library only) --------------------------------------
http_get() { # url -> body on stdout; non-zero on error
  python3 - "$1" <<'EOF'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
EOF
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# PromQL instant query -> the first sample's value, or empty when there is none.
prom_query() {
  python3 - "$prom_url" "$1" <<'EOF'
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
try:
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
except Exception:
    sys.exit(0)
result = body.get("data", {}).get("result", [])
if body.get("status") == "success" and result:
    print(result[0]["value"][1])
EOF
}

# Polls a query until its value satisfies a python expression on `v` (a float).
wait_for() { # query expr description
  local end=$((SECONDS + DEADLINE)) v
  while :; do
    v=$(prom_query "$1")
    if [ -n "$v" ] && python3 -c "import sys; v=float(sys.argv[1]); sys.exit(0 if ($2) else 1)" "$v"; then
      step "ok: $3 ($1 = $v)"
      return 0
    fi
    [ "$SECONDS" -ge "$end" ] && fail "$3: $1 = '${v:-no data}' after ${DEADLINE}s"
    sleep 0.5
  done
}

# ---- 2. qgate ---------------------------------------------------------------------
step "starting qgate"
"$QGATE_BIN" serve --amqp-listen 127.0.0.1:0 --memcache-listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 --management-listen 127.0.0.1:0 --data-dir "$work/data" --fsync never --log info \
  >"$work/qgate.log" 2>&1 &
qgate_pid=$!
addr() { sed -n "s/.*listening protocol=$1 addr=\([0-9.]*:[0-9]*\).*/\1/p" "$work/qgate.log" | head -n1; }
end=$((SECONDS + 10))
until [ -n "$(addr http)" ]; do
  kill -0 "$qgate_pid" 2>/dev/null || fail "qgate exited at start-up"
  [ "$SECONDS" -ge "$end" ] && fail "qgate did not log its listeners within 10 s"
  sleep 0.1
done
amqp=$(addr amqp); memcache=$(addr memcache); http=$(addr http)
step "qgate: amqp=$amqp memcache=$memcache http=$http"
[ "$(http_get "http://$http/healthz")" = "ok" ] || fail "/healthz"

step "promtool check metrics on a scrape"
http_get "http://$http/metrics" >"$work/scrape.txt" || fail "GET /metrics"
"$PROMTOOL" check metrics <"$work/scrape.txt" || fail "promtool check metrics"

# ---- 3. prometheus ----------------------------------------------------------------
prom_port=$(free_port)
prom_url="http://127.0.0.1:$prom_port"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: qgate
    static_configs:
      - targets: ["$http"]
EOF
step "starting prometheus on 127.0.0.1:$prom_port"
"$PROMETHEUS" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn \
  >"$work/prometheus.log" 2>&1 &
prom_pid=$!
wait_for 'up{job="qgate"}' 'v == 1' "prometheus scrapes qgate"

MC_N=20
AMQP_N=15
step "publishing $MC_N messages over memcache (and $AMQP_N over AMQP if pika is installed)"
python3 - "$memcache" "$amqp" "$MC_N" "$AMQP_N" <<'EOF'
import socket, sys, time
mc_host, mc_port = sys.argv[1].rsplit(":", 1)
amqp_host, amqp_port = sys.argv[2].rsplit(":", 1)
mc_n, amqp_n = int(sys.argv[3]), int(sys.argv[4])

def memcache_set(sock, n):
    sock.sendall(b"set e2e_mc 0 0 7\r\nmessage\r\n")
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(64)
        if not chunk:
            sys.exit("memcache connection closed")
        buf += chunk
    if buf != b"STORED\r\n":
        sys.exit(f"memcache set {n}: {buf!r}")

try:
    import pika
except ImportError:
    pika = None
    print("prometheus_e2e: pika not installed: AMQP publishing skipped")

mc = socket.create_connection((mc_host, int(mc_port)), timeout=5)
channel = None
if pika is not None:
    conn = pika.BlockingConnection(pika.ConnectionParameters(host=amqp_host, port=int(amqp_port)))
    channel = conn.channel()
    channel.queue_declare(queue="e2e_amqp")
# Spread over ~3 s so that rate() sees several increasing samples.
for i in range(max(mc_n, amqp_n)):
    if i < mc_n:
        memcache_set(mc, i)
    if channel is not None and i < amqp_n:
        channel.basic_publish(exchange="", routing_key="e2e_amqp", body=b"message")
    time.sleep(3.0 / max(mc_n, amqp_n))
if channel is not None:
    conn.close()
    print("prometheus_e2e: AMQP published")
mc.sendall(b"quit\r\n")
mc.close()
EOF

wait_for "qgate_queue_messages_ready{queue=\"e2e_mc\"}" "v == $MC_N" "memcache queue depth"
if python3 -c 'import pika' 2>/dev/null; then
  wait_for "qgate_queue_messages_ready{queue=\"e2e_amqp\",vhost=\"/\"}" "v == $AMQP_N" "AMQP queue depth"
  total=$((MC_N + AMQP_N))
else
  total=$MC_N
fi
wait_for 'qgate_global_messages_received_total' "v == $total" "messages received"
wait_for 'rate(qgate_global_messages_received_total[30s])' 'v > 0' "publish rate"
wait_for 'sum(rate(qgate_memcache_commands_total{command="set"}[30s]))' 'v > 0' "memcache set rate"
step "evaluating every PromQL expression of docker/grafana/dashboards/qgate.json"
python3 - "$prom_url" docker/grafana/dashboards/qgate.json <<'EOF'
import json, sys, urllib.parse, urllib.request
prom, path = sys.argv[1], sys.argv[2]
exprs = []
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                exprs.append(x)
            else:
                walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
walk(json.load(open(path)))
failed = []
for e in exprs:
    q = (e.replace("$instance", ".*").replace("$__rate_interval", "30s")
          .replace("$__range", "1m").replace("$__interval", "5s"))
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
    except Exception as err:
        failed.append(f"{q}: {err}")
        continue
    if body.get("status") != "success":
        failed.append(f"{q}: {body.get('error')}")
    elif not body["data"]["result"]:
        failed.append(f"{q}: no data")
if failed:
    sys.exit("dashboard queries failing:\n  " + "\n  ".join(failed))
print(f"prometheus_e2e: ok: {len(exprs)} dashboard queries return data")
EOF
step "all checks passed"
