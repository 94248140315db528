/* Rolling time series and their charts (uPlot). The console keeps its own history:
 * each refresh appends the broker's current rates and counts, so the charts show the
 * minutes since the page was opened (up to Q.HISTORY_SECONDS). */
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
      {stroke: "#5b6770", grid: {stroke: "#e6eaee", width: 1}, ticks: {stroke: "#e6eaee"}},
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

Q.rateFmt = function (v) {
  if (v == null) return "";
  return (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) + "/s";
};
