/* Login, routing (URL fragment: #/queues/%2F/tasks) and the periodic refresh. Every
 * tick reads /api/overview (the header, the overview charts' history) and then lets
 * the current view re-read what it shows. */
(function () {
  "use strict";

  var Q = window.Q;
  var $ = function (id) { return document.getElementById(id); };

  Q.state = {
    user: null,
    overview: null,
    vhosts: ["/"],
    rateHistory: new Q.TimeSeries(3),
    queuedHistory: new Q.TimeSeries(2),
  };

  var ROUTES = [
    [/^#?\/?$/, "overview", "overview"],
    [/^#\/connections$/, "connections", "connections"],
    [/^#\/channels$/, "channels", "channels"],
    [/^#\/exchanges$/, "exchanges", "exchanges"],
    [/^#\/queues$/, "queues", "queues"],
    [/^#\/queues\/([^/]+)\/([^/]+)$/, "queue", "queues"],
    [/^#\/admin$/, "admin", "admin"],
  ];

  var current = null; /* {view, name} */
  var timer = null;
  var ticking = null;
  var started = false;

  function status(text, kind) {
    var el = $("status");
    if (!text) { el.hidden = true; el.textContent = ""; return; }
    el.hidden = false;
    el.className = "status " + (kind || "error");
    el.textContent = text;
  }

  function isAdmin() { return (Q.state.user && Q.state.user.tags || []).indexOf("administrator") >= 0; }

  function showLogin(message) {
    stopTimer();
    if (current && current.view.destroy) current.view.destroy();
    current = null;
    started = false;
    Q.clear($("view"));
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("login-password").value = "";
    $("login-user").focus();
  }

  Q.api.onUnauthorized = function (reason) {
    Q.api.clearCredentials();
    showLogin(reason === "Login failed" || !reason ? "Login failed." : reason);
  };

  function normTags(tags) {
    if (Array.isArray(tags)) return tags;
    return String(tags || "").split(",").map(function (t) { return t.trim(); }).filter(Boolean);
  }

  function start() {
    return Q.api.get("/whoami").then(function (me) {
      Q.state.user = {name: me.name, tags: normTags(me.tags)};
      $("login").hidden = true;
      $("app").hidden = false;
      $("whoami").textContent = me.name;
      $("nav-admin").hidden = !isAdmin();
      started = true;
      route();
      schedule();
    });
  }

  function route() {
    if (!started) return;
    var hash = location.hash || "#/";
    var match = null;
    for (var i = 0; i < ROUTES.length && !match; i++) {
      var m = ROUTES[i][0].exec(hash);
      if (m) match = {name: ROUTES[i][1], nav: ROUTES[i][2], params: m.slice(1).map(decodeURIComponent)};
    }
    if (!match) { location.hash = "#/"; return; }
    if (match.name === "admin" && !isAdmin()) { location.hash = "#/"; return; }
    if (current && current.view.destroy) current.view.destroy();
    var view = Q.views[match.name](match.params);
    current = {view: view, name: match.name};
    Q.clear($("view")).appendChild(view.el);
    Array.prototype.forEach.call(document.querySelectorAll("#nav a"), function (a) {
      a.classList.toggle("active", a.getAttribute("data-nav") === match.nav);
    });
    status("");
    /* A tick already in flight serves the previous view: run one more for this one. */
    Q.app.refreshNow();
  }

  /* One refresh; overlapping ticks (slow broker, manual refresh) share one run. */
  function tick() {
    if (ticking) return ticking;
    var view = current && current.view;
    ticking = Promise.all([Q.api.get("/overview" + Q.SAMPLES_QUERY), Q.api.get("/vhosts").catch(function () { return null; })])
      .then(function (r) {
        var o = r[0];
        Q.state.overview = o;
        if (r[1]) Q.state.vhosts = r[1].map(function (v) { return v.name; }).sort();
        var now = Date.now() / 1000;
        var qt = o.queue_totals || {};
        var fromBroker = Q.historyFromSamples(o);
        if (fromBroker.rates) Q.state.rateHistory = fromBroker.rates;
        else Q.state.rateHistory.push(now, [Q.rate(o, "publish"), Q.deliverRate(o), Q.rate(o, "ack")]);
        if (fromBroker.queued) Q.state.queuedHistory = fromBroker.queued;
        else Q.state.queuedHistory.push(now, [qt.messages_ready || 0, qt.messages_unacknowledged || 0]);
        $("node-name").textContent = o.node || "";
        $("footer").textContent = (o.product_name || "qgate") + " " + (o.product_version || "") +
          " \u00b7 updated " + new Date().toLocaleTimeString();
        if (view && current && current.view === view && view.refresh) return view.refresh();
      })
      .then(function () { status(""); }, function (err) {
        if (!started) return;
        /* fetch() rejects with a TypeError when no HTTP answer came at all. */
        if (err instanceof TypeError) status("Cannot reach the broker (" + err.message + "); retrying.");
        else status(err && err.message ? err.message : String(err));
      })
      .then(function () { ticking = null; });
    return ticking;
  }

  function stopTimer() { if (timer) clearInterval(timer); timer = null; }

  function schedule() {
    stopTimer();
    var ms = parseInt($("refresh-interval").value, 10);
    if (ms > 0) timer = setInterval(tick, ms);
  }

  Q.app = {
    refreshNow: function () { return ticking ? ticking.then(tick) : tick(); },
  };

  document.addEventListener("DOMContentLoaded", function () {
    var saved = sessionStorage.getItem("qgate.console.refresh");
    if (saved) $("refresh-interval").value = saved;
    $("refresh-interval").addEventListener("change", function () {
      sessionStorage.setItem("qgate.console.refresh", $("refresh-interval").value);
      schedule();
    });
    $("login-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      $("login-error").textContent = "";
      $("login-submit").disabled = true;
      Q.api.setCredentials($("login-user").value, $("login-password").value);
      start().catch(function (err) {
        if (err && err.status !== 401) {
          Q.api.clearCredentials();
          showLogin("Cannot reach the broker: " + (err.message || err));
        }
      }).then(function () { $("login-submit").disabled = false; });
    });
    $("logout").addEventListener("click", function () {
      Q.api.clearCredentials();
      showLogin("");
    });
    window.addEventListener("hashchange", route);
    if (Q.api.hasCredentials()) {
      start().catch(function (err) {
        if (err && err.status !== 401) showLogin("Cannot reach the broker: " + (err.message || err));
      });
    } else {
      showLogin("");
    }
  });
})();
