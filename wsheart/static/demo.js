// The demo page of wsheart: an echo console on wsheart.js.  Options come
// from the daemon (its text ping, pong and heartbeat timing, in the page's
// JSON config) and may be overridden in the query string, e.g.
// /?initialDelay=200&maxDelay=2000 (milliseconds).
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("wsheart-config").textContent);
  var options = {
    pingText: config.pingText,
    pongText: config.pongText,
    interval: config.interval,
    timeout: config.timeout,
    maxMissed: config.maxMissed,
  };
  var tunable = ["interval", "timeout", "maxMissed", "connectTimeout", "initialDelay", "factor", "maxDelay", "minDelay", "stableAfter", "queueLimit"];
  var query = new URLSearchParams(location.search);
  tunable.forEach(function (name) {
    if (query.has(name)) options[name] = Number(query.get(name));
  });
  var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";

  var $ = function (id) {
    return document.getElementById(id);
  };
  var log = $("log");
  var client = new WsHeart(url, options);
  // For tests and the curious: the client and every state it went through.
  var demo = (window.wsheartDemo = { client: client, states: [], messages: [] });

  function seconds(ms) {
    return ms < 10000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms / 1000) + " s";
  }

  function line(kind, text) {
    var item = document.createElement("li");
    item.className = kind;
    var time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.appendChild(time);
    item.appendChild(document.createTextNode(" " + text));
    log.insertBefore(item, log.firstChild);
    while (log.children.length > 200) log.removeChild(log.lastChild);
  }

  var countdown = null;
  function showState(d) {
    var state = $("state");
    state.textContent = d.state === "open" ? "connected" : d.state;
    state.className = "state state-" + d.state;
    clearInterval(countdown);
    countdown = null;
    if (d.state === "reconnecting") {
      var tick = function () {
        var left = Math.max(0, d.retryAt - Date.now());
        $("detail").textContent =
          "in " + seconds(left) + " as attempt " + d.attempt + (d.hinted ? " (the server asked to wait)" : "");
      };
      tick();
      countdown = setInterval(tick, 100);
    } else if (d.state === "connecting") {
      $("detail").textContent = "attempt " + d.attempt;
    } else if (d.state === "closed") {
      $("detail").textContent = d.reason || "";
    } else {
      $("detail").textContent = "";
    }
  }

  client.addEventListener("state", function (e) {
    var d = e.detail;
    demo.states.push(Object.assign({ at: Date.now() }, d));
    showState(d);
    if (d.state === "reconnecting") {
      line("state", "reconnecting in " + seconds(d.delay) + " (attempt " + d.attempt + "): " + d.reason);
    } else if (d.state === "closed") {
      line("state", "closed: " + d.reason);
    }
  });
  client.addEventListener("open", function () {
    line("state", "connected to " + url);
  });
  client.addEventListener("close", function (e) {
    line("state", "connection closed: " + e.detail.code + (e.detail.reason ? " " + e.detail.reason : ""));
  });
  client.addEventListener("message", function (e) {
    var text = typeof e.detail.data === "string" ? e.detail.data : "[" + e.detail.data.byteLength + " bytes]";
    demo.messages.push(text);
    line("in", text);
  });
  client.addEventListener("heartbeat", function (e) {
    $("rtt").textContent = e.detail.rtt.toFixed(1) + " ms (smoothed " + e.detail.smoothedRtt.toFixed(1) + " ms)";
  });
  client.addEventListener("miss", function (e) {
    line("state", "pong missing (" + e.detail.misses + " of " + client.options.maxMissed + ")");
  });
  client.addEventListener("overflow", function () {
    line("error", "send queue full: message dropped");
  });

  function showQueued() {
    $("queued").textContent = client.queued ? client.queued + " message(s) queued until the connection is back" : "";
  }
  client.addEventListener("open", showQueued);

  $("composer").addEventListener("submit", function (e) {
    e.preventDefault();
    var input = $("message");
    if (!input.value) return;
    if (client.send(input.value)) line("out", input.value);
    input.value = "";
    showQueued();
  });

  $("interval").textContent = seconds(client.options.interval);
  $("max-missed").textContent = String(client.options.maxMissed);
  showState({ state: client.state, attempt: client.attempt });
})();
