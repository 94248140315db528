/* Rolling time series and their charts (uPlot). The overview asks the broker for its
 * sample history (RabbitMQ's msg_rates_age / lengths_age `samples` lists), so its charts
 * show the last Q.HISTORY_SECONDS at once; where a broker sends no samples, and on a
 * queue's page, the console keeps its own history: each refresh appends the current
 * rates and counts. */
"use strict";

var Q = window.Q || (window.Q = {});

Q.HISTORY_SECONDS = 600;

/* n parallel series sampled at the same instants. */
Q.TimeSeries = function TimeSeries(n, maxAge) {
  this.maxAge = maxAge || Q.HISTORY_SECONDS;
  this.t = [];
  this.ys = [];
  for (var i = 0; i < n; i++) this.ys.push([]);
};

Q.TimeSeries.prototype.push = function (tSeconds, values) {
  var last = this.t.length ? this.t[this.t.length - 1] : -Infinity;
  if (tSeconds <= last) return; /* two refreshes in the same instant: keep the first */
  this.t.push(tSeconds);
  for (var i = 0; i < this.ys.length; i++) {
    var v = values[i];
    this.ys[i].push(typeof v === "number" && isFinite(v) ? v : null);
  }
  var cut = 0;
  while (cut < this.t.length && this.t[cut] < tSeconds - this.maxAge) cut++;
  if (cut) {
    this.t.splice(0, cut);
    this.ys.forEach(function (y) { y.splice(0, cut); });
  }
};

Q.TimeSeries.prototype.data = function () {
  return [this.t].concat(this.ys);
};

/* A line chart of a TimeSeries: series = [{label, color}], opts = {height, valueFmt}. */
Q.Chart = function Chart(container, series, opts) {
  opts = opts || {};
  this.container = container;
  this.series = series;
  this.height = opts.height || 190;
  this.valueFmt = opts.valueFmt || function (v) { return v == null ? "" : Q.fmt.num(v); };
  this.integer = !!opts.integer;
  this.plot = null;
  var self = this;
  if (typeof ResizeObserver === "function") {
    this.observer = new ResizeObserver(function () { self.resize(); });
    this.observer.observe(container);
  }
};

Q.Chart.prototype.width = function () {
  return Math.max(240, Math.floor(this.container.clientWidth || 600));
};

Q.Chart.prototype.build = function (data) {
  var self = this;
  var fmt = this.valueFmt;
  var opts = {
    width: this.width(),
    height: this.height,
    pxAlign: 0,
    cursor: {drag: {x: false, y: false}},
    legend: {live: true},
    scales: {x: {time: true}, y: {range: function (u, min, max) {
      /* Start at zero; leave headroom; a flat zero line still gets a visible axis. */
      var top = max > 0 ? max * 1.15 : 1;
      return [0, top];
    }}},
    axes: [
      /* Whole seconds and up: a fresh chart spans a few seconds only. */
      {stroke: "#5b6770", grid: {stroke: "#e6eaee", width: 1}, ticks: {stroke: "#e6eaee"},
       space: 70, incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600],
       values: function (u, vals) { return vals.map(Q.clock); }},
      {stroke: "#5b6770", grid: {stroke: "#e6eaee", width: 1}, ticks: {stroke: "#e6eaee"},
       size: 56, values: function (u, vals) { return vals.map(function (v) { return fmt(v); }); }},
    ],
    series: [{label: "Time", value: "{HH}:{mm}:{ss}"}].concat(this.series.map(function (s) {
      return {label: s.label, stroke: s.color, width: 2, fill: s.color + "22",
              points: {show: false}, value: function (u, v) { return fmt(v); }};
    })),
  };
  if (this.integer) {
    /* Message counts: whole-number ticks only. */
    opts.axes[1].incrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4,
                          1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8, 1e9];
  }
  this.plot = new uPlot(opts, data, this.container);
};

Q.Chart.prototype.setData = function (ts) {
  var data = ts.data();
  if (!this.plot) this.build(data);
  else this.plot.setData(data);
};

Q.Chart.prototype.resize = function () {
  if (!this.plot) return;
  var w = this.width();
  if (w !== this.plot.width) this.plot.setSize({width: w, height: this.height});
};

Q.Chart.prototype.destroy = function () {
  if (this.observer) this.observer.disconnect();
  if (this.plot) this.plot.destroy();
  this.plot = null;
};

/* The series the overview and the queue page draw. */
Q.RATE_SERIES = [
  {label: "Published", color: "#e67e22"},
  {label: "Delivered", color: "#2e86c1"},
  {label: "Acknowledged", color: "#27ae60"},
];
Q.QUEUED_SERIES = [
  {label: "Ready", color: "#d4ac0d"},
  {label: "Unacked", color: "#8e44ad"},
];

Q.clock = function (tSeconds) {
  var d = new Date(tSeconds * 1000);
  var p = function (x) { return (x < 10 ? "0" : "") + x; };
  return p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
};

Q.rateFmt = function (v) {
  if (v == null) return "";
  return (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + "/s";
};

/* The query that makes /api/overview include its samples, one every 5 s. */
Q.SAMPLES_QUERY = "?lengths_age=" + Q.HISTORY_SECONDS + "&lengths_incr=5&msg_rates_age=" +
  Q.HISTORY_SECONDS + "&msg_rates_incr=5";

/* From an overview with samples: {rates, queued} TimeSeries (either null when the broker
 * sent fewer than two points). Counter samples become per-second rates between
 * neighbours; a key the broker omits (no such traffic yet) counts as zero. */
Q.historyFromSamples = function (o) {
  function samples(obj, k) {
    var d = obj && obj[k + "_details"];
    return d && Array.isArray(d.samples) ? d.samples.slice().sort(function (a, b) {
      return a.timestamp - b.timestamp;
    }) : null;
  }
  function build(obj, keys, asRate) {
    var perKey = keys.map(function (k) {
      var list = samples(obj, k), m = {};
      if (!list) return null;
      for (var i = asRate ? 1 : 0; i < list.length; i++) {
        var v = list[i].sample;
        if (asRate) {
          var dt = (list[i].timestamp - list[i - 1].timestamp) / 1000;
          v = dt > 0 ? Math.max(0, (list[i].sample - list[i - 1].sample) / dt) : 0;
        }
        m[list[i].timestamp] = v;
      }
      return m;
    });
    var times = {};
    perKey.forEach(function (m) { if (m) Object.keys(m).forEach(function (t) { times[t] = true; }); });
    var ts = Object.keys(times).map(Number).sort(function (a, b) { return a - b; });
    if (ts.length < 2) return null;
    var out = new Q.TimeSeries(keys.length);
    ts.forEach(function (t) {
      out.push(t / 1000, perKey.map(function (m) { return m && m[t] !== undefined ? m[t] : 0; }));
    });
    return out;
  }
  return {
    rates: build(o.message_stats, ["publish", "deliver_get", "ack"], true),
    queued: build(o.queue_totals, ["messages_ready", "messages_unacknowledged"], false),
  };
};
