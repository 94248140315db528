"""The web console in a real browser: Debian's chromium, headless, driven through
chromedriver (WebDriver) with selenium.

A person's path through the console: log in, find the queue this test declared (over
pika) with its message count, see the charts draw, publish a message from the queue
page and read it back over AMQP, get messages from the page, purge, see the AMQP and
memcache connections, and no JavaScript errors in the browser's console log. Then the
write paths: a user added, edited (password kept) and deleted, a vhost and a permission
set and cleared, an exchange, a queue and a binding made and removed, a connection
closed. A screenshot of each step is kept under test-artifacts/ (git-ignored).

Against qgate (default) each test has a broker of its own (conftest's
``fresh_broker``, management listener on port 0). ``QGATE_TEST_CONSOLE_URL`` (e.g. a
static server for the assets in front of RabbitMQ's management API) plus
``QGATE_TEST_AMQP_URL`` run the same steps against another broker. Skipped only when chromium or chromedriver is not installed.
"""

import os
import shutil
import time

import pika
import pytest

from helpers import uniq
from qgate_proc import Memcache

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ARTIFACTS = os.path.join(REPO, "test-artifacts")
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


@pytest.fixture
def target(fresh_broker):
    """(console base URL, pika parameters, memcache port or None)."""
    url = os.environ.get("QGATE_TEST_CONSOLE_URL")
    if url:
        if not fresh_broker.external:
            pytest.skip("QGATE_TEST_CONSOLE_URL needs QGATE_TEST_AMQP_URL")
        return url.rstrip("/"), fresh_broker.params(), None
    if fresh_broker.external:
        pytest.skip("an external broker needs QGATE_TEST_CONSOLE_URL for its console")
    return ("http://127.0.0.1:%d" % fresh_broker.management_port, fresh_broker.params(),
            fresh_broker.memcache_port)


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
    stale = os.path.join(ARTIFACTS, "console-failure.png")
    if os.path.exists(stale):
        os.remove(stale)  # a failure shot is only ever this run's
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

        # The charts draw the broker's own samples (one every 5 s): before the purge,
        # wait until a sample has seen the queued messages, so the "Ready" line checked
        # below has something above zero to draw however fast this test runs.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            _, o = api(base, "/overview?lengths_age=600&lengths_incr=5")
            seen = (o or {}).get("queue_totals", {}).get("messages_ready_details", {})
            if any(x.get("sample", 0) > 0 for x in seen.get("samples", [])):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("no overview sample saw the queued messages")

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
        # (The rates chart is drawn from the same samples; its line depends on when the
        # 5 s samples fall around this test's publishes, so only its canvas is checked.)
        assert d.find_elements(By.CSS_SELECTOR, "#chart-rates canvas")
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

        # Log out: the credentials are gone, also after a reload.
        d.find_element(By.ID, "logout").click()
        wait.until(EC.visibility_of_element_located((By.ID, "login-form")))
        assert d.execute_script("return sessionStorage.getItem('qgate.console.auth')") is None
        d.refresh()
        wait.until(EC.visibility_of_element_located((By.ID, "login-form")))
        assert not d.find_element(By.ID, "app").is_displayed()
    finally:
        if mc:
            mc.close()
        if conn.is_open:
            conn.close()


def api(base, path, user="guest", password="guest", method="GET", body=None):
    """(status, JSON or None) of one management API call, as any API client makes it."""
    import base64
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(base + "/api" + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    token = base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
    req.add_header("Authorization", "Basic " + token)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, None


def test_console_admin_exchanges_bindings_connections(target, browser):
    """Users (add, edit keeping the password, delete), vhosts, permissions, an exchange,
    a queue and a binding made and removed from the pages; a connection closed."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base, params, _ = target
    d = browser
    wait = WebDriverWait(d, WAIT)
    user, vhost, exchange, qname = uniq("carol"), uniq("v"), uniq("ex"), uniq("q")

    def text_of(css):
        return d.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css)

    def wait_text(css, want):
        try:
            wait.until(lambda _: (lambda t: t is not None and want(t))(text_of(css)))
        except Exception:
            shot(d, "failure")
            raise AssertionError("%s: got %r" % (css, text_of(css)))

    def fill(element_id, text):
        e = d.find_element(By.ID, element_id)
        e.clear()
        e.send_keys(text)

    def row_button(table, first_cell, label, confirm=False):
        """Clicks `label` in the row of `table` whose name cell reads first_cell (the
        table re-renders on refresh: retry on a stale element)."""
        xpath = ("//table[@id='%s']//tr[td[normalize-space()='%s']]//button[text()='%s']"
                 % (table, first_cell, label))
        for _ in range(20):
            try:
                d.find_element(By.XPATH, xpath).click()
                break
            except StaleElementReferenceException:
                time.sleep(0.1)
        if confirm:
            wait.until(EC.alert_is_present())
            d.switch_to.alert.accept()

    conn = pika.BlockingConnection(params)
    try:
        d.get(base + "/")
        fill("login-user", "guest")
        fill("login-password", "guest")
        d.find_element(By.ID, "login-submit").click()
        wait_text("#whoami", lambda t: t == "guest")

        # A user: add, then edit its tags with the password left empty (kept).
        d.find_element(By.CSS_SELECTOR, "a[data-nav=admin]").click()
        wait_text("#users tbody", lambda t: "guest" in t)
        fill("user-name", user)
        fill("user-password", "pw-1")
        fill("user-tags", "monitoring")
        d.find_element(By.ID, "user-submit").click()
        wait_text("#users-feedback", lambda t: t == "User %s saved." % user)
        wait_text("#users tbody", lambda t: user in t)
        assert api(base, "/whoami", user, "pw-1") == (200, {"name": user, "tags": ["monitoring"]})
        row_button("users", user, "Edit")
        assert d.find_element(By.ID, "user-name").get_attribute("value") == user
        fill("user-tags", "management")
        d.find_element(By.ID, "user-submit").click()
        wait_text("#users-feedback", lambda t: t == "User %s saved." % user)
        assert api(base, "/whoami", user, "pw-1") == (200, {"name": user, "tags": ["management"]})

        # A vhost and the user's permission on it; then clear, delete both.
        fill("vhost-name", vhost)
        d.find_element(By.ID, "vhost-submit").click()
        wait_text("#vhosts tbody", lambda t: vhost in t)
        assert api(base, "/vhosts/" + vhost)[0] == 200
        options_js = "return Array.from(document.querySelectorAll(arguments[0])).map(o => o.value)"
        wait.until(lambda _: user in d.execute_script(options_js, "#perm-user option"))
        wait.until(lambda _: vhost in d.execute_script(options_js, "#perm-vhost option"))
        d.execute_script("document.getElementById('perm-user').value = arguments[0];"
                         "document.getElementById('perm-vhost').value = arguments[1];", user, vhost)
        fill("perm-configure", "^c-.*")
        d.find_element(By.ID, "perm-submit").click()
        wait_text("#permissions tbody", lambda t: user in t)
        status, perm = api(base, "/permissions/%s/%s" % (vhost, user))
        assert status == 200 and perm["configure"] == "^c-.*" and perm["read"] == ".*", perm
        row_button("permissions", user, "Clear", confirm=True)
        wait_text("#permissions tbody", lambda t: user not in t)
        assert api(base, "/permissions/%s/%s" % (vhost, user))[0] == 404
        row_button("vhosts", vhost, "Delete", confirm=True)
        wait_text("#vhosts tbody", lambda t: vhost not in t)
        row_button("users", user, "Delete", confirm=True)
        wait_text("#users tbody", lambda t: user not in t)
        assert api(base, "/users/" + user)[0] == 404
        shot(d, "admin-edited")

        # An exchange and a queue from their pages, bound and unbound on the queue page.
        d.find_element(By.CSS_SELECTOR, "a[data-nav=exchanges]").click()
        d.find_element(By.CSS_SELECTOR, "#view details.section summary").click()
        fill("exchange-name", exchange)
        d.execute_script("document.getElementById('exchange-type').value = 'fanout'")
        d.find_element(By.CSS_SELECTOR, "#view form button[type=submit]").click()
        wait_text("#exchanges tbody", lambda t: exchange in t)
        assert api(base, "/exchanges/%2F/" + exchange)[1]["type"] == "fanout"
        d.find_element(By.CSS_SELECTOR, "a[data-nav=queues]").click()
        d.find_element(By.CSS_SELECTOR, "#view details.section summary").click()
        fill("queue-name", qname)
        d.find_element(By.ID, "queue-add").click()
        wait_text("#queues tbody", lambda t: qname in t)
        d.find_element(By.LINK_TEXT, qname).click()
        wait_text("#queue-total", lambda t: t == "0")
        fill("bind-exchange", exchange)
        d.find_element(By.ID, "bind-submit").click()
        wait_text("#queue-bindings tbody", lambda t: exchange in t)
        ch = conn.channel()
        ch.basic_publish(exchange, "", b"via the binding")
        wait_text("#queue-total", lambda t: t == "1")
        row_button("queue-bindings", exchange, "Unbind", confirm=True)
        wait_text("#queue-bindings tbody", lambda t: exchange not in t)
        assert [b for b in api(base, "/queues/%2F/" + qname + "/bindings")[1]
                if b["source"] == exchange] == []

        # Close the pika connection from the connections page: the broker ends it.
        d.find_element(By.CSS_SELECTOR, "a[data-nav=connections]").click()
        wait_text("#connections tbody", lambda t: "AMQP" in t)
        d.find_element(By.XPATH, "//table[@id='connections']//tr[td/span[contains(@class,"
                                 "'proto-amqp')]]//button[text()='Close']").click()
        wait.until(EC.alert_is_present())
        d.switch_to.alert.accept()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.2)
        assert closed.value.reply_code == 320
        wait_text("#connections tbody", lambda t: "AMQP" not in t)
        shot(d, "connections-closed")

        severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
    finally:
        if conn.is_open:
            conn.close()
