/*!
 * wsheart.js - the browser client of wsheart.  No dependencies.
 *
 * A WebSocket that notices a dead server and comes back politely:
 * - heartbeat: the text "ping" every `interval`, "pong" expected within
 *   `timeout`, the server is dead after `maxMissed` misses in a row (the
 *   server's defaults and bound: dead at most interval * maxMissed +
 *   timeout after it went silent).  Any message from the server is life.
 * - reconnects with full-jitter exponential backoff (a fleet of tabs never
 *   comes back in step), resets the schedule only after a stable period,
 *   obeys the server's 1012/1013 close hints ({"retry_after", "jitter"}),
 *   stops on terminal close codes and says why.
 * - a bounded send queue while not connected; overflow is reported.
 * - channels (the wsheart.v1 subprotocol, docs/protocol.md): subscribe(),
 *   publish(), presence, and recovery: after every reconnect it
 *   resubscribes from the last (epoch, seq) it saw, so the application
 *   gets every message it missed exactly once, or `recovered: false`.
 *
 * Use it as a classic script (<script src="/wsheart.js">: a global
 * `WsHeart`) or as an ES module (import { WsHeart } from "/wsheart.mjs").
 * Every duration is in milliseconds.  Types: /wsheart.d.ts.
 *
 *   const ws = new WsHeart("wss://example.org/");
 *   ws.addEventListener("message", (e) => console.log(e.detail.data));
 *   ws.addEventListener("state", (e) => console.log(e.detail.state));
 *   ws.send("hello");   // queued until open
 *   ws.close();         // for good
 */
var WsHeart = (function () {
  "use strict";

  var VERSION = "0.1.0";

  var DEFAULTS = {
    interval: 25000, // between heartbeat pings
    timeout: 10000, // for the pong
    maxMissed: 2, // misses in a row that make the server dead
    pingText: "ping",
    pongText: "pong",
    connectTimeout: 10000, // for the opening handshake
    initialDelay: 1000, // first backoff window
    factor: 2, // window growth per failure
    maxDelay: 60000, // largest window
    minDelay: 100, // added to every delay: no retry is immediate
    stableAfter: 30000, // open this long before the schedule resets
    maxAttempts: Infinity, // failed attempts in a row before giving up
    queueLimit: 100, // messages held while not connected
    protocols: undefined, // Sec-WebSocket-Protocol offer
    hints: true, // offer wsheart.hints (unless wsheart.v1 is offered): a busy server may then say when to come back in a 1013 close
    token: undefined, // for a daemon with --auth jwt: a string, or a function returning one (or a Promise of one), asked before every attempt
    binaryType: "arraybuffer",
  };

  // A hint longer than this is clamped: a broken server must not park
  // its clients for days.
  var MAX_HINT = 3600000;

  // Close codes after which retrying would be refused again.
  var TERMINAL = [1003, 1007, 1008, 1009, 1010, 4401, 4403, 4408];
  var V1 = "wsheart.v1";
  var HINTS = "wsheart.hints";
  var HINTED = [1012, 1013];

  /** The jitter window after `failures` failed attempts in a row. */
  function backoffWindow(failures, options) {
    var o = resolveOptions(options);
    var window = o.initialDelay;
    for (var i = 0; i < failures; i++) {
      window *= o.factor;
      if (window >= o.maxDelay) return o.maxDelay;
    }
    return Math.min(o.maxDelay, window);
  }

  /**
   * The reconnect hint of a close frame: {retryAfter, jitter} in ms, or
   * null.  Only 1012 and 1013 carry one, as JSON with a numeric
   * "retry_after" (seconds) and an optional numeric "jitter".
   */
  function parseHint(code, reason) {
    if (HINTED.indexOf(code) < 0 || !reason) return null;
    var data;
    try {
      data = JSON.parse(reason);
    } catch (e) {
      return null;
    }
    if (!data || typeof data !== "object" || !("retry_after" in data)) return null;
    var retryAfter = data.retry_after;
    var jitter = "jitter" in data ? data.jitter : 0;
    if (!isFiniteNumber(retryAfter) || !isFiniteNumber(jitter)) return null;
    // One hour at most in all: the jitter gets what the fixed wait leaves.
    var fixed = clamp(retryAfter * 1000);
    return { retryAfter: fixed, jitter: Math.min(clamp(jitter * 1000), MAX_HINT - fixed) };
  }

  function isFiniteNumber(value) {
    return typeof value === "number" && isFinite(value);
  }

  function clamp(ms) {
    return Math.min(MAX_HINT, Math.max(0, ms));
  }

  function resolveOptions(options) {
    var o = {};
    var key;
    for (key in DEFAULTS) o[key] = DEFAULTS[key];
    if (options) {
      for (key in options) {
        if (options[key] !== undefined) o[key] = options[key];
      }
    }
    // On wsheart.v1 every frame is JSON: the heartbeat is {"op":"ping"}.
    var offered = [].concat(o.protocols || []);
    if (offered.indexOf(V1) >= 0) {
      if (!options || options.pingText === undefined) o.pingText = '{"op":"ping"}';
      if (!options || options.pongText === undefined) o.pongText = '{"op":"pong"}';
    }
    positive(o, "interval");
    positive(o, "timeout");
    positive(o, "connectTimeout");
    positive(o, "initialDelay");
    positive(o, "stableAfter", true);
    positive(o, "minDelay", true);
    if (!(o.factor >= 1)) throw new RangeError("WsHeart: factor must be at least 1, got " + o.factor);
    if (!(o.maxDelay >= o.initialDelay)) {
      throw new RangeError("WsHeart: maxDelay (" + o.maxDelay + ") must be at least initialDelay (" + o.initialDelay + ")");
    }
    if (!(o.maxMissed >= 1) || Math.floor(o.maxMissed) !== o.maxMissed) {
      throw new RangeError("WsHeart: maxMissed must be a whole number of at least 1, got " + o.maxMissed);
    }
    if (!(o.maxAttempts >= 1)) throw new RangeError("WsHeart: maxAttempts must be at least 1, got " + o.maxAttempts);
    if (!(o.queueLimit >= 0)) throw new RangeError("WsHeart: queueLimit must not be negative, got " + o.queueLimit);
    return o;
  }

  function positive(o, key, zeroAllowed) {
    var v = o[key];
    if (typeof v !== "number" || isNaN(v) || v < 0 || (!zeroAllowed && v === 0) || v === Infinity) {
      throw new RangeError("WsHeart: " + key + " must be a " + (zeroAllowed ? "non-negative" : "positive") + " number of ms, got " + v);
    }
  }

  var realClock = {
    now: function () {
      return Date.now();
    },
    setTimeout: function (f, ms) {
      return setTimeout(f, ms);
    },
    clearTimeout: function (handle) {
      clearTimeout(handle);
    },
  };

  function globalOr(name) {
    return typeof globalThis !== "undefined" && name in globalThis ? globalThis[name] : null;
  }

  /**
   * new WsHeart(url, options)
   *
   * options: the durations and limits of DEFAULTS above, plus, for tests
   * and unusual hosts, `WebSocket` (constructor), `clock` ({now,
   * setTimeout, clearTimeout}), `random` (() => [0, 1)), `window` and
   * `document` (event targets for "online" and "visibilitychange"; null
   * turns that off).
   *
   * Events (CustomEvent, data in `detail`):
   * - "state": {state, attempt, delay, window, hinted, reason, retryAt}
   *   with state one of "connecting", "open", "reconnecting", "closed";
   * - "open": {attempt};  "message": {data};  "close": {code, reason,
   *   wasClean} (each time an open connection ends);
   * - "heartbeat": {rtt, smoothedRtt} for every pong;  "miss": {misses};
   * - "overflow": {data, queued} when send() finds the queue full.
   */
  class WsHeart extends EventTarget {
    constructor(url, options) {
      super();
      var given = options || {};
      this.url = String(url);
      this.options = resolveOptions(given);
      this._clock = given.clock || realClock;
      this._random = given.random || Math.random;
      this._WebSocket = given.WebSocket || globalOr("WebSocket");
      this._window = given.window !== undefined ? given.window : globalOr("window");
      this._document = given.document !== undefined ? given.document : globalOr("document");
      if (!this._WebSocket) throw new TypeError("WsHeart: no WebSocket implementation here; pass options.WebSocket");

      /** "connecting", "open", "reconnecting" or "closed". */
      this.state = "connecting";
      /** Attempts since the last open connection (the one in progress included). */
      this.attempt = 0;
      /** Failed attempts in a row: sizes the backoff window. */
      this.failures = 0;
      /** Last and smoothed heartbeat round trip, ms (null before the first pong). */
      this.rtt = null;
      this.smoothedRtt = null;
      /** Unanswered pings in a row. */
      this.misses = 0;
      /** Why it stopped, once state is "closed". */
      this.closeReason = null;
      /** When the pending reconnect attempt is due (clock ms), or null. */
      this.retryAt = null;

      /** wsheart.v1: channel -> {epoch, seq} of the last message seen (or null). */
      this.positions = Object.create(null); // no prototype: "constructor" is a fine channel name
      /** wsheart.v1: channel -> {connection id: client} as last told. */
      this.presence = Object.create(null);
      this._v1 = [].concat(this.options.protocols || []).indexOf(V1) >= 0;
      this._names = Object.create(null);

      this._ws = null;
      this._queue = [];
      this._stopped = false;
      this._stable = false;
      this._hintedWait = false;
      this._openedAt = null;
      this._lifeSincePing = false; // any message since the last ping
      this._pingSentAt = null; // the ping in flight, if any
      this._checkDue = null;
      this._timers = { connect: null, retry: null, stable: null, ping: null, check: null };

      this._connect(); // first: a malformed URL throws here, before any listener is added

      var self = this;
      this._onOnline = function () {
        self._wake("online");
      };
      this._onVisibility = function () {
        if (!self._document || self._document.visibilityState === "visible") self._wake("visible");
      };
      if (this._window && this._window.addEventListener) this._window.addEventListener("online", this._onOnline);
      if (this._document && this._document.addEventListener) {
        this._document.addEventListener("visibilitychange", this._onVisibility);
        this._document.addEventListener("resume", this._onVisibility);
      }
    }

    /**
     * Send a message, or queue it while not connected.  Returns false
     * (and fires "overflow") when the queue is full; throws after close().
     */
    send(data) {
      if (this._stopped) throw new Error("WsHeart: send() after the connection was closed for good");
      if (this._socketOpen()) {
        this._ws.send(data);
        return true;
      }
      if (this._queue.length >= this.options.queueLimit) {
        this._emit("overflow", { data: data, queued: this._queue.length });
        return false;
      }
      this._queue.push(data);
      return true;
    }

    /** Messages waiting for the next open connection. */
    get queued() {
      return this._queue.length;
    }

    /** Close for good: no reconnect after this. */
    close(code, reason) {
      if (this._stopped) return;
      var ws = this._ws;
      this._ws = null;
      if (ws) {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close(code === undefined ? 1000 : code, reason);
        } catch (e) {
          ws.close(); // a code the browser refuses (only 1000 and 3000-4999 are allowed)
        }
      }
      this._stop("closed by the application");
    }

    /** Send a heartbeat ping now (also done on "online" and when the page becomes visible). */
    probe() {
      if (this.state !== "open") return;
      this._sendPing();
    }

    // -- connecting -------------------------------------------------------

    _connect() {
      var self = this;
      this._clear("retry");
      this.retryAt = null;
      this._hintedWait = false;
      this.attempt += 1;
      this._setState("connecting", {});
      var token = this.options.token;
      if (typeof token === "function") {
        var attempt = this.attempt;
        var got;
        try {
          got = token();
        } catch (e) {
          this._closed(1006, "options.token failed: " + e, false);
          return;
        }
        if (got && typeof got.then === "function") {
          got.then(
            function (value) {
              if (!self._stopped && self.attempt === attempt && !self._ws) self._open(value);
            },
            function (e) {
              if (!self._stopped && self.attempt === attempt && !self._ws) self._closed(1006, "options.token failed: " + e, false);
            }
          );
          return;
        }
        token = got;
      }
      this._open(token);
    }

    _open(token) {
      var self = this;
      // The token travels as a subprotocol beside the others (a browser
      // cannot set headers; a URL would end up in logs); the server never
      // echoes it.
      var offered = [].concat(this.options.protocols || []);
      if (token) offered.push("wsheart.bearer." + token);
      // wsheart.hints tells the server this client reads the retry window
      // of a 1013 close: when it is too busy to take the connection now,
      // it opens it only to say when to come back (a browser cannot read
      // a 503's Retry-After).  The server selects it when it selects
      // nothing else - a browser fails a handshake whose offers were all
      // declined, such as a lone wsheart.bearer token - and wsheart.v1
      // says as much by itself.
      if (this.options.hints && offered.indexOf(V1) < 0 && offered.indexOf(HINTS) < 0) {
        offered.push(HINTS);
      }
      var ws = new this._WebSocket(this.url, offered.length ? offered : this.options.protocols);
      try {
        ws.binaryType = this.options.binaryType;
      } catch (e) {
        /* a host without binaryType */
      }
      this._ws = ws;
      this._openedAt = null;
      ws.onopen = function () {
        if (self._ws === ws) self._opened();
      };
      ws.onmessage = function (event) {
        if (self._ws === ws) self._received(event.data);
      };
      ws.onclose = function (event) {
        if (self._ws === ws) self._closed(event.code, event.reason, event.wasClean);
      };
      ws.onerror = function () {
        /* a close event follows */
      };
      this._timers.connect = this._clock.setTimeout(function () {
        self._timers.connect = null;
        if (self._ws === ws && self._openedAt === null) {
          self._abandon(ws);
          self._closed(1006, "opening handshake timed out", false);
        }
      }, this.options.connectTimeout);
    }

    _opened() {
      var self = this;
      var now = this._clock.now();
      this._clear("connect");
      this._openedAt = now;
      this._stable = false;
      this.misses = 0;
      var attempt = this.attempt;
      this.attempt = 0;
      if (this._v1 && this._ws.protocol !== V1) {
        // A server without channels: retrying will not change that.
        var refused = this._ws;
        this._stop("the server did not accept the " + V1 + " subprotocol");
        try {
          refused.close(1000);
        } catch (e) {
          /* closing */
        }
        return;
      }
      var ws = this._ws;
      this._setState("open", {});
      // A listener may have closed it (close() in an "open" or "state" listener).
      if (this._ws !== ws) return;
      this._emit("open", { attempt: attempt });
      if (this._ws !== ws) return;
      // Subscriptions first (with their positions), then what was queued.
      for (var channel in this.positions) this._sendSubscribe(channel);
      while (this._queue.length && this._ws === ws && this.state === "open") ws.send(this._queue.shift());
      this._timers.stable = this._clock.setTimeout(function () {
        self._timers.stable = null;
        self._stable = true;
        self.failures = 0;
      }, this.options.stableAfter);
      // The first ping somewhere in the first interval: tabs that
      // reconnected together do not ping together.
      this._schedulePing(this._random() * this.options.interval);
    }

    _closed(code, reason, wasClean) {
      var wasOpen = this._openedAt !== null;
      this._ws = null;
      this._openedAt = null;
      this._stopTimers();
      if (wasOpen) this._emit("close", { code: code, reason: reason || "", wasClean: !!wasClean });
      if (this._stopped) return;
      var description =
        code === 1006 ? "connection lost" + (reason ? " (" + reason + ")" : "") : "closed with " + code + (reason ? " (" + reason + ")" : "");
      if (!wasOpen) description = "connection failed before it opened" + (reason ? ": " + reason : "");
      if (wasOpen && TERMINAL.indexOf(code) >= 0) {
        this._stop("server refused: " + description);
        return;
      }
      var hint = wasOpen ? parseHint(code, reason) : null;
      if (hint) {
        var delay = this.options.minDelay + hint.retryAfter + this._random() * hint.jitter;
        // A server that hints right after every open is failing us: never
        // come back faster than the normal schedule says.  A hint at least
        // as long as that schedule's next window (admission control's slot
        // for this client) is kept as it is, not counted as a failure.
        if (!this._stable && hint.retryAfter < backoffWindow(this.failures, this.options)) delay = Math.max(delay, this._failed());
        this._retry(delay, description + ", server asked to wait", true);
        return;
      }
      this._retry(this._failed(), description, false);
    }

    _failed() {
      var delay = this.options.minDelay + this._random() * backoffWindow(this.failures, this.options);
      this.failures += 1;
      return delay;
    }

    _retry(delay, reason, hinted) {
      var self = this;
      if (this.failures >= this.options.maxAttempts) {
        this._stop("gave up after " + this.failures + " failed attempts; last: " + reason);
        return;
      }
      this.retryAt = this._clock.now() + delay;
      this._hintedWait = hinted;
      this._timers.retry = this._clock.setTimeout(function () {
        self._timers.retry = null;
        self._connect();
      }, delay);
      this._setState("reconnecting", {
        delay: delay,
        window: hinted ? null : backoffWindow(Math.max(0, this.failures - 1), this.options),
        hinted: hinted,
        reason: reason,
        retryAt: this.retryAt,
      });
    }

    _stop(reason) {
      this._stopped = true;
      this.closeReason = reason;
      this.retryAt = null;
      this._stopTimers();
      this._clear("retry");
      if (this._ws) this._abandon(this._ws);
      this._ws = null;
      if (this._window && this._window.removeEventListener) this._window.removeEventListener("online", this._onOnline);
      if (this._document && this._document.removeEventListener) {
        this._document.removeEventListener("visibilitychange", this._onVisibility);
        this._document.removeEventListener("resume", this._onVisibility);
      }
      this._setState("closed", { reason: reason });
    }

    /** Stop listening to a socket we no longer trust, and close it. */
    _abandon(ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch (e) {
        /* already closed */
      }
    }

    /** Back online, or visible again: check the connection, or retry now. */
    _wake(why) {
      if (this._stopped) return;
      if (this.state === "open") {
        this.probe();
      } else if (this.state === "reconnecting" && !this._hintedWait) {
        // The backoff waited for the network or a throttled timer; a
        // server's hint is kept (it asked for this wait).
        if (why === "online" || this._clock.now() >= this.retryAt) this._connect();
      }
    }

    // -- heartbeat --------------------------------------------------------

    _received(data) {
      var now = this._clock.now();
      this._lifeSincePing = true;
      this.misses = 0;
      if (typeof data === "string" && this.options.pongText !== null && data === this.options.pongText) {
        if (this._pingSentAt !== null) {
          var rtt = now - this._pingSentAt;
          this._pingSentAt = null;
          this.rtt = rtt;
          this.smoothedRtt = this.smoothedRtt === null ? rtt : this.smoothedRtt + (rtt - this.smoothedRtt) / 8;
          this._emit("heartbeat", { rtt: rtt, smoothedRtt: this.smoothedRtt });
        }
        return;
      }
      if (this._v1 && typeof data === "string" && this._v1Frame(data)) return;
      this._emit("message", { data: data });
    }

    // -- wsheart.v1 -------------------------------------------------------

    /**
     * Subscribe to a channel now and after every reconnect, resuming from
     * the last message seen.  options.name: shown to others in presence.
     */
    subscribe(channel, options) {
      this._needV1("subscribe");
      if (options && options.name !== undefined) this._names[channel] = options.name;
      if (!(channel in this.positions)) {
        this.positions[channel] = null;
        if (this._socketOpen()) this._sendSubscribe(channel);
      }
    }

    unsubscribe(channel) {
      this._needV1("unsubscribe");
      if (channel in this.positions) {
        delete this.positions[channel];
        delete this.presence[channel];
        if (this._socketOpen()) this._ws.send(JSON.stringify({ op: "unsubscribe", channel: channel }));
      }
    }

    /** Publish to a channel (queued like send() while not connected). */
    publish(channel, data, ref) {
      this._needV1("publish");
      var frame = { op: "publish", channel: channel, data: data };
      if (ref !== undefined) frame.ref = ref;
      return this.send(JSON.stringify(frame));
    }

    _needV1(what) {
      if (!this._v1) throw new Error("WsHeart: " + what + "() needs options.protocols to include \"" + V1 + "\"");
    }

    /**
     * Whether the socket takes data now.  A browser going offline starts
     * closing the socket before its close event reaches us: sending then
     * would be lost (and logged as an error), so send() queues instead.
     */
    _socketOpen() {
      return this.state === "open" && !!this._ws && this._ws.readyState === 1;
    }

    _sendSubscribe(channel) {
      var frame = { op: "subscribe", channel: channel };
      var position = this.positions[channel];
      if (position) frame.since = { epoch: position.epoch, seq: position.seq };
      if (this._names[channel] !== undefined) frame.name = this._names[channel];
      this._ws.send(JSON.stringify(frame));
    }

    _refreshToken() {
      var self = this;
      var ws = this._ws;
      var send = function (token) {
        if (self._ws === ws && self._socketOpen() && token) ws.send(JSON.stringify({ op: "auth", token: String(token) }));
      };
      var fail = function (e) {
        self._emit("error", { code: 0, reason: "options.token failed: " + e, channel: null, ref: undefined, retryAfter: undefined });
      };
      if (typeof this.options.token !== "function") return; // a fixed token cannot be refreshed: the server closes with 4001, and we reconnect
      var got;
      try {
        got = this.options.token();
      } catch (e) {
        fail(e);
        return;
      }
      if (got && typeof got.then === "function") got.then(send, fail);
      else send(got);
    }

    /** Handle one wsheart.v1 frame; false if it is not one. */
    _v1Frame(text) {
      var frame;
      try {
        frame = JSON.parse(text);
      } catch (e) {
        return false;
      }
      if (!frame || typeof frame !== "object" || typeof frame.op !== "string") return false;
      var channel = frame.channel;
      var subscribed = typeof channel === "string" && channel in this.positions;
      switch (frame.op) {
        case "message":
          if (subscribed) {
            var position = this.positions[channel];
            // Already delivered (a resubscribe racing a live message): once only.
            if (position && position.epoch === frame.epoch && frame.seq <= position.seq) return true;
            this.positions[channel] = { epoch: frame.epoch, seq: frame.seq };
            this._emit("publication", { channel: channel, data: frame.data, epoch: frame.epoch, seq: frame.seq });
          }
          return true;
        case "subscribed":
          if (subscribed) {
            // With recovery the missed messages follow and move the
            // position themselves; without, start from the present.
            if (!frame.recovered) this.positions[channel] = { epoch: frame.epoch, seq: frame.seq };
            if (frame.presence) {
              var members = Object.create(null);
              frame.presence.forEach(function (c) {
                members[c.id] = c;
              });
              this.presence[channel] = members;
            }
            // A channel with more members than one frame can list says so:
            // presenceComplete false, presenceCount the real number.
            this._emit("subscribed", {
              channel: channel, recovered: !!frame.recovered, epoch: frame.epoch, seq: frame.seq,
              presence: frame.presence || null,
              presenceComplete: frame.presence_complete !== false,
              presenceCount: typeof frame.presence_count === "number" ? frame.presence_count : (frame.presence ? frame.presence.length : 0),
              // Set when the server says so while connected: messages were lost (new epoch, history lost).
              reason: typeof frame.reason === "string" ? frame.reason : null
            });
          }
          return true;
        case "join":
        case "leave":
          if (subscribed && frame.client) {
            var present = this.presence[channel] || (this.presence[channel] = Object.create(null));
            if (frame.op === "join") present[frame.client.id] = frame.client;
            else delete present[frame.client.id];
            this._emit("presence", { channel: channel, event: frame.op, client: frame.client, members: Object.keys(present).map(function (id) { return present[id]; }) });
          }
          return true;
        case "error":
          if ((frame.code === 503 || frame.code === 429) && channel in this.positions && isFiniteNumber(frame.retry_after) && frame.retry_after >= 0) {
            // The server's channels were unavailable (its Redis): subscribe
            // again when it says, spread so that clients do not return together.
            var self = this;
            this._clock.setTimeout(function () {
              if (self._socketOpen() && channel in self.positions) self._sendSubscribe(channel);
            }, Math.min(frame.retry_after, 3600) * 1000 * (1 + this._random()));
          }
          this._emit("error", { code: frame.code, reason: frame.reason, channel: channel || null, ref: frame.ref, retryAfter: frame.retry_after });
          return true;
        case "published":
        case "unsubscribed":
          this._emit(frame.op, frame);
          return true;
        case "refresh":
          // The server asks for a fresh token before this one expires.
          this._refreshToken();
          return true;
        case "authed":
          this._emit("authed", { sub: frame.sub, expiresIn: frame.expires_in });
          return true;
        default:
          return false;
      }
    }

    _schedulePing(delay) {
      var self = this;
      this._clear("ping");
      this._timers.ping = this._clock.setTimeout(function () {
        self._timers.ping = null;
        self._sendPing();
      }, Math.max(0, delay));
    }

    _sendPing() {
      var self = this;
      if (this.state !== "open" || !this._ws || this.options.pingText === null) return;
      this._clear("ping");
      this._clear("check");
      var now = this._clock.now();
      this._pingSentAt = now;
      this._lifeSincePing = false;
      this._checkDue = now + this.options.timeout;
      // The check below still runs: a socket the browser is closing
      // answers nothing, and is found dead like any other.
      if (this._socketOpen()) this._ws.send(this.options.pingText);
      this._timers.check = this._clock.setTimeout(function () {
        self._timers.check = null;
        self._check(now);
      }, this.options.timeout);
    }

    _check(sentAt) {
      var now = this._clock.now();
      var late = now - this._checkDue;
      // A timer that ran this late means the page was asleep or throttled:
      // the pong may be waiting behind this very timer, so a missing pong
      // proves nothing.  Probe again instead of counting a miss.
      var tolerance = Math.min(1000, this.options.timeout / 2);
      if (!this._lifeSincePing) {
        if (late > tolerance) {
          this._sendPing();
          return;
        }
        this.misses += 1;
        this._emit("miss", { misses: this.misses });
        if (this.misses >= this.options.maxMissed) {
          this._declareDead();
          return;
        }
      }
      this._schedulePing(sentAt + this.options.interval - now);
    }

    _declareDead() {
      // Waiting for the browser to finish a closing handshake with a dead
      // server can take minutes: leave the socket and move on now.
      var ws = this._ws;
      if (ws) this._abandon(ws);
      this._closed(1006, "heartbeat timeout", false);
    }

    // -- helpers ----------------------------------------------------------

    _setState(state, detail) {
      this.state = state;
      var d = {
        state: state,
        attempt: state === "reconnecting" ? this.attempt + 1 : this.attempt,
        delay: null,
        window: null,
        hinted: false,
        reason: null,
        retryAt: null,
      };
      for (var key in detail) d[key] = detail[key];
      this._emit("state", d);
    }

    _emit(type, detail) {
      this.dispatchEvent(new CustomEvent(type, { detail: detail }));
    }

    _clear(name) {
      if (this._timers[name] !== null) {
        this._clock.clearTimeout(this._timers[name]);
        this._timers[name] = null;
      }
    }

    _stopTimers() {
      this._clear("connect");
      this._clear("stable");
      this._clear("ping");
      this._clear("check");
      this._pingSentAt = null;
    }
  }

  WsHeart.VERSION = VERSION;
  WsHeart.DEFAULTS = Object.freeze(resolveOptions({}));
  WsHeart.TERMINAL_CODES = Object.freeze(TERMINAL.slice());
  WsHeart.backoffWindow = backoffWindow;
  WsHeart.parseHint = parseHint;
  return WsHeart;
})();
