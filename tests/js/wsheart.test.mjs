// Unit tests of wsheart.js: backoff, heartbeat, hints, queue.  Run with
//   node --test tests/js/
// (the trial suite runs this too: tests/test_integration_browser_library.py).

import { test } from "node:test";
import assert from "node:assert/strict";

import { WsHeart, makeClient, scriptedRandom, loadWsHeart } from "./harness.mjs";

/** Let `ms` pass on an open connection whose server answers every ping. */
function keepAlive({ clock, socket }, ms) {
  for (let t = 0; t < ms; t += 100) {
    clock.advance(100);
    const ws = socket();
    if (ws.readyState === 1 && ws.sent.length > (ws.pongs || 0)) {
      ws.pongs = ws.sent.length;
      ws.serverSends("pong");
    }
  }
}

const states = (events) => events.filter((e) => e.type === "state").map((e) => e.state);

// -- backoff ----------------------------------------------------------------

test("backoff windows grow by the factor up to the cap", () => {
  const o = { initialDelay: 1000, factor: 2, maxDelay: 10000 };
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 100].map((n) => WsHeart.backoffWindow(n, o)),
    [1000, 2000, 4000, 8000, 10000, 10000, 10000],
  );
  // No overflow to Infinity at absurd counts.
  assert.equal(WsHeart.backoffWindow(5000, { factor: 10 }), 60000);
});

test("reconnect delays are full jitter over the window, plus the floor", () => {
  const randoms = [0.5, 1, 0, 0.25, 0.999];
  const { clock, socket, events } = makeClient({ random: scriptedRandom([0.1, ...randoms]) }); // 0.1: first-ping spread, unused
  const delays = [];
  for (let i = 0; i < randoms.length; i++) {
    socket().connectionFails();
    const last = events.at(-1);
    assert.equal(last.state, "reconnecting");
    delays.push(last.delay);
    clock.advance(last.delay);
  }
  // floor 100 + r * min(60000, 1000 * 2^n)
  assert.deepEqual(delays, [100 + 0.1 * 1000, 100 + 0.5 * 2000, 100 + 1 * 4000, 100 + 0 * 8000, 100 + 0.25 * 16000]);
});

test("two clients with real randomness do not retry in step", () => {
  const a = makeClient({ random: Math.random });
  const b = makeClient({ random: Math.random });
  const da = [], db = [];
  for (let i = 0; i < 5; i++) {
    a.socket().connectionFails();
    b.socket().connectionFails();
    da.push(a.events.at(-1).delay);
    db.push(b.events.at(-1).delay);
    a.clock.advance(da.at(-1));
    b.clock.advance(db.at(-1));
  }
  assert.notDeepEqual(da, db);
});

test("the schedule resets only after a stable period", () => {
  const { client, clock, socket } = makeClient({ stableAfter: 30000 });
  socket().connectionFails();
  clock.advance(client.retryAt - clock.now());
  socket().connectionFails();
  assert.equal(client.failures, 2);
  clock.advance(client.retryAt - clock.now());
  socket().serverOpens();
  clock.advance(5000);
  socket().serverCloses(1006, "", false); // died before it was stable
  assert.equal(client.failures, 3);
  clock.advance(client.retryAt - clock.now());
  socket().serverOpens();
  keepAlive({ clock, socket }, 30000);
  assert.equal(client.failures, 0);
});

test("attempt numbers count from the last open connection", () => {
  const { client, clock, socket, events } = makeClient();
  socket().connectionFails();
  assert.equal(events.at(-1).attempt, 2);
  clock.advance(client.retryAt - clock.now());
  assert.equal(client.attempt, 2);
  socket().connectionFails();
  assert.equal(events.at(-1).attempt, 3);
  clock.advance(client.retryAt - clock.now());
  socket().serverOpens();
  assert.equal(client.attempt, 0);
  assert.equal(events.find((e) => e.type === "open").attempt, 3);
});

test("maxAttempts gives up with a reason", () => {
  const { client, clock, socket, events } = makeClient({ maxAttempts: 2 });
  socket().connectionFails();
  clock.advance(client.retryAt - clock.now());
  socket().connectionFails();
  assert.equal(client.state, "closed");
  assert.match(client.closeReason, /gave up after 2 failed attempts/);
  assert.equal(events.at(-1).state, "closed");
  assert.equal(clock.pending(), 0);
});

test("a connection that never opens times out and counts as a failure", () => {
  const { client, clock, WebSocket } = makeClient({ connectTimeout: 5000 });
  clock.advance(5000);
  assert.equal(client.state, "reconnecting");
  assert.equal(client.failures, 1);
  assert.notEqual(WebSocket.sockets[0].closedWith, null);
});

// -- heartbeat --------------------------------------------------------------

function openClient(options = {}) {
  const parts = makeClient({ random: () => 0, interval: 1000, timeout: 400, maxMissed: 2, ...options });
  parts.socket().serverOpens();
  return parts;
}

test("pings on the interval; a pong gives the RTT and is not a message", () => {
  const { client, clock, socket, events } = openClient();
  clock.advance(0);
  assert.deepEqual(socket().sent, ["ping"]);
  clock.advance(30);
  socket().serverSends("pong");
  assert.equal(client.rtt, 30);
  assert.equal(events.filter((e) => e.type === "message").length, 0);
  assert.deepEqual(events.filter((e) => e.type === "heartbeat").map((e) => e.rtt), [30]);
  clock.advance(970);
  assert.deepEqual(socket().sent, ["ping", "ping"]);
  socket().serverSends("hello");
  assert.deepEqual(events.filter((e) => e.type === "message").map((e) => e.data), ["hello"]);
});

test("a silent server is dead within interval * maxMissed + timeout", () => {
  for (const silentAt of [0, 1, 250, 399, 400, 401, 700, 999, 1000, 1500]) {
    const { client, clock, socket, events } = openClient();
    const ws = socket();
    // Answer every ping until silentAt, then nothing.
    let t = 0;
    while (t < silentAt) {
      clock.advance(1);
      t += 1;
      if (ws.sent.length && ws.sent.at(-1) === "ping" && !ws.answered?.includes(ws.sent.length)) {
        ws.answered = [...(ws.answered || []), ws.sent.length];
        ws.serverSends("pong");
      }
    }
    let waited = 0;
    while (client.state === "open" && waited < 10000) {
      clock.advance(1);
      waited += 1;
    }
    assert.equal(client.state, "reconnecting", `silent at ${silentAt}`);
    assert.ok(waited <= 1000 * 2 + 400, `silent at ${silentAt}: dead after ${waited} ms`);
    assert.match(events.filter((e) => e.type === "close").at(-1).reason, /heartbeat timeout/);
    assert.notEqual(ws.closedWith, null, "the dead socket is closed");
  }
});

test("one miss is not death, and traffic resets the count", () => {
  const { client, clock, socket, events } = openClient();
  clock.advance(400); // ping at 0 unanswered
  assert.equal(client.misses, 1);
  assert.equal(client.state, "open");
  socket().serverSends("some data");
  assert.equal(client.misses, 0);
  clock.advance(600); // ping at 1000
  clock.advance(400); // unanswered, but one miss only
  assert.equal(client.state, "open");
  assert.deepEqual(events.filter((e) => e.type === "miss").map((e) => e.misses), [1, 1]);
});

test("a check that runs late (sleeping or throttled page) probes instead of counting a miss", () => {
  const { client, clock, socket, events } = openClient();
  clock.advance(0); // ping sent at t0
  clock.jump(60000); // the page slept; the check timer fires a minute late
  clock.advance(0);
  assert.equal(client.misses, 0, "no miss on a late timer");
  assert.equal(client.state, "open");
  assert.deepEqual(socket().sent, ["ping", "ping"], "a probe went out at once");
  socket().serverSends("pong");
  clock.advance(400);
  assert.equal(client.misses, 0);
  assert.equal(events.filter((e) => e.type === "miss").length, 0);
});

test("late checks do not hide a dead server for ever once timers run on time", () => {
  const { client, clock } = openClient();
  clock.advance(0);
  clock.jump(60000);
  clock.advance(0); // late: probe
  let waited = 0;
  while (client.state === "open" && waited < 10000) {
    clock.advance(1); // timers on time again, nothing answers
    waited += 1;
  }
  assert.equal(client.state, "reconnecting");
  assert.ok(waited <= 1000 * 2 + 400, `dead after ${waited} ms`);
});

test("coming back online or visible probes at once", () => {
  const { clock, socket, win, doc } = openClient({ interval: 25000, timeout: 10000 });
  clock.advance(0);
  assert.equal(socket().sent.length, 1);
  socket().serverSends("pong");
  win.dispatchEvent(new Event("online"));
  assert.equal(socket().sent.length, 2);
  doc.visibilityState = "hidden";
  doc.dispatchEvent(new Event("visibilitychange"));
  assert.equal(socket().sent.length, 2, "hiding does not probe");
  doc.visibilityState = "visible";
  doc.dispatchEvent(new Event("visibilitychange"));
  assert.equal(socket().sent.length, 3);
});

test("online while waiting on backoff retries now; a server hint is kept", () => {
  const a = makeClient();
  a.socket().connectionFails();
  assert.equal(a.client.state, "reconnecting");
  a.win.dispatchEvent(new Event("online"));
  assert.equal(a.client.state, "connecting");

  const b = makeClient();
  b.socket().serverOpens();
  keepAlive(b, 40000);
  b.socket().serverCloses(1012, JSON.stringify({ retry_after: 5, jitter: 0 }));
  b.win.dispatchEvent(new Event("online"));
  assert.equal(b.client.state, "reconnecting");
});

// -- hints and terminal codes ----------------------------------------------

test("hint parsing accepts only 1012/1013 with a numeric retry_after", () => {
  assert.deepEqual(WsHeart.parseHint(1012, '{"retry_after": 5, "jitter": 10}'), { retryAfter: 5000, jitter: 10000 });
  assert.deepEqual(WsHeart.parseHint(1013, '{"retry_after": 2}'), { retryAfter: 2000, jitter: 0 });
  assert.deepEqual(WsHeart.parseHint(1012, '{"retry_after": 1e9}'), { retryAfter: 3600000, jitter: 0 });
  assert.deepEqual(WsHeart.parseHint(1012, '{"retry_after": -3}'), { retryAfter: 0, jitter: 0 });
  // One hour in all, not one hour each: the jitter gets what is left.
  assert.deepEqual(WsHeart.parseHint(1012, '{"retry_after": 3000, "jitter": 3600}'), { retryAfter: 3000000, jitter: 600000 });
  assert.deepEqual(WsHeart.parseHint(1013, '{"retry_after": 1e9, "jitter": 1e9}'), { retryAfter: 3600000, jitter: 0 });
  for (const [code, reason] of [
    [1000, '{"retry_after": 5}'],
    [1012, ""],
    [1012, "going down"],
    [1012, '{"jitter": 5}'],
    [1012, '{"retry_after": "5"}'],
    [1012, '{"retry_after": 5, "jitter": null}'],
    [1012, "[5]"],
    [1012, "null"],
  ]) {
    assert.equal(WsHeart.parseHint(code, reason), null, `${code} ${reason}`);
  }
});

test("a 1012 hint makes the client wait retry_after + uniform(0, jitter)", () => {
  const parts = makeClient({ random: scriptedRandom([0, 0.5]) });
  const { client, clock, socket, events } = parts;
  socket().serverOpens();
  keepAlive(parts, 40000); // stable
  socket().serverCloses(1012, JSON.stringify({ retry_after: 5, jitter: 10 }));
  const waiting = events.at(-1);
  assert.equal(waiting.state, "reconnecting");
  assert.equal(waiting.hinted, true);
  assert.equal(waiting.delay, 100 + 5000 + 0.5 * 10000);
  assert.equal(client.failures, 0, "a hinted close is not a failure");
  clock.advance(waiting.delay - 1);
  assert.equal(client.state, "reconnecting");
  clock.advance(1);
  assert.equal(client.state, "connecting");
});

test("a hint right after open never comes back faster than the backoff", () => {
  const { socket, events } = makeClient({ random: () => 1, initialDelay: 20000, maxDelay: 60000 });
  socket().serverOpens();
  socket().serverCloses(1013, JSON.stringify({ retry_after: 1 }));
  assert.equal(events.at(-1).delay, 100 + 20000);
});

test("terminal close codes stop reconnecting and say why", () => {
  for (const code of [1003, 1007, 1008, 1009, 4401, 4403, 4408]) {
    const { client, clock, socket } = makeClient();
    socket().serverOpens();
    socket().serverCloses(code, "no");
    assert.equal(client.state, "closed", `code ${code}`);
    assert.match(client.closeReason, new RegExp(`server refused: closed with ${code} \\(no\\)`));
    assert.equal(clock.pending(), 0, "no timer left behind");
  }
  const { client, socket } = makeClient();
  socket().serverOpens();
  socket().serverCloses(1011, "heartbeat timeout");
  assert.equal(client.state, "reconnecting", "1011 is an outage, not a refusal");
});

// -- queue, close, options -------------------------------------------------

test("messages queue while not connected and go out in order on open", () => {
  const { client, socket } = makeClient({ queueLimit: 3 });
  assert.equal(client.send("a"), true);
  assert.equal(client.send("b"), true);
  assert.equal(client.queued, 2);
  socket().serverOpens();
  assert.deepEqual(socket().sent.slice(0, 2), ["a", "b"]);
  assert.equal(client.queued, 0);
  client.send("c");
  assert.equal(socket().sent.at(-1), "c");
});

test("a socket the browser is already closing gets nothing: sends queue for the next connection", () => {
  // Going offline, Chromium starts closing the socket (readyState 2)
  // before its close event arrives; a send then would be lost and logged.
  const { client, clock, socket, events } = makeClient();
  socket().serverOpens();
  const first = socket();
  first.readyState = 2;
  assert.equal(client.send("kept"), true);
  assert.equal(client.queued, 1);
  clock.advance(1000); // a heartbeat ping falls due: skipped, nothing thrown
  assert.deepEqual(first.sent, []);
  first.serverCloses(1006, "", false);
  const retry = events.filter((e) => e.type === "state" && e.state === "reconnecting").at(-1);
  clock.advance(retry.delay);
  assert.notEqual(socket(), first);
  socket().serverOpens();
  assert.deepEqual(socket().sent.slice(0, 1), ["kept"]);
  assert.equal(client.queued, 0);
});

test("a full queue reports overflow and keeps what it holds", () => {
  const { client, socket, events } = makeClient({ queueLimit: 2 });
  client.send(1);
  client.send(2);
  assert.equal(client.send(3), false);
  assert.deepEqual(
    events.filter((e) => e.type === "overflow").map((e) => [e.data, e.queued]),
    [[3, 2]],
  );
  socket().serverOpens();
  assert.deepEqual(socket().sent.slice(0, 2), [1, 2]);
});

test("close() stops for good: no timers, no listeners, send throws", () => {
  const { client, clock, socket, win, WebSocket, events } = openClient();
  clock.advance(0);
  client.close(1000, "bye");
  assert.equal(client.state, "closed");
  assert.deepEqual(socket().closedWith, { code: 1000, reason: "bye" });
  assert.equal(clock.pending(), 0);
  win.dispatchEvent(new Event("online"));
  clock.advance(100000);
  assert.equal(WebSocket.sockets.length, 1);
  assert.throws(() => client.send("x"), /closed for good/);
  assert.equal(states(events).at(-1), "closed");
  const reopened = makeClient();
  reopened.socket().connectionFails();
  reopened.client.close();
  reopened.clock.advance(100000);
  assert.equal(reopened.WebSocket.sockets.length, 1, "a pending retry is cancelled");
});

test("bad options and URLs are refused with a clear error", () => {
  assert.throws(() => makeClient({ interval: 0 }), /interval must be a positive number/);
  assert.throws(() => makeClient({ timeout: "10" }), /timeout must be a positive number/);
  assert.throws(() => makeClient({ factor: 0.5 }), /factor must be at least 1/);
  assert.throws(() => makeClient({ maxDelay: 10, initialDelay: 100 }), /maxDelay/);
  assert.throws(() => makeClient({ maxMissed: 1.5 }), /maxMissed/);
  assert.throws(() => makeClient({ queueLimit: -1 }), /queueLimit/);
  const FakeWs = class {
    constructor(url) {
      throw new SyntaxError(`bad URL ${url}`);
    }
  };
  const win = new EventTarget();
  let added = 0;
  win.addEventListener = () => added++;
  assert.throws(() => new WsHeart("nope", { WebSocket: FakeWs, window: win, document: null }), SyntaxError);
  assert.equal(added, 0, "nothing registered for a client that never started");
});

test("state events narrate the life of a connection", () => {
  const parts = makeClient();
  const { client, clock, socket, events } = parts;
  assert.equal(client.state, "connecting");
  socket().serverOpens();
  keepAlive(parts, 40000);
  socket().serverCloses(1006, "", false);
  clock.advance(client.retryAt - clock.now());
  client.close();
  assert.deepEqual(states(events), ["open", "reconnecting", "connecting", "closed"]);
});

test("the library version matches the Python package", async () => {
  const { readFileSync } = await import("node:fs");
  const init = readFileSync(new URL("../../wsheart/__init__.py", import.meta.url), "utf8");
  assert.equal(loadWsHeart().VERSION, /__version__ = "([^"]+)"/.exec(init)[1]);
});

// -- admission control: telling the server this client reads hints ----------------

test("a plain client offers wsheart.hints, so a busy server can say in-band when to come back", () => {
  assert.deepEqual(makeClient({}).socket().protocols, ["wsheart.hints"]);
  assert.deepEqual(makeClient({ protocols: ["chat"] }).socket().protocols, ["chat", "wsheart.hints"]);
  assert.deepEqual(makeClient({ protocols: ["wsheart.v1"] }).socket().protocols, ["wsheart.v1"], "wsheart.v1 says it already");
  assert.deepEqual(makeClient({ token: "t" }).socket().protocols, ["wsheart.bearer.t", "wsheart.hints"], "a lone bearer token is never selected: hints is");
  assert.equal(makeClient({ hints: false }).socket().protocols, undefined, "hints: false offers nothing");
});

test("refused by admission control (1013 right after the open), the client waits out the hint and no less than its backoff", () => {
  const { clock, socket, events } = makeClient({ random: () => 0.5 });
  socket().serverOpens();
  socket().serverCloses(1013, '{"retry_after":7.25,"jitter":1}');
  const state = events.at(-1);
  assert.equal(state.state, "reconnecting");
  assert.equal(state.hinted, true);
  assert.equal(state.delay, 100 + 7250 + 500);
  clock.advance(state.delay - 1);
  assert.equal(events.at(-1).state, "reconnecting", "not a millisecond early");
});

test("an admission slot at least as long as the backoff window is kept exactly, not counted as a failure", () => {
  const { client, clock, socket, events } = makeClient({ random: () => 0.5 });
  for (const wait of [5, 6, 7]) {
    socket().serverOpens();
    socket().serverCloses(1013, JSON.stringify({ retry_after: wait, jitter: 2 }));
    assert.equal(events.at(-1).delay, 100 + wait * 1000 + 1000);
    assert.equal(client.failures, 0, "the window does not grow past the slot");
    clock.advance(events.at(-1).delay);
  }
  socket().serverOpens();
  socket().serverCloses(1013, JSON.stringify({ retry_after: 0.2 }));
  assert.equal(client.failures, 1, "a hint shorter than the window is a failure");
});

// -- tokens (a daemon with --auth jwt) -----------------------------------------

test("a token string is offered as a wsheart.bearer subprotocol beside the others", () => {
  const { socket } = makeClient({ protocols: ["wsheart.v1"], token: "eyJ.a.b" });
  assert.deepEqual(socket().protocols, ["wsheart.v1", "wsheart.bearer.eyJ.a.b"]);
});

test("a token function is asked before every attempt, so a reconnect carries a fresh token", () => {
  let n = 0;
  const { clock, socket, events } = makeClient({ token: () => `t${++n}` });
  assert.deepEqual(socket().protocols, ["wsheart.bearer.t1", "wsheart.hints"]);
  socket().serverOpens();
  socket().serverCloses(4001, "token expired"); // not terminal: get a new one, come back
  assert.equal(events.at(-1).state, "reconnecting");
  clock.advance(events.at(-1).delay);
  assert.deepEqual(socket().protocols, ["wsheart.bearer.t2", "wsheart.hints"]);
});

test("a token Promise is awaited; a rejected one counts as a failed attempt", async () => {
  let fail = true;
  const { clock, WebSocket, socket, events } = makeClient({
    token: () => (fail ? Promise.reject(new Error("auth server down")) : Promise.resolve("fresh")),
  });
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(WebSocket.sockets.length, 0, "no socket without a token");
  const retry = events.at(-1);
  assert.equal(retry.state, "reconnecting");
  assert.match(retry.reason || JSON.stringify(retry), /auth server down/);
  fail = false;
  clock.advance(retry.delay);
  await Promise.resolve();
  await Promise.resolve();
  assert.deepEqual(socket().protocols, ["wsheart.bearer.fresh", "wsheart.hints"]);
});

test("asked to refresh, the client sends a fresh token from its function on the open socket", async () => {
  let n = 0;
  const { socket, events } = makeClient({ protocols: ["wsheart.v1"], token: () => Promise.resolve(`t${++n}`) });
  await Promise.resolve();
  await Promise.resolve();
  socket().serverOpens("wsheart.v1");
  socket().serverSends(JSON.stringify({ op: "refresh", expires_in: 30 }));
  await Promise.resolve();
  await Promise.resolve();
  assert.deepEqual(socket().sent.map((s) => JSON.parse(s)).filter((f) => f.op === "auth"), [{ op: "auth", token: "t2" }]);
  socket().serverSends(JSON.stringify({ op: "authed", sub: "ann", expires_in: 600 }));
  assert.deepEqual(events.filter((e) => e.type === "authed"), [{ type: "authed", sub: "ann", expiresIn: 600 }]);
});
