// The admin status page: polls /healthz and /connections once a second,
// redraws the table and an RTT chart.  Served by wsheart's admin endpoint;
// loads nothing from elsewhere.
(function () {
  "use strict";

  var LIMIT = 500; // rows fetched and shown
  var HISTORY = 300; // chart points (seconds)
  var history = [];
  var $ = function (id) {
    return document.getElementById(id);
  };
  var page = (window.wsheartStatus = { polls: 0, errors: 0 });

  function ms(seconds) {
    return seconds === null || seconds === undefined ? "-" : (seconds * 1000).toFixed(1) + " ms";
  }
  function age(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 120) return seconds.toFixed(0) + " s";
    if (seconds < 7200) return (seconds / 60).toFixed(0) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }
  function cell(row, text, numeric) {
    var td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    row.appendChild(td);
  }

  function renderTable(rows) {
    var body = $("connections");
    var fresh = document.createDocumentFragment();
    rows.forEach(function (c) {
      var tr = document.createElement("tr");
      tr.dataset.id = c.id;
      if (c.misses > 0) tr.className = "missing";
      cell(tr, c.id);
      cell(tr, c.peer);
      cell(tr, age(c.age_seconds), true);
      cell(tr, age(c.idle_seconds), true);
      cell(tr, ms(c.last_rtt_seconds), true);
      cell(tr, ms(c.smoothed_rtt_seconds), true);
      cell(tr, String(c.misses), true);
      fresh.appendChild(tr);
    });
    body.replaceChildren(fresh);
  }

  function quantiles(rows) {
    var rtts = rows
      .map(function (c) {
        return c.last_rtt_seconds;
      })
      .filter(function (v) {
        return typeof v === "number";
      })
      .sort(function (a, b) {
        return a - b;
      });
    if (!rtts.length) return null;
    return { median: rtts[Math.floor((rtts.length - 1) / 2)], max: rtts[rtts.length - 1] };
  }

  function drawChart() {
    var canvas = $("rtt-chart");
    var ctx = canvas.getContext("2d");
    var w = canvas.width, h = canvas.height, pad = 28;
    ctx.clearRect(0, 0, w, h);
    var points = history.filter(function (p) {
      return p !== null;
    });
    var top = points.reduce(function (m, p) {
      return Math.max(m, p.max);
    }, 0.001);
    ctx.fillStyle = "#687086";
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillText((top * 1000).toFixed(1) + " ms", 2, 12);
    ctx.fillText("0", 2, h - 4);
    ctx.strokeStyle = "#dde1e8";
    ctx.beginPath();
    ctx.moveTo(pad, h - pad / 2);
    ctx.lineTo(w, h - pad / 2);
    ctx.stroke();
    function line(key, color) {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      var started = false;
      history.forEach(function (p, i) {
        if (p === null) {
          started = false;
          return;
        }
        var x = pad + ((w - pad) * i) / Math.max(1, HISTORY - 1);
        var y = h - pad / 2 - ((h - pad) * p[key]) / top;
        if (started) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        started = true;
      });
      ctx.stroke();
    }
    line("max", "#d98a1c");
    line("median", "#1d2330");
  }

  function poll() {
    Promise.all([
      fetch("/healthz", { cache: "no-store" }).then(function (r) {
        return r.json();
      }),
      fetch("/connections?limit=" + LIMIT, { cache: "no-store" }).then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      }),
    ])
      .then(function (results) {
        var health = results[0], rows = results[1];
        page.polls += 1;
        $("health").textContent = health.status;
        $("count").textContent = String(health.connections);
        $("lag").textContent = ms(health.reactor_lag_seconds);
        $("version").textContent = health.version;
        $("updated").textContent = new Date().toLocaleTimeString();
        $("missing").textContent = String(
          rows.filter(function (c) {
            return c.misses > 0;
          }).length,
        );
        $("shown").textContent =
          rows.length < health.connections ? "showing " + rows.length + " of " + health.connections : "";
        renderTable(rows);
        history.push(quantiles(rows));
        while (history.length > HISTORY) history.shift();
        drawChart();
      })
      .catch(function (e) {
        page.errors += 1;
        $("health").textContent = "unreachable (" + e.message + ")";
      })
      .finally(function () {
        setTimeout(poll, 1000);
      });
  }

  poll();
})();
