// polar-metering dashboard: charts (uPlot) and live updates by short polling.
// Each page has a #live region; every poll sends the marker it has and gets 204 (nothing changed)
// or the region's new HTML, which replaces the old one. No reload, no framework.
(function () {
  "use strict";
  var script = document.currentScript;
  var pollMs = parseInt((script && script.dataset.poll) || "1000", 10);
  var css = getComputedStyle(document.documentElement);
  var color = function (name) { return css.getPropertyValue(name).trim(); };
  var plots = [];

  function fmt(v) {
    if (v == null) return "";
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(0) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(2);
  }

  // Vertical lines (period start/end) and the limit, drawn over the series.
  function markers(opts) {
    return function (u) {
      var ctx = u.ctx, top = u.bbox.top, h = u.bbox.height, left = u.bbox.left, w = u.bbox.width;
      ctx.save();
      ctx.lineWidth = 1.5 * devicePixelRatio;
      (opts.vlines || []).forEach(function (t) {
        if (t == null) return;
        var x = u.valToPos(t, "x", true);
        if (x < left || x > left + w) return;
        ctx.strokeStyle = "#7c3aed"; ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + h); ctx.stroke();
      });
      if (opts.limit != null) {
        var y = u.valToPos(opts.limit, "y", true);
        if (y >= top - 1 && y <= top + h + 1) {
          ctx.strokeStyle = color("--over"); ctx.setLineDash([]);
          ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + w, y); ctx.stroke();
          ctx.fillStyle = color("--over"); ctx.font = (11 * devicePixelRatio) + "px system-ui";
          var label = "limit " + fmt(opts.limit);
          ctx.textAlign = "right";
          ctx.fillText(label, left + w - 4 * devicePixelRatio, y - 5 * devicePixelRatio);
        }
      }
      ctx.restore();
    };
  }

  function bars() {
    return uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
  }

  // Half a bucket of room at both ends, so the first and last bars are not cut in half.
  function padded(x) {
    var step = x.length > 1 ? (x[x.length - 1] - x[0]) / (x.length - 1) : 3600;
    return function () { return [x[0] - step / 2, x[x.length - 1] + step / 2]; };
  }

  function legend(el, items) {
    var div = document.createElement("div");
    div.className = "chart-legend";
    items.forEach(function (it) {
      var span = document.createElement("span");
      span.className = "key " + it.cls;
      span.textContent = it.label;
      div.appendChild(span);
    });
    el.appendChild(div);
  }

  function draw(el, x, series, opts) {
    var width = Math.max(240, el.clientWidth);
    var maxY = 0;
    series.forEach(function (s) { (s.data || []).forEach(function (v) { if (v != null && v > maxY) maxY = v; }); });
    if (opts.limit != null && opts.limit > maxY) maxY = opts.limit;
    var plot = new uPlot({
      width: width, height: 180,
      cursor: { points: { show: false } },
      legend: { show: false },
      scales: { x: { time: true, range: padded(x) }, y: { range: [0, maxY > 0 ? maxY * 1.15 : 1] } },
      axes: [
        { stroke: color("--muted"), grid: { stroke: "#eef1f5" }, ticks: { stroke: "#eef1f5" } },
        { stroke: color("--muted"), grid: { stroke: "#eef1f5" }, ticks: { stroke: "#eef1f5" }, values: function (u, vals) { return vals.map(fmt); }, size: 48 }
      ],
      series: [{}].concat(series.map(function (s) {
        return { label: s.label, stroke: s.stroke, fill: s.fill, width: s.width || 1.5, paths: s.bars ? bars() : undefined, points: { show: false }, spanGaps: false };
      })),
      hooks: { draw: [markers(opts)] }
    }, [x].concat(series.map(function (s) { return s.data; })), el);
    el.dataset.drawn = "1";
    plots.push(plot);
  }

  function readJSON(id) {
    var node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function renderCharts() {
    plots.forEach(function (p) { p.destroy(); });
    plots = [];
    if (typeof uPlot === "undefined") return;
    var charts = readJSON("chart-data");
    if (charts) {
      document.querySelectorAll("[data-chart]").forEach(function (el) {
        var c = charts[parseInt(el.dataset.chart, 10)];
        el.innerHTML = "";
        if (!c || !c.x.length) { el.innerHTML = '<p class="error">No history to show.</p>'; return; }
        var series = [{ label: "per bucket", data: c.y, stroke: "#3b82f6", fill: "rgba(59,130,246,.55)", bars: true, width: 1 }];
        if (c.toDate) series.push({ label: c.func === "max" ? "period peak" : "period to date", data: c.toDate, stroke: color("--brand"), width: 2 });
        draw(el, c.x, series, { limit: c.limit, vlines: [c.periodStart, c.periodEnd] });
        var keys = [{ cls: "bucket", label: "per " + (document.body.dataset.interval || "bucket") }];
        if (c.toDate) keys.push({ cls: "todate", label: c.func === "max" ? "period peak" : "period to date" });
        if (c.limit != null) keys.push({ cls: "limit", label: "limit" });
        if (c.periodStart != null) keys.push({ cls: "boundary", label: "period boundary" });
        legend(el, keys);
      });
    }
    var totals = readJSON("totals-data");
    if (totals) {
      document.querySelectorAll("[data-totals]").forEach(function (el) {
        var t = totals[parseInt(el.dataset.totals, 10)] || [];
        el.innerHTML = "";
        if (!t.length) { el.innerHTML = '<p class="error">No totals to show.</p>'; return; }
        draw(el, t.map(function (p) { return p[1]; }), [{ label: "total", data: t.map(function (p) { return p[2]; }), stroke: "#2563eb", fill: "rgba(37,99,235,.35)", bars: true, width: 1 }], {});
      });
    }
  }

  var live = document.getElementById("live");
  var dot = document.getElementById("live-dot");
  var busy = false;

  function poll() {
    if (!live || busy || document.hidden) return;
    busy = true;
    fetch(location.href, { headers: { "X-Dashboard-Live": live.dataset.marker || "" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { location.reload(); return null; }
        if (r.status !== 200) return null;
        var marker = r.headers.get("X-Dashboard-Marker") || "";
        return r.text().then(function (html) {
          live.innerHTML = html;
          live.dataset.marker = marker;
          renderCharts();
          if (dot) { dot.classList.add("flash"); setTimeout(function () { dot.classList.remove("flash"); }, 300); }
        });
      })
      .catch(function () { if (dot) dot.classList.remove("on"); })
      .then(function () { busy = false; if (dot) dot.classList.add("on"); });
  }

  renderCharts();
  if (live && live.dataset.marker) {
    if (dot) dot.classList.add("on");
    setInterval(poll, pollMs);
  }
  var resizing;
  window.addEventListener("resize", function () { clearTimeout(resizing); resizing = setTimeout(renderCharts, 150); });
})();
