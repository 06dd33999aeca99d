// The demo page of wsheart.  With channels on (the daemon's default) it is
// a chat room on one channel (wsheart.v1): presence on the side, and after
// a reconnect the messages sent meanwhile appear, each once.  With
// --no-channels it is an echo console.  Options come from the daemon (its
// heartbeat timing, in the page's JSON config) and may be overridden in the
// query string: /?initialDelay=200&maxDelay=2000 (ms), ?channel=chat.other.
// Under --auth jwt with --demo-token-url it asks that URL for its token.
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("wsheart-config").textContent);
  var query = new URLSearchParams(location.search);
  var chat = !!config.channels && query.get("mode") !== "echo";
  var channel = query.get("channel") || config.channel;
  var options = { interval: config.interval, timeout: config.timeout, maxMissed: config.maxMissed };
  if (chat) {
    options.protocols = ["wsheart.v1"];
  } else {
    options.pingText = config.pingText;
    options.pongText = config.pongText;
  }
  ["interval", "timeout", "maxMissed", "connectTimeout", "initialDelay", "factor", "maxDelay", "minDelay", "stableAfter", "queueLimit"].forEach(
    function (name) {
      if (query.has(name)) options[name] = Number(query.get(name));
    },
  );
  var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";

  var $ = function (id) {
    return document.getElementById(id);
  };
  var log = $("log");
  var nameInput = $("name");
  var storedName = null;
  try {
    storedName = localStorage.getItem("wsheart-name");
  } catch (err) {
    /* storage off */
  }
  nameInput.value = query.get("name") || storedName || "guest-" + Math.floor(Math.random() * 9000 + 1000);
  if (chat && config.tokenUrl) {
    // --auth jwt with --demo-token-url: a fresh token for this name from
    // the back end before every connection and whenever the server asks
    // for a refresh (see etc/token_backend.py).
    options.token = function () {
      var tokenUrl = config.tokenUrl + (config.tokenUrl.indexOf("?") < 0 ? "?" : "&") + "user=" + encodeURIComponent(nameInput.value);
      return fetch(tokenUrl, { cache: "no-store" }).then(function (r) {
        if (!r.ok) throw new Error(tokenUrl + ": HTTP " + r.status);
        return r.text();
      });
    };
  }
  var client = new WsHeart(url, options);
  // For tests and the curious: the client and everything that happened.
  var demo = (window.wsheartDemo = { client: client, states: [], messages: [], publications: [], subscribed: [] });

  function seconds(ms) {
    return ms < 10000 ? (ms / 1000).toFixed(1) + " s" : Math.round(ms / 1000) + " s";
  }

  function line(kind, text, who) {
    var item = document.createElement("li");
    item.className = kind;
    var time = document.createElement("time");
    time.textContent = new Date().toLocaleTimeString();
    item.appendChild(time);
    if (who) {
      var name = document.createElement("b");
      name.textContent = " " + who + ":";
      item.appendChild(name);
    }
    item.appendChild(document.createTextNode(" " + text));
    log.insertBefore(item, log.firstChild);
    while (log.children.length > 300) log.removeChild(log.lastChild);
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
      renderPresence(null);
    } else if (d.state === "closed") {
      line("state", "closed: " + d.reason);
    }
  });
  client.addEventListener("open", function () {
    line("state", "connected to " + url + (chat ? " (" + channel + ")" : ""));
    showQueued();
  });
  client.addEventListener("close", function (e) {
    line("state", "connection closed: " + e.detail.code + (e.detail.reason ? " " + e.detail.reason : ""));
  });
  client.addEventListener("heartbeat", function (e) {
    $("rtt").textContent = e.detail.rtt.toFixed(1) + " ms (smoothed " + e.detail.smoothedRtt.toFixed(1) + " ms)";
  });
  client.addEventListener("miss", function (e) {
    line("state", "no answer to a heartbeat (" + e.detail.misses + " of " + client.options.maxMissed + ")");
  });
  client.addEventListener("overflow", function () {
    line("error", "send queue full: message dropped");
  });

  // -- echo console (plain WebSocket) ------------------------------------
  client.addEventListener("message", function (e) {
    var text = typeof e.detail.data === "string" ? e.detail.data : "[" + e.detail.data.byteLength + " bytes]";
    demo.messages.push(text);
    line("in", text);
  });

  // -- chat room (wsheart.v1) --------------------------------------------
  function renderPresence(members) {
    var list = $("presence");
    list.replaceChildren();
    (members || []).forEach(function (m) {
      var li = document.createElement("li");
      li.textContent = m.name || m.id;
      li.dataset.id = m.id;
      list.appendChild(li);
    });
  }

  var missedCount = 0;
  client.addEventListener("subscribed", function (e) {
    var d = e.detail;
    demo.subscribed.push({ at: Date.now(), recovered: d.recovered, seq: d.seq });
    var before = client.positions[d.channel];
    missedCount = d.recovered && before ? d.seq - before.seq : 0;
    if (demo.subscribed.length > 1) {
      line(
        "state",
        d.recovered
          ? "back in " + d.channel + ": " + missedCount + " missed message(s) recovered"
          : "back in " + d.channel + ": history gone, earlier messages may be missing",
      );
    }
    renderPresence(d.presence);
  });
  client.addEventListener("publication", function (e) {
    var d = e.detail;
    var data = d.data || {};
    var text = typeof data === "object" ? String(data.text) : String(data);
    var who = typeof data === "object" && data.name ? String(data.name) : "?";
    demo.publications.push({ seq: d.seq, epoch: d.epoch, data: data });
    demo.messages.push(text);
    line(missedCount > 0 ? "in recovered" : "in", text + "  #" + d.seq, who);
    if (missedCount > 0) missedCount -= 1;
  });
  client.addEventListener("presence", function (e) {
    var d = e.detail;
    line("state", (d.client.name || d.client.id) + (d.event === "join" ? " joined" : " left"));
    renderPresence(d.members);
  });
  client.addEventListener("error", function (e) {
    line("error", "server refused: " + e.detail.code + " " + e.detail.reason);
  });

  if (chat) {
    client.subscribe(channel, { name: nameInput.value });
    $("title").textContent = "chat: " + channel;
    $("about").textContent =
      "Open this page in two tabs and talk. Take one offline (or stop the daemon) for a while, send from the other: " +
      "when it is back it shows what it missed, exactly once.";
  } else {
    $("title").textContent = "echo console";
    $("people").hidden = true;
    nameInput.hidden = true;
  }

  function showQueued() {
    $("queued").textContent = client.queued ? client.queued + " message(s) queued until the connection is back" : "";
  }

  $("composer").addEventListener("submit", function (e) {
    e.preventDefault();
    var input = $("message");
    if (!input.value) return;
    try {
      localStorage.setItem("wsheart-name", nameInput.value);
    } catch (err) {
      /* storage off */
    }
    var sent = chat ? client.publish(channel, { name: nameInput.value, text: input.value }) : client.send(input.value);
    if (!chat && sent) line("out", input.value);
    input.value = "";
    showQueued();
  });

  $("interval").textContent = seconds(client.options.interval);
  $("max-missed").textContent = String(client.options.maxMissed);
  showState({ state: client.state, attempt: client.attempt });
})();
