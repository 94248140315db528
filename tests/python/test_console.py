"""The web console in a real browser: Debian's chromium, headless, driven through
chromedriver (WebDriver) with selenium.

A person's path through the console: log in, find the queue this test declared (over
pika) with its message count, see the charts draw, publish a message from the queue
page and read it back over AMQP, get messages from the page, purge, see the AMQP and
memcache connections, and no JavaScript errors in the browser's console log. A
screenshot of each step is kept under test-artifacts/ (git-ignored).

Against qgate (default) a broker of its own is started with
``--management-listen 127.0.0.1:0``. ``QGATE_TEST_CONSOLE_URL`` (e.g. a static server in
front of RabbitMQ's management API) plus ``QGATE_TEST_AMQP_URL`` run the same steps
against another broker. Skipped only when chromium or chromedriver is not installed.
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

import pika
import pytest

from helpers import uniq
from qgate_proc import Memcache

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ARTIFACTS = os.path.join(REPO, "test-artifacts")
LISTEN_RE = re.compile(r"listening protocol=(\w+) addr=([\d.]+):(\d+)")
WAIT = 15  # seconds for one thing to appear in the page (the console refreshes every 5 s)

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p), None)
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="chromium and chromedriver not installed "
                              "(apt-get install chromium chromium-driver)"),
    pytest.mark.timeout(120),
]


class ConsoleBroker:
    """qgate with every listener on port 0, including the management listener."""

    def __init__(self):
        self.data_dir = tempfile.mkdtemp(prefix="qgate-console-")
        self.lines = []
        self.proc = None
        self.addrs = {}

    def start(self):
        binary = os.environ.get("QGATE_BIN") or os.path.join(REPO, "target", "debug", "qgate")
        cmd = [binary, "serve", "--amqp-listen", "127.0.0.1:0",
               "--memcache-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
               "--management-listen", "127.0.0.1:0",
               "--data-dir", self.data_dir, "--fsync", "never", "--log", "info"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, NO_COLOR="1"))
        lines = queue.Queue()

        def drain():
            for raw in iter(self.proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace")
                self.lines.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 30
        while not {"amqp", "memcache", "management"} <= set(self.addrs):
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("qgate did not start its listeners:\n" + "".join(self.lines))
            m = LISTEN_RE.search(line)
            if m:
                self.addrs[m.group(1)] = int(m.group(3))
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture
def target():
    """(console base URL, pika parameters, memcache port or None)."""
    url = os.environ.get("QGATE_TEST_CONSOLE_URL")
    if url:
        amqp = os.environ.get("QGATE_TEST_AMQP_URL")
        if not amqp:
            pytest.skip("QGATE_TEST_CONSOLE_URL needs QGATE_TEST_AMQP_URL")
        yield url.rstrip("/"), pika.URLParameters(amqp), None
        return
    b = ConsoleBroker().start()
    try:
        params = pika.ConnectionParameters("127.0.0.1", b.addrs["amqp"],
                                           credentials=pika.PlainCredentials("guest", "guest"))
        yield "http://127.0.0.1:%d" % b.addrs["management"], params, b.addrs["memcache"]
    finally:
        b.stop()
        if b.proc.returncode not in (0, None):
            sys.stderr.write("".join(b.lines[-60:]))


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, max(900, min(int(height), 4000)))
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(os.path.join(ARTIFACTS, "console-%s.png" % name))
    driver.set_window_size(1280, 900)


# How many pixels of a canvas are (nearly) the given colour: a chart's series drew.
COLOUR_PIXELS_JS = """
const [sel, r, g, b] = arguments;
const c = document.querySelector(sel);
if (!c || !c.width) return 0;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < d.length; i += 4)
  if (d[i + 3] > 200 && Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 40) n++;
return n;
"""


def test_console_end_to_end(target, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base, params, mc_port = target
    d = browser
    wait = WebDriverWait(d, WAIT)

    # The page re-renders its tables on every refresh, so read text in one script call
    # (no element handle that a refresh could make stale).
    def text_of(css):
        return d.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css)

    def wait_text(css, want):
        try:
            wait.until(lambda _: (lambda t: t is not None and want(t))(text_of(css)))
        except Exception:
            shot(d, "failure")
            raise AssertionError("%s: got %r" % (css, text_of(css)))

    qname = uniq("console")
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(qname)
    for i in range(3):
        ch.basic_publish("", qname, b"m%d" % i)
    mc = Memcache(mc_port) if mc_port else None
    try:
        # Unauthenticated: the login page; wrong password: refused, still the login page.
        d.get(base + "/")
        wait.until(EC.visibility_of_element_located((By.ID, "login-form")))
        shot(d, "login")
        d.find_element(By.ID, "login-user").send_keys("guest")
        d.find_element(By.ID, "login-password").send_keys("wrong")
        d.find_element(By.ID, "login-submit").click()
        wait_text("#login-error", lambda t: "failed" in t.lower())
        assert not d.find_element(By.ID, "login-form").get_attribute("hidden")
        refused_logs = d.get_log("browser")  # the refused login's 401, expected

        d.find_element(By.ID, "login-password").clear()
        d.find_element(By.ID, "login-password").send_keys("guest")
        d.find_element(By.ID, "login-submit").click()
        wait_text("#whoami", lambda t: t == "guest")
        wait_text("#total-messages .tile-value", lambda t: int(t.replace(",", "")) >= 3)
        overview_listeners = text_of("#listeners")
        assert "amqp" in overview_listeners
        if mc_port:
            assert "memcache" in overview_listeners, overview_listeners

        # The queues table: filter down to our queue, see its counts.
        d.find_element(By.CSS_SELECTOR, "a[data-nav=queues]").click()
        d.find_element(By.ID, "queues-filter").send_keys(qname)
        row = 'tr[data-queue="%s"]' % qname
        cells_js = ("return Array.from(document.querySelectorAll(arguments[0]))"
                    ".map(td => td.innerText);")
        # vhost, name, features, state, ready, unacked, total, ...
        want = ["/", qname, "", "running", "3", "0", "3"]
        try:
            wait.until(lambda _: d.execute_script(cells_js, row + " td")[:7] == want)
        except Exception:
            shot(d, "failure")
            raise AssertionError(d.execute_script(cells_js, row + " td"))
        assert d.execute_script("return document.querySelectorAll('#queues tbody tr').length") == 1
        shot(d, "queues")

        # Sorting: clicking "Total" twice orders by it ascending.
        d.find_element(By.ID, "queues-filter").clear()
        th = d.find_element(By.CSS_SELECTOR, '#queues th[data-key="messages"]')
        th.click()
        assert "sorted-desc" in th.get_attribute("class")
        th.click()
        assert "sorted-asc" in th.get_attribute("class")

        # The queue page.
        d.find_element(By.LINK_TEXT, qname).click()
        wait_text("#queue-total", lambda t: t == "3")
        payload = "hello from the console " + qname
        d.find_element(By.ID, "publish-payload").send_keys(payload)
        d.find_element(By.ID, "publish-submit").click()
        wait_text("#publish-result", lambda t: t == "Message published.")
        wait_text("#queue-total", lambda t: t == "4")

        # ... and the message is there over AMQP, after the three pika ones.
        got = []
        for _ in range(4):
            method, props, body = ch.basic_get(qname, auto_ack=False)
            assert method is not None
            got.append(body)
        assert got == [b"m0", b"m1", b"m2", payload.encode()], got
        ch.basic_nack(multiple=True, requeue=True, delivery_tag=method.delivery_tag)

        # Get messages from the page (requeued: the count stays).
        count = d.find_element(By.ID, "get-count")
        count.clear()
        count.send_keys("4")
        d.find_element(By.ID, "get-submit").click()
        wait_text("#get-feedback", lambda t: t == "4 messages received.")
        assert payload in text_of("#get-result")
        wait_text("#queue-total", lambda t: t == "4")
        shot(d, "queue")

        # Purge (with the confirmation dialog).
        d.find_element(By.ID, "purge").click()
        wait.until(EC.alert_is_present())
        d.switch_to.alert.accept()
        wait_text("#queue-danger-feedback", lambda t: t == "Queue purged.")
        wait_text("#queue-total", lambda t: t == "0")
        assert ch.queue_declare(qname, passive=True).method.message_count == 0

        # Connections: ours, with its protocol (and the memcache one against qgate).
        d.find_element(By.CSS_SELECTOR, "a[data-nav=connections]").click()
        wait_text("#connections tbody", lambda t: "AMQP" in t)
        if mc:
            wait_text("#connections tbody", lambda t: "memcache" in t.lower())
        shot(d, "connections")

        # Back on the overview the charts have several samples and draw their series:
        # the "Ready" line of queued messages and the "Published" line of rates.
        d.find_element(By.CSS_SELECTOR, "a[data-nav=overview]").click()
        wait.until(lambda _: d.execute_script(COLOUR_PIXELS_JS, "#chart-queued canvas",
                                              0xd4, 0xac, 0x0d) > 50)
        wait.until(lambda _: d.execute_script(COLOUR_PIXELS_JS, "#chart-rates canvas",
                                              0xe6, 0x7e, 0x22) > 50)
        shot(d, "overview")

        # The admin pages load their three tables.
        d.find_element(By.CSS_SELECTOR, "a[data-nav=admin]").click()
        wait_text("#users tbody", lambda t: "guest" in t)
        wait_text("#vhosts tbody", lambda t: "/" in t)
        wait_text("#permissions tbody", lambda t: "guest" in t)
        shot(d, "admin")

        # Deleting the queue from its page returns to the list, where it is gone.
        d.get(base + "/#/queues/%2F/" + qname)
        wait_text("#queue-total", lambda t: t == "0")
        d.find_element(By.ID, "delete-queue").click()
        wait.until(EC.alert_is_present())
        d.switch_to.alert.accept()
        wait.until(lambda _: d.current_url.endswith("#/queues"))
        wait_text("#queues tbody", lambda t: qname not in t)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_declare(qname, passive=True)

        # No JavaScript errors anywhere (the one refused login aside).
        severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
        assert all("401" in e["message"] for e in refused_logs
                   if e["level"] == "SEVERE"), refused_logs
    finally:
        if mc:
            mc.close()
        if conn.is_open:
            conn.close()
