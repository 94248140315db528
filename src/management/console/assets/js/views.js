/* The pages. Each view is a function(params) returning {el, refresh, destroy}: el is
 * built once (forms keep what the user typed), refresh() re-reads the API and updates
 * the tables and charts in place, destroy() releases charts when the user navigates. */
(function () {
"use strict";

var Q = window.Q;
Q.views = {};

var h = Q.h, fmt = Q.fmt, api = Q.api, seg = Q.api.seg.bind(Q.api);

/* ---------------------------------------------------------------- shared pieces */

function page(title) {
  var el = h("div", {class: "page"});
  if (title) el.appendChild(h("h2", null, title));
  return el;
}

function queueHref(vhost, name) { return "#/queues/" + seg(vhost) + "/" + seg(name); }

function queueLink(q) {
  return h("a", {href: queueHref(q.vhost, q.name), class: "mono"}, q.name);
}

/* refresh() of a list page with an add form: re-reads the list into its table and
 * keeps the form's vhost choices current. */
function listRefresh(path, table, vh) {
  return function () {
    syncVhostSelect(vh);
    return api.get(path).then(function (rows) { table.update(rows); });
  };
}

/* A numeric table column of a per-second rate: sorted by the rate, shown formatted. */
function rateColumn(key, title, rate) {
  return {key: key, title: title, num: true, value: rate,
          cell: function (row) { return fmt.rate(rate(row)); }};
}

/* The rate of one message_stats field of a row. */
function statRate(stat) {
  return function (row) { return Q.rate(row, stat); };
}

/* The publish, deliver / get and ack rate columns that channels and queues share. */
function flowColumns(publishKey, publishTitle) {
  return [
    rateColumn(publishKey, publishTitle, statRate("publish")),
    rateColumn("deliver", "Deliver / get", Q.deliverRate),
    rateColumn("ack", "Ack", statRate("ack")),
  ];
}

/* A status line under a form: ok(text) / fail(error). */
function feedback(id) {
  var el = h("p", {class: "feedback", id: id, role: "status"});
  return {
    el: el,
    ok: function (text) { el.className = "feedback ok"; el.textContent = text; },
    fail: function (err) {
      el.className = "feedback error";
      el.textContent = err && err.message ? err.message : String(err);
    },
    clear: function () { el.className = "feedback"; el.textContent = ""; },
  };
}

/* Runs an API action from a form: disables the button while in flight, reports the
 * outcome and refreshes the page on success. */
function action(button, fb, fn, then) {
  button.disabled = true;
  fb.clear();
  return Promise.resolve().then(fn).then(function (res) {
    if (then) then(res);
    Q.app.refreshNow();
  }, function (err) {
    fb.fail(err);
  }).then(function () { button.disabled = false; });
}

function vhostSelect(id, selected) {
  var s = Q.select({id: id}, Q.state.vhosts.length ? Q.state.vhosts : ["/"], selected || "/");
  return s;
}

/* Refill a vhost <select> when the list of vhosts changes, keeping the choice. */
function syncVhostSelect(s) {
  var names = Q.state.vhosts;
  var have = Array.prototype.map.call(s.options, function (o) { return o.value; });
  if (have.join("\n") === names.join("\n")) return;
  var cur = s.value;
  Q.clear(s);
  names.forEach(function (n) { s.appendChild(h("option", {value: n, selected: n === cur}, n)); });
}

function confirmThen(text, fn) { if (window.confirm(text)) fn(); }

function deleteButton(label, question, fn, fb) {
  var b = h("button", {type: "button", class: "small danger", text: label});
  b.addEventListener("click", function () {
    confirmThen(question, function () {
      action(b, fb, fn);
    });
  });
  return b;
}

function features(o) {
  var f = [];
  if (o.durable) f.push(h("abbr", {class: "tag", title: "durable"}, "D"));
  if (o.auto_delete) f.push(h("abbr", {class: "tag", title: "auto-delete"}, "AD"));
  if (o.exclusive) f.push(h("abbr", {class: "tag", title: "exclusive"}, "Excl"));
  if (o.internal) f.push(h("abbr", {class: "tag", title: "internal"}, "I"));
  if (o.arguments && Object.keys(o.arguments).length) {
    f.push(h("abbr", {class: "tag args", title: JSON.stringify(o.arguments)}, "Args"));
  }
  return f;
}

function stateCell(state) {
  var s = state || "running";
  return h("span", {class: "state state-" + s.replace(/[^a-z]/g, "")}, s);
}

function kv(rows) {
  return h("table", {class: "kv"}, h("tbody", null, rows.map(function (r) {
    return h("tr", null, h("th", null, r[0]), h("td", {class: r[2] || null}, r[1]));
  })));
}

/* ---------------------------------------------------------------- overview */

Q.views.overview = function () {
  var el = page("Overview");
  var totals = h("div", {class: "tiles", id: "overview-totals"});
  var ratesBox = h("div", {class: "chart", id: "chart-rates"});
  var queuedBox = h("div", {class: "chart", id: "chart-queued"});
  el.appendChild(totals);
  el.appendChild(h("div", {class: "charts"},
    h("div", {class: "card"}, h("h3", null, "Message rates"), ratesBox),
    h("div", {class: "card"}, h("h3", null, "Queued messages"), queuedBox)));
  var listeners = new Q.Table([
    {key: "protocol", title: "Protocol", cell: function (l) { return h("b", null, l.protocol); }},
    {key: "ip_address", title: "Bound to", cell: function (l) { return h("span", {class: "mono"}, l.ip_address); }},
    {key: "port", title: "Port", num: true, cell: function (l) { return String(l.port); }},
  ], {id: "listeners", sortKey: "port",
      empty: "Listeners are shown to users tagged monitoring or administrator."});
  var node = h("div", {id: "node-info"});
  el.appendChild(h("div", {class: "columns"},
    Q.section("Listeners", listeners.el), Q.section("Node", node)));

  var rates = new Q.Chart(ratesBox, Q.RATE_SERIES, {valueFmt: Q.rateFmt});
  var queued = new Q.Chart(queuedBox, Q.QUEUED_SERIES, {integer: true});

  function tile(label, value, id) {
    return h("div", {class: "tile", id: id}, h("span", {class: "tile-value"}, fmt.num(value || 0)),
             h("span", {class: "tile-label"}, label));
  }

  return {
    el: el,
    refresh: function () {
      var o = Q.state.overview;
      if (!o) return;
      var ot = o.object_totals || {}, qt = o.queue_totals || {};
      Q.clear(totals);
      Q.append(totals, [
        tile("Connections", ot.connections), tile("Channels", ot.channels),
        tile("Exchanges", ot.exchanges), tile("Queues", ot.queues),
        tile("Consumers", ot.consumers),
        tile("Ready", qt.messages_ready, "total-ready"),
        tile("Unacked", qt.messages_unacknowledged, "total-unacked"),
        tile("Total", qt.messages, "total-messages"),
      ]);
      rates.setData(Q.state.rateHistory);
      queued.setData(Q.state.queuedHistory);
      listeners.update(o.listeners || []);
      Q.clear(node).appendChild(kv([
        ["Product", (o.product_name || "") + " " + (o.product_version || "")],
        ["Node", o.node || "", "mono"],
        ["Cluster", o.cluster_name || ""],
        ["Management", o.management_version || ""],
      ]));
    },
    destroy: function () { rates.destroy(); queued.destroy(); },
  };
};

/* ---------------------------------------------------------------- connections */

Q.views.connections = function () {
  var el = page("Connections");
  var fb = feedback("connections-feedback");
  var table = new Q.Table([
    {key: "name", title: "Name", cell: function (c) { return h("span", {class: "mono"}, c.name); }},
    {key: "protocol", title: "Protocol", cell: function (c) {
      return h("span", {class: "proto proto-" + (/memcache/i.test(c.protocol) ? "memcache" : "amqp")}, c.protocol || "");
    }},
    {key: "user", title: "User"},
    {key: "vhost", title: "Virtual host"},
    {key: "state", title: "State", cell: function (c) { return stateCell(c.state); }},
    {key: "channels", title: "Channels", num: true},
    {key: "recv", title: "From client", num: true, value: function (c) { return rateOf(c, "recv_oct"); },
     cell: function (c) { return fmt.bytes(rateOf(c, "recv_oct")) + "/s"; }},
    {key: "send", title: "To client", num: true, value: function (c) { return rateOf(c, "send_oct"); },
     cell: function (c) { return fmt.bytes(rateOf(c, "send_oct")) + "/s"; }},
    {key: "connected_at", title: "Connected", value: function (c) { return c.connected_at || 0; },
     cell: function (c) { return fmt.time(c.connected_at); }},
    {key: "close", title: "", sortable: false, cell: function (c) {
      return deleteButton("Close", "Close connection " + c.name + "?", function () {
        return api.del("/connections/" + seg(c.name), {"X-Reason": "Closed via the qgate console"});
      }, fb);
    }},
  ], {id: "connections", filter: function (c) { return [c.name, c.protocol, c.user, c.vhost].join(" "); },
      empty: "No connections."});
  el.appendChild(fb.el);
  el.appendChild(table.el);
  return {
    el: el,
    refresh: function () { return api.get("/connections").then(function (rows) { table.update(rows); }); },
  };
};

function rateOf(obj, key) {
  var d = obj[key + "_details"];
  return d && typeof d.rate === "number" ? d.rate : 0;
}

/* ---------------------------------------------------------------- channels */

Q.views.channels = function () {
  var el = page("Channels");
  var table = new Q.Table([
    {key: "name", title: "Channel", cell: function (c) { return h("span", {class: "mono"}, c.name); }},
    {key: "user", title: "User"},
    {key: "vhost", title: "Virtual host"},
    {key: "mode", title: "Mode", value: function (c) { return (c.confirm ? "confirm " : "") + (c.transactional ? "tx" : ""); }},
    {key: "state", title: "State", cell: function (c) { return stateCell(c.state); }},
    {key: "prefetch_count", title: "Prefetch", num: true},
    {key: "messages_unacknowledged", title: "Unacked", num: true},
    {key: "consumer_count", title: "Consumers", num: true},
  ].concat(flowColumns("publish", "Publish")), {id: "channels", filter: function (c) { return [c.name, c.user, c.vhost].join(" "); },
      empty: "No channels."});
  el.appendChild(table.el);
  return {
    el: el,
    refresh: function () { return api.get("/channels").then(function (rows) { table.update(rows); }); },
  };
};

/* ---------------------------------------------------------------- exchanges */

Q.views.exchanges = function () {
  var el = page("Exchanges");
  var fb = feedback("exchanges-feedback");
  var table = new Q.Table([
    {key: "vhost", title: "Virtual host"},
    {key: "name", title: "Name", value: function (e) { return e.name || "(AMQP default)"; },
     cell: function (e) { return h("span", {class: "mono"}, e.name || "(AMQP default)"); }},
    {key: "type", title: "Type"},
    {key: "features", title: "Features", sortable: false, cell: features},
    rateColumn("in", "Message rate in", statRate("publish_in")),
    rateColumn("out", "Message rate out", statRate("publish_out")),
    {key: "del", title: "", sortable: false, cell: function (e) {
      if (!e.name || e.name.indexOf("amq.") === 0) return "";
      return deleteButton("Delete", "Delete exchange " + e.name + "?", function () {
        return api.del("/exchanges/" + seg(e.vhost) + "/" + seg(e.name));
      }, fb);
    }},
  ], {id: "exchanges", sortKey: "name",
      filter: function (e) { return [e.vhost, e.name, e.type].join(" "); }});
  el.appendChild(fb.el);
  el.appendChild(table.el);

  var vh = vhostSelect("exchange-vhost");
  var name = h("input", {id: "exchange-name", required: true});
  var type = Q.select({id: "exchange-type"}, ["direct", "fanout", "topic", "headers"], "direct");
  var durable = Q.select({id: "exchange-durable"}, [["true", "Durable"], ["false", "Transient"]], "true");
  var autoDel = Q.select({id: "exchange-autodelete"}, [["false", "No"], ["true", "Yes"]], "false");
  var internal = Q.select({id: "exchange-internal"}, [["false", "No"], ["true", "Yes"]], "false");
  var args = h("textarea", {id: "exchange-args", rows: 2, placeholder: "alternate-exchange=my-ae"});
  var addFb = feedback("exchange-add-feedback");
  var add = h("button", {type: "submit", text: "Add exchange"});
  var form = h("form", {class: "form"},
    Q.field("Virtual host", vh), Q.field("Name", name), Q.field("Type", type),
    Q.field("Durability", durable), Q.field("Auto delete", autoDel), Q.field("Internal", internal),
    Q.field("Arguments", args, "one key=value a line"), h("div", {class: "form-actions"}, add), addFb.el);
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    action(add, addFb, function () {
      return api.put("/exchanges/" + seg(vh.value) + "/" + seg(name.value), {
        type: type.value, durable: durable.value === "true", auto_delete: autoDel.value === "true",
        internal: internal.value === "true", arguments: Q.parseKeyValues(args.value),
      });
    }, function () { addFb.ok("Exchange " + name.value + " declared."); name.value = ""; });
  });
  el.appendChild(Q.section("Add a new exchange", form, {closed: true}));
  return {el: el, refresh: listRefresh("/exchanges", table, vh)};
};

/* ---------------------------------------------------------------- queues */

Q.views.queues = function () {
  var el = page("Queues");
  var table = new Q.Table([
    {key: "vhost", title: "Virtual host"},
    {key: "name", title: "Name", cell: queueLink},
    {key: "features", title: "Features", sortable: false, cell: features},
    {key: "state", title: "State", cell: function (q) { return stateCell(q.state); }},
    {key: "messages_ready", title: "Ready", num: true},
    {key: "messages_unacknowledged", title: "Unacked", num: true},
    {key: "messages", title: "Total", num: true},
    {key: "consumers", title: "Consumers", num: true},
  ].concat(flowColumns("incoming", "Incoming")), {id: "queues", sortKey: "name",
      filter: function (q) { return q.vhost + " " + q.name; },
      rowAttrs: function (q) { return {"data-queue": q.name, "data-vhost": q.vhost}; },
      empty: "No queues."});
  el.appendChild(table.el);

  var vh = vhostSelect("queue-vhost");
  var name = h("input", {id: "queue-name", required: true});
  var durable = Q.select({id: "queue-durable"}, [["true", "Durable"], ["false", "Transient"]], "true");
  var autoDel = Q.select({id: "queue-autodelete"}, [["false", "No"], ["true", "Yes"]], "false");
  var args = h("textarea", {id: "queue-args", rows: 2, placeholder: "x-message-ttl=60000\nx-max-length=1000"});
  var addFb = feedback("queue-add-feedback");
  var add = h("button", {type: "submit", text: "Add queue", id: "queue-add"});
  var form = h("form", {class: "form"},
    Q.field("Virtual host", vh), Q.field("Name", name), Q.field("Durability", durable),
    Q.field("Auto delete", autoDel),
    Q.field("Arguments", args, "one key=value a line: x-message-ttl, x-expires, x-max-length, " +
            "x-dead-letter-exchange, x-max-priority ..."),
    h("div", {class: "form-actions"}, add), addFb.el);
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    action(add, addFb, function () {
      return api.put("/queues/" + seg(vh.value) + "/" + seg(name.value), {
        durable: durable.value === "true", auto_delete: autoDel.value === "true",
        arguments: Q.parseKeyValues(args.value),
      });
    }, function () { addFb.ok("Queue " + name.value + " declared."); name.value = ""; });
  });
  el.appendChild(Q.section("Add a new queue", form, {closed: true}));
  return {el: el, refresh: listRefresh("/queues", table, vh)};
};

/* ---------------------------------------------------------------- one queue */

Q.views.queue = function (params) {
  var vhost = params[0], name = params[1];
  var base = "/queues/" + seg(vhost) + "/" + seg(name);
  var el = page(null);
  el.appendChild(h("h2", null, "Queue ", h("span", {class: "mono", id: "queue-title"}, name),
                   h("span", {class: "muted small"}, " in virtual host " + vhost)));
  var missing = h("p", {class: "feedback error", hidden: true, id: "queue-missing"});
  el.appendChild(missing);

  var details = h("div", {id: "queue-details"});
  var ratesBox = h("div", {class: "chart", id: "chart-queue-rates"});
  var queuedBox = h("div", {class: "chart", id: "chart-queue-queued"});
  el.appendChild(h("div", {class: "charts"},
    h("div", {class: "card"}, h("h3", null, "Queued messages"), queuedBox),
    h("div", {class: "card"}, h("h3", null, "Message rates"), ratesBox)));
  el.appendChild(Q.section("Details", details));
  var rateTs = new Q.TimeSeries(3), queuedTs = new Q.TimeSeries(2);
  var rates = new Q.Chart(ratesBox, Q.RATE_SERIES, {valueFmt: Q.rateFmt, height: 160});
  var queued = new Q.Chart(queuedBox, Q.QUEUED_SERIES, {integer: true, height: 160});

  var consumers = new Q.Table([
    {key: "channel", title: "Channel", value: function (c) { return (c.channel_details || {}).name || ""; }},
    {key: "consumer_tag", title: "Consumer tag", cell: function (c) { return h("span", {class: "mono"}, c.consumer_tag); }},
    {key: "ack_required", title: "Ack required", cell: function (c) { return fmt.bool(c.ack_required); }},
    {key: "exclusive", title: "Exclusive", cell: function (c) { return fmt.bool(c.exclusive); }},
    {key: "prefetch_count", title: "Prefetch", num: true},
    {key: "active", title: "Active", cell: function (c) { return fmt.bool(c.active !== false); }},
    {key: "arguments", title: "Arguments", value: function (c) { return fmt.json(c.arguments); }},
  ], {id: "queue-consumers", empty: "No consumers."});
  el.appendChild(Q.section("Consumers", consumers.el));

  /* bindings */
  var bindFb = feedback("bindings-feedback");
  var bindings = new Q.Table([
    {key: "source", title: "From", value: function (b) { return b.source || "(AMQP default)"; }},
    {key: "routing_key", title: "Routing key", cell: function (b) { return h("span", {class: "mono"}, b.routing_key); }},
    {key: "arguments", title: "Arguments", value: function (b) { return fmt.json(b.arguments); }},
    {key: "unbind", title: "", sortable: false, cell: function (b) {
      if (!b.source) return h("span", {class: "muted"}, "(default binding)");
      return deleteButton("Unbind", "Remove the binding from " + b.source + "?", function () {
        return api.del("/bindings/" + seg(vhost) + "/e/" + seg(b.source) + "/q/" + seg(name) +
                       "/" + seg(b.properties_key));
      }, bindFb);
    }},
  ], {id: "queue-bindings", sortKey: "source"});
  var bindEx = h("input", {id: "bind-exchange", required: true, placeholder: "exchange"});
  var bindKey = h("input", {id: "bind-key", placeholder: "routing key"});
  var bindArgs = h("textarea", {id: "bind-args", rows: 1, placeholder: "x-match=all"});
  var bindBtn = h("button", {type: "submit", text: "Bind", id: "bind-submit"});
  var bindForm = h("form", {class: "form"}, h("h4", null, "Add a binding to this queue"),
    Q.field("From exchange", bindEx), Q.field("Routing key", bindKey),
    Q.field("Arguments", bindArgs, "one key=value a line"), h("div", {class: "form-actions"}, bindBtn));
  bindForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    action(bindBtn, bindFb, function () {
      return api.post("/bindings/" + seg(vhost) + "/e/" + seg(bindEx.value) + "/q/" + seg(name),
                      {routing_key: bindKey.value, arguments: Q.parseKeyValues(bindArgs.value)});
    }, function () { bindFb.ok("Bound to " + bindEx.value + "."); });
  });
  el.appendChild(Q.section("Bindings", [bindings.el, bindFb.el, bindForm]));

  /* publish */
  var pubMode = Q.select({id: "publish-delivery-mode"}, [["1", "1 - Non-persistent"], ["2", "2 - Persistent"]], "1");
  var pubHeaders = h("textarea", {id: "publish-headers", rows: 2, placeholder: "key=value"});
  var pubProps = h("textarea", {id: "publish-properties", rows: 2,
                                placeholder: "content_type=text/plain\ncorrelation_id=42"});
  var pubPayload = h("textarea", {id: "publish-payload", rows: 4});
  var pubFb = feedback("publish-result");
  var pubBtn = h("button", {type: "submit", text: "Publish message", id: "publish-submit"});
  var pubForm = h("form", {class: "form"},
    h("p", {class: "muted"}, "Published to the default exchange with routing key ",
      h("span", {class: "mono"}, name), ", so it goes to this queue."),
    Q.field("Delivery mode", pubMode), Q.field("Headers", pubHeaders, "one key=value a line"),
    Q.field("Properties", pubProps, "one property=value a line"),
    Q.field("Payload", pubPayload), h("div", {class: "form-actions"}, pubBtn), pubFb.el);
  pubForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    action(pubBtn, pubFb, function () {
      var props = Q.parseKeyValues(pubProps.value);
      props.delivery_mode = parseInt(pubMode.value, 10);
      var headers = Q.parseKeyValues(pubHeaders.value);
      if (Object.keys(headers).length) props.headers = headers;
      return api.post("/exchanges/" + seg(vhost) + "/amq.default/publish", {
        properties: props, routing_key: name, payload: pubPayload.value, payload_encoding: "string",
      });
    }, function (res) {
      if (res && res.routed === false) pubFb.fail("Message published, but not routed.");
      else pubFb.ok("Message published.");
    });
  });
  var pubSection = Q.section("Publish message", pubForm, {id: "section-publish"});

  /* get */
  var getMode = Q.select({id: "get-ackmode"}, [
    ["ack_requeue_true", "Nack message requeue true"],
    ["ack_requeue_false", "Automatic ack"],
    ["reject_requeue_true", "Reject requeue true"],
    ["reject_requeue_false", "Reject requeue false"],
  ], "ack_requeue_true");
  var getEnc = Q.select({id: "get-encoding"}, [["auto", "Auto string / base64"], ["base64", "base64"]], "auto");
  var getCount = h("input", {id: "get-count", type: "number", min: 1, value: "1"});
  var getTrunc = h("input", {id: "get-truncate", type: "number", min: 1, value: "50000"});
  var getFb = feedback("get-feedback");
  var getOut = h("div", {id: "get-result"});
  var getBtn = h("button", {type: "submit", text: "Get message(s)", id: "get-submit"});
  var getForm = h("form", {class: "form"},
    Q.field("Ack mode", getMode), Q.field("Encoding", getEnc), Q.field("Messages", getCount),
    Q.field("Truncate at", getTrunc, "bytes"), h("div", {class: "form-actions"}, getBtn), getFb.el, getOut);
  getForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    Q.clear(getOut);
    action(getBtn, getFb, function () {
      return api.post(base + "/get", {count: parseInt(getCount.value, 10) || 1, ackmode: getMode.value,
                                      encoding: getEnc.value, truncate: parseInt(getTrunc.value, 10) || 50000});
    }, function (msgs) {
      msgs = msgs || [];
      if (!msgs.length) { getFb.ok("Queue is empty."); return; }
      getFb.ok(msgs.length + " message" + (msgs.length === 1 ? "" : "s") + " received.");
      msgs.forEach(function (m, i) {
        getOut.appendChild(h("div", {class: "message card"},
          h("h4", null, "Message " + (i + 1)),
          h("p", {class: "muted"}, "The server reported " + m.message_count + " messages remaining."),
          kv([
            ["Exchange", m.exchange || "(AMQP default)"],
            ["Routing key", m.routing_key, "mono"],
            ["Redelivered", fmt.bool(m.redelivered)],
            ["Properties", fmt.json(m.properties) || "none", "mono"],
            ["Payload", m.payload_bytes + " bytes, encoding: " + m.payload_encoding],
          ]),
          h("pre", {class: "payload"}, m.payload)));
      });
    });
  });
  el.appendChild(h("div", {class: "columns"},
    pubSection, Q.section("Get messages", getForm, {id: "section-get"})));

  /* purge / delete */
  var dangerFb = feedback("queue-danger-feedback");
  var purgeBtn = h("button", {type: "button", class: "danger", id: "purge", text: "Purge messages"});
  purgeBtn.addEventListener("click", function () {
    confirmThen("Purge all ready messages of queue " + name + "?", function () {
      action(purgeBtn, dangerFb, function () { return api.del(base + "/contents"); },
             function () { dangerFb.ok("Queue purged."); });
    });
  });
  var ifEmpty = h("input", {type: "checkbox", id: "delete-if-empty"});
  var ifUnused = h("input", {type: "checkbox", id: "delete-if-unused"});
  var delBtn = h("button", {type: "button", class: "danger", id: "delete-queue", text: "Delete queue"});
  delBtn.addEventListener("click", function () {
    confirmThen("Delete queue " + name + "?", function () {
      var qs = [];
      if (ifEmpty.checked) qs.push("if-empty=true");
      if (ifUnused.checked) qs.push("if-unused=true");
      action(delBtn, dangerFb, function () { return api.del(base + (qs.length ? "?" + qs.join("&") : "")); },
             function () { location.hash = "#/queues"; });
    });
  });
  el.appendChild(Q.section("Purge / delete", [
    h("div", {class: "form-actions"}, purgeBtn),
    h("div", {class: "form-actions"}, delBtn,
      h("label", {class: "inline"}, ifEmpty, " only if empty"),
      h("label", {class: "inline"}, ifUnused, " only if unused")),
    dangerFb.el,
  ], {id: "section-danger"}));

  return {
    el: el,
    refresh: function () {
      return Promise.all([
        api.get(base),
        api.get(base + "/bindings"),
        api.get("/consumers/" + seg(vhost)),
      ]).then(function (r) {
        var q = r[0];
        missing.hidden = true;
        var now = Date.now() / 1000;
        rateTs.push(now, [Q.rate(q, "publish"), Q.deliverRate(q), Q.rate(q, "ack")]);
        queuedTs.push(now, [q.messages_ready, q.messages_unacknowledged]);
        rates.setData(rateTs);
        queued.setData(queuedTs);
        Q.clear(details).appendChild(h("div", {class: "columns"}, kv([
          ["State", stateCell(q.state)],
          ["Features", features(q)],
          ["Durable", fmt.bool(q.durable)],
          ["Auto delete", fmt.bool(q.auto_delete)],
          ["Exclusive", fmt.bool(q.exclusive)],
          ["Arguments", fmt.json(q.arguments) || "none", "mono"],
          ["Consumers", fmt.num(q.consumers)],
        ]), kv([
          ["Ready", h("b", {id: "queue-ready"}, fmt.num(q.messages_ready))],
          ["Unacked", h("b", {id: "queue-unacked"}, fmt.num(q.messages_unacknowledged))],
          ["Total", h("b", {id: "queue-total"}, fmt.num(q.messages))],
          ["Incoming", fmt.rate(Q.rate(q, "publish"))],
          ["Deliver / get", fmt.rate(Q.deliverRate(q))],
          ["Ack", fmt.rate(Q.rate(q, "ack"))],
        ])));
        bindings.update(r[1]);
        consumers.update((r[2] || []).filter(function (c) {
          return c.queue && c.queue.name === name && c.queue.vhost === vhost;
        }));
      }, function (err) {
        if (err.status === 404) {
          missing.hidden = false;
          missing.textContent = "Queue " + name + " does not exist (any more) in virtual host " + vhost + ".";
          return;
        }
        throw err;
      });
    },
    destroy: function () { rates.destroy(); queued.destroy(); },
  };
};

/* ---------------------------------------------------------------- admin */

Q.views.admin = function () {
  var el = page("Admin");

  /* users */
  var userFb = feedback("users-feedback");
  var uName = h("input", {id: "user-name", required: true, autocomplete: "off"});
  var uPass = h("input", {id: "user-password", type: "password", autocomplete: "new-password"});
  var uTags = h("input", {id: "user-tags", placeholder: "administrator, monitoring, management"});
  var uBtn = h("button", {type: "submit", text: "Add / update user", id: "user-submit"});
  var users = new Q.Table([
    {key: "name", title: "Name", cell: function (u) { return h("span", {class: "mono"}, u.name); }},
    {key: "tags", title: "Tags", value: function (u) { return tagList(u.tags); },
     cell: function (u) { return tagList(u.tags).split(", ").filter(Boolean).map(function (t) {
       return h("span", {class: "tag"}, t); }); }},
    {key: "password", title: "Can log in with password",
     value: function (u) { return u.password_hash ? "yes" : "no"; }},
    {key: "edit", title: "", sortable: false, cell: function (u) {
      return [h("button", {type: "button", class: "small", text: "Edit", onclick: function () {
        uName.value = u.name; uPass.value = ""; uTags.value = tagList(u.tags); uName.focus();
        userFb.ok("Editing " + u.name + ": leave the password empty to keep it.");
      }}), " ", deleteButton("Delete", "Delete user " + u.name + "?", function () {
        return api.del("/users/" + seg(u.name));
      }, userFb)];
    }},
  ], {id: "users", filter: function (u) { return u.name + " " + tagList(u.tags); }});
  var uForm = h("form", {class: "form"}, h("h4", null, "Add or update a user"),
    Q.field("Username", uName), Q.field("Password", uPass, "empty: keep the current one (new user: no password login)"),
    Q.field("Tags", uTags, "comma separated"), h("div", {class: "form-actions"}, uBtn), userFb.el);
  uForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var who = uName.value;
    action(uBtn, userFb, function () {
      var body = {tags: uTags.value.split(",").map(function (t) { return t.trim(); }).filter(Boolean).join(",")};
      if (uPass.value) {
        body.password = uPass.value;
        return api.put("/users/" + seg(who), body);
      }
      /* PUT without a password clears it (RabbitMQ semantics): resend the current hash. */
      return api.get("/users/" + seg(who)).then(function (cur) {
        body.password_hash = cur.password_hash || "";
        if (cur.hashing_algorithm) body.hashing_algorithm = cur.hashing_algorithm;
        return api.put("/users/" + seg(who), body);
      }, function (err) {
        if (err.status !== 404) throw err;
        body.password_hash = "";
        return api.put("/users/" + seg(who), body);
      });
    }, function () { userFb.ok("User " + who + " saved."); uPass.value = ""; });
  });
  el.appendChild(Q.section("Users", [users.el, uForm], {id: "section-users"}));

  /* vhosts */
  var vhFb = feedback("vhosts-feedback");
  var vhosts = new Q.Table([
    {key: "name", title: "Name", cell: function (v) { return h("span", {class: "mono"}, v.name); }},
    {key: "messages_ready", title: "Ready", num: true, value: function (v) { return v.messages_ready || 0; }},
    {key: "messages_unacknowledged", title: "Unacked", num: true, value: function (v) { return v.messages_unacknowledged || 0; }},
    {key: "messages", title: "Total", num: true, value: function (v) { return v.messages || 0; }},
    {key: "del", title: "", sortable: false, cell: function (v) {
      return deleteButton("Delete", "Delete virtual host " + v.name + " and everything in it?", function () {
        return api.del("/vhosts/" + seg(v.name));
      }, vhFb);
    }},
  ], {id: "vhosts"});
  var vName = h("input", {id: "vhost-name", required: true});
  var vBtn = h("button", {type: "submit", text: "Add virtual host", id: "vhost-submit"});
  var vForm = h("form", {class: "form"}, h("h4", null, "Add a virtual host"), Q.field("Name", vName),
    h("div", {class: "form-actions"}, vBtn), vhFb.el);
  vForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var n = vName.value;
    action(vBtn, vhFb, function () { return api.put("/vhosts/" + seg(n), {}); },
           function () { vhFb.ok("Virtual host " + n + " added."); vName.value = ""; });
  });
  el.appendChild(Q.section("Virtual hosts", [vhosts.el, vForm], {id: "section-vhosts"}));

  /* permissions */
  var pFb = feedback("permissions-feedback");
  var pUser = Q.select({id: "perm-user"}, []);
  var pVhost = vhostSelect("perm-vhost");
  var pConf = h("input", {id: "perm-configure", value: ".*"});
  var pWrite = h("input", {id: "perm-write", value: ".*"});
  var pRead = h("input", {id: "perm-read", value: ".*"});
  var pBtn = h("button", {type: "submit", text: "Set permission", id: "perm-submit"});
  var perms = new Q.Table([
    {key: "user", title: "User"},
    {key: "vhost", title: "Virtual host"},
    {key: "configure", title: "Configure regexp", cell: function (p) { return h("span", {class: "mono"}, p.configure); }},
    {key: "write", title: "Write regexp", cell: function (p) { return h("span", {class: "mono"}, p.write); }},
    {key: "read", title: "Read regexp", cell: function (p) { return h("span", {class: "mono"}, p.read); }},
    {key: "edit", title: "", sortable: false, cell: function (p) {
      return [h("button", {type: "button", class: "small", text: "Edit", onclick: function () {
        pUser.value = p.user; pVhost.value = p.vhost;
        pConf.value = p.configure; pWrite.value = p.write; pRead.value = p.read;
      }}), " ", deleteButton("Clear", "Clear the permissions of " + p.user + " on " + p.vhost + "?", function () {
        return api.del("/permissions/" + seg(p.vhost) + "/" + seg(p.user));
      }, pFb)];
    }},
  ], {id: "permissions", sortKey: "user", filter: function (p) { return p.user + " " + p.vhost; }});
  var pForm = h("form", {class: "form"}, h("h4", null, "Set permission"),
    Q.field("User", pUser), Q.field("Virtual host", pVhost), Q.field("Configure regexp", pConf),
    Q.field("Write regexp", pWrite), Q.field("Read regexp", pRead),
    h("div", {class: "form-actions"}, pBtn), pFb.el);
  pForm.addEventListener("submit", function (ev) {
    ev.preventDefault();
    action(pBtn, pFb, function () {
      return api.put("/permissions/" + seg(pVhost.value) + "/" + seg(pUser.value),
                     {configure: pConf.value, write: pWrite.value, read: pRead.value});
    }, function () { pFb.ok("Permission set for " + pUser.value + " on " + pVhost.value + "."); });
  });
  el.appendChild(Q.section("Permissions", [perms.el, pForm], {id: "section-permissions"}));

  return {
    el: el,
    refresh: function () {
      syncVhostSelect(pVhost);
      return Promise.all([api.get("/users"), api.get("/vhosts"), api.get("/permissions")]).then(function (r) {
        users.update(r[0]);
        vhosts.update(r[1]);
        perms.update(r[2]);
        var names = r[0].map(function (u) { return u.name; }).sort();
        var have = Array.prototype.map.call(pUser.options, function (o) { return o.value; });
        if (have.join("\n") !== names.join("\n")) {
          var cur = pUser.value;
          Q.clear(pUser);
          names.forEach(function (n) { pUser.appendChild(h("option", {value: n, selected: n === cur}, n)); });
        }
      });
    },
  };
};

/* RabbitMQ answers tags as a list (3.9+) or a comma-separated string (older). */
function tagList(tags) {
  if (Array.isArray(tags)) return tags.join(", ");
  return String(tags || "").split(",").map(function (t) { return t.trim(); }).filter(Boolean).join(", ");
}
})();
