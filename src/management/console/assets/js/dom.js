/* DOM helpers, number formatting and a sortable, filterable table.
 * Everything the broker sends is inserted as text (never as HTML), so a queue named
 * "<script>" shows as that name. */
"use strict";

var Q = window.Q || (window.Q = {});

/* h("a", {href: "#/", class: "x", onclick: fn}, "text", child, [more]) */
Q.h = function h(tag, attrs) {
  var el = document.createElement(tag);
  if (attrs) {
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === undefined || v === null || v === false) return;
      if (k.slice(0, 2) === "on" && typeof v === "function") {
        el.addEventListener(k.slice(2), v);
      } else if (k === "class") {
        el.className = v;
      } else if (k === "text") {
        el.textContent = v;
      } else if (k === "value") {
        el.value = v;
      } else if (v === true) {
        el.setAttribute(k, "");
      } else {
        el.setAttribute(k, String(v));
      }
    });
  }
  for (var i = 2; i < arguments.length; i++) Q.append(el, arguments[i]);
  return el;
};

Q.append = function append(el, child) {
  if (child === undefined || child === null || child === false) return;
  if (Array.isArray(child)) {
    child.forEach(function (c) { append(el, c); });
  } else if (child instanceof Node) {
    el.appendChild(child);
  } else {
    el.appendChild(document.createTextNode(String(child)));
  }
};

Q.clear = function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
};

/* Replace el's children only when the new text differs (keeps selections stable). */
Q.setText = function setText(el, text) {
  text = String(text);
  if (el.textContent !== text) el.textContent = text;
};

Q.fmt = {
  num: function (n) {
    if (n === undefined || n === null || n === "") return "";
    if (typeof n !== "number") return String(n);
    return n.toLocaleString("en-US");
  },
  rate: function (r) {
    if (r === undefined || r === null) return "";
    if (r === 0) return "0.00/s";
    return (r >= 100 ? r.toFixed(0) : r.toFixed(2)) + "/s";
  },
  bytes: function (b) {
    if (typeof b !== "number") return "";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b : b.toFixed(1)) + " " + units[i];
  },
  time: function (ms) {
    if (typeof ms !== "number") return "";
    var d = new Date(ms);
    var p = function (x) { return (x < 10 ? "0" : "") + x; };
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
      p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
  },
  json: function (v) {
    if (v === undefined || v === null) return "";
    if (typeof v === "object" && Object.keys(v).length === 0) return ""; /* {} or [] */
    return JSON.stringify(v);
  },
  bool: function (b) { return b ? "yes" : "no"; },
};

/* A message_stats rate by key ("publish" -> message_stats.publish_details.rate), 0 when
 * the broker has not reported that statistic yet (RabbitMQ omits unused keys). */
Q.rate = function rate(obj, key) {
  var ms = obj && obj.message_stats;
  var d = ms && ms[key + "_details"];
  return d && typeof d.rate === "number" ? d.rate : 0;
};

/* Delivered = consumer deliveries plus basic.get, as RabbitMQ's deliver_get; summed from
 * the parts when a broker reports them without the total. */
Q.deliverRate = function deliverRate(obj) {
  var ms = obj && obj.message_stats;
  if (ms && ms.deliver_get_details) return Q.rate(obj, "deliver_get");
  return Q.rate(obj, "deliver") + Q.rate(obj, "deliver_no_ack") +
    Q.rate(obj, "get") + Q.rate(obj, "get_no_ack");
};

/* Table: columns = [{key, title, value: row -> sort value, cell: row -> node/text,
 * num: bool}], opts = {filter: row -> text to match, rowKey, empty, id}. The sort and the
 * filter survive update(rows) calls, so periodic refreshes keep what the user chose. */
Q.Table = function Table(columns, opts) {
  var self = this;
  opts = opts || {};
  this.columns = columns;
  this.opts = opts;
  this.rows = [];
  this.sortKey = opts.sortKey || (columns[0] && columns[0].key);
  this.sortDir = 1;
  this.query = "";
  this.tbody = Q.h("tbody");
  this.count = Q.h("span", {class: "muted count"});
  var headRow = Q.h("tr");
  this.ths = {};
  columns.forEach(function (c) {
    var th = Q.h("th", {class: (c.num ? "num " : "") + (c.sortable === false ? "" : "sortable"),
                        "data-key": c.key, title: c.sortable === false ? null : "Sort by " + c.title},
                 c.title);
    if (c.sortable !== false) {
      th.addEventListener("click", function () {
        if (self.sortKey === c.key) self.sortDir = -self.sortDir;
        else { self.sortKey = c.key; self.sortDir = c.num ? -1 : 1; }
        self.render();
      });
    }
    self.ths[c.key] = th;
    headRow.appendChild(th);
  });
  this.table = Q.h("table", {class: "grid", id: opts.id}, Q.h("thead", null, headRow), this.tbody);
  this.el = Q.h("div", {class: "table-wrap"});
  if (opts.filter) {
    this.filterInput = Q.h("input", {type: "search", placeholder: "Filter", class: "filter",
                                     id: opts.id ? opts.id + "-filter" : null,
                                     "aria-label": "Filter"});
    this.filterInput.addEventListener("input", function () {
      self.query = self.filterInput.value.trim().toLowerCase();
      self.render();
    });
    this.el.appendChild(Q.h("div", {class: "table-tools"}, this.filterInput, this.count));
  }
  this.el.appendChild(this.table);
};

Q.Table.prototype.update = function (rows) {
  this.rows = rows || [];
  this.render();
};

Q.Table.prototype.sortValue = function (col, row) {
  var v = col.value ? col.value(row) : row[col.key];
  return v === undefined || v === null ? "" : v;
};

Q.Table.prototype.render = function () {
  var self = this;
  var col = this.columns.filter(function (c) { return c.key === self.sortKey; })[0];
  var rows = this.rows;
  if (this.query && this.opts.filter) {
    rows = rows.filter(function (r) {
      return String(self.opts.filter(r)).toLowerCase().indexOf(self.query) >= 0;
    });
  }
  if (col) {
    rows = rows.slice().sort(function (a, b) {
      var x = self.sortValue(col, a), y = self.sortValue(col, b);
      if (typeof x === "number" && typeof y === "number") return (x - y) * self.sortDir;
      return String(x).localeCompare(String(y)) * self.sortDir;
    });
  }
  Object.keys(this.ths).forEach(function (k) {
    self.ths[k].classList.toggle("sorted-asc", k === self.sortKey && self.sortDir === 1);
    self.ths[k].classList.toggle("sorted-desc", k === self.sortKey && self.sortDir === -1);
  });
  var body = Q.h("tbody");
  if (rows.length === 0) {
    body.appendChild(Q.h("tr", {class: "empty"},
      Q.h("td", {colspan: this.columns.length},
          this.rows.length ? "Nothing matches the filter." : (this.opts.empty || "None."))));
  }
  rows.forEach(function (r) {
    var tr = Q.h("tr", self.opts.rowAttrs ? self.opts.rowAttrs(r) : null);
    self.columns.forEach(function (c) {
      var v = c.cell ? c.cell(r) : self.sortValue(c, r);
      if (typeof v === "number" && c.num) v = Q.fmt.num(v);
      tr.appendChild(Q.h("td", {class: c.num ? "num" : null}, v));
    });
    body.appendChild(tr);
  });
  this.table.replaceChild(body, this.tbody);
  this.tbody = body;
  if (this.opts.filter) {
    Q.setText(this.count, rows.length === this.rows.length ?
      this.rows.length + " item" + (this.rows.length === 1 ? "" : "s") :
      rows.length + " of " + this.rows.length);
  }
};

/* A labelled form field. */
Q.field = function field(label, input, hint) {
  return Q.h("label", {class: "field"}, Q.h("span", {class: "field-label"}, label), input,
             hint ? Q.h("span", {class: "hint"}, hint) : null);
};

Q.select = function select(attrs, options, selected) {
  var s = Q.h("select", attrs);
  options.forEach(function (o) {
    var value = Array.isArray(o) ? o[0] : o, text = Array.isArray(o) ? o[1] : o;
    s.appendChild(Q.h("option", {value: value, selected: value === selected}, text));
  });
  return s;
};

/* A collapsible page section. */
Q.section = function section(title, body, opts) {
  opts = opts || {};
  var det = Q.h("details", {class: "section", open: opts.closed ? null : true, id: opts.id},
                Q.h("summary", null, title), Q.h("div", {class: "section-body"}, body));
  return det;
};

/* Parses "key=value" lines into an object (values that look like integers or booleans
 * become those types, as the RabbitMQ console does for arguments). */
Q.parseKeyValues = function parseKeyValues(text) {
  var out = {};
  String(text || "").split("\n").forEach(function (line) {
    line = line.trim();
    if (!line) return;
    var i = line.indexOf("=");
    if (i <= 0) throw new Error("expected key=value, got: " + line);
    var k = line.slice(0, i).trim(), v = line.slice(i + 1).trim();
    if (/^-?\d+$/.test(v)) out[k] = parseInt(v, 10);
    else if (v === "true" || v === "false") out[k] = v === "true";
    else out[k] = v;
  });
  return out;
};
