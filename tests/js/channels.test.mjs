// Unit tests of wsheart.js on the wsheart.v1 subprotocol: subscriptions,
// positions and recovery across reconnects, presence, publish.

import { test } from "node:test";
import assert from "node:assert/strict";

import { makeClient } from "./harness.mjs";

const V1 = "wsheart.v1";
const frames = (ws) => ws.sent.map((t) => JSON.parse(t));
const msg = (seq, data, epoch = "e1", channel = "room") => JSON.stringify({ op: "message", channel, epoch, seq, data });

function v1Client(options = {}) {
  const parts = makeClient({ protocols: [V1], random: () => 0.999, interval: 60000, ...options });
  return parts;
}

test("the heartbeat speaks JSON on wsheart.v1", () => {
  const { client } = v1Client();
  assert.equal(client.options.pingText, '{"op":"ping"}');
  assert.equal(client.options.pongText, '{"op":"pong"}');
});

test("subscribes on open, resubscribes from its position after a reconnect", () => {
  const { client, clock, socket, events } = v1Client();
  client.subscribe("room", { name: "ann" });
  assert.deepEqual(socket().sent, [], "nothing sent before open");
  socket().serverOpens(V1);
  assert.deepEqual(frames(socket()), [{ op: "subscribe", channel: "room", name: "ann" }]);
  socket().serverSends(JSON.stringify({ op: "subscribed", channel: "room", epoch: "e1", seq: 4, recovered: false, presence: [{ id: "c1", name: "ann" }] }));
  socket().serverSends(msg(5, "a"));
  socket().serverSends(msg(6, "b"));
  assert.deepEqual(client.positions.room, { epoch: "e1", seq: 6 });
  socket().serverCloses(1006, "", false);
  clock.advance(client.retryAt - clock.now());
  socket().serverOpens(V1);
  assert.deepEqual(frames(socket())[0], { op: "subscribe", channel: "room", since: { epoch: "e1", seq: 6 }, name: "ann" });
  // Recovered: the subscribed frame names the channel's present, the missed follow.
  socket().serverSends(JSON.stringify({ op: "subscribed", channel: "room", epoch: "e1", seq: 8, recovered: true }));
  assert.deepEqual(client.positions.room, { epoch: "e1", seq: 6 }, "the position moves with the messages, not the reply");
  socket().serverSends(msg(7, "c"));
  socket().serverSends(msg(8, "d"));
  socket().serverSends(msg(8, "d"));
  const got = events.filter((e) => e.type === "publication").map((e) => [e.seq, e.data]);
  assert.deepEqual(got, [[5, "a"], [6, "b"], [7, "c"], [8, "d"]], "each once, in order");
  assert.deepEqual(events.filter((e) => e.type === "subscribed").map((e) => e.recovered), [false, true]);
});

test("not recovered: the position restarts from the channel's present", () => {
  const { client, socket, events } = v1Client();
  client.subscribe("room");
  socket().serverOpens(V1);
  socket().serverSends(JSON.stringify({ op: "subscribed", channel: "room", epoch: "e2", seq: 40, recovered: false }));
  assert.deepEqual(client.positions.room, { epoch: "e2", seq: 40 });
  socket().serverSends(msg(41, "x", "e2"));
  assert.equal(events.filter((e) => e.type === "publication").length, 1);
});

test("presence follows join and leave", () => {
  const { client, socket, events } = v1Client();
  client.subscribe("room");
  socket().serverOpens(V1);
  socket().serverSends(JSON.stringify({ op: "subscribed", channel: "room", epoch: "e", seq: 0, recovered: false, presence: [{ id: "c1" }] }));
  socket().serverSends(JSON.stringify({ op: "join", channel: "room", client: { id: "c2", name: "bob" } }));
  assert.deepEqual(Object.keys(client.presence.room).sort(), ["c1", "c2"]);
  socket().serverSends(JSON.stringify({ op: "leave", channel: "room", client: { id: "c1" } }));
  assert.deepEqual(Object.keys(client.presence.room), ["c2"]);
  const last = events.filter((e) => e.type === "presence").at(-1);
  assert.equal(last.event, "leave");
  assert.deepEqual(last.members, [{ id: "c2", name: "bob" }]);
});

test("publish queues while offline and goes out after the resubscribe", () => {
  const { client, socket } = v1Client();
  client.subscribe("chat.x");
  assert.equal(client.publish("chat.x", { text: "hi" }), true);
  socket().serverOpens(V1);
  assert.deepEqual(frames(socket()).map((f) => f.op), ["subscribe", "publish"]);
  assert.deepEqual(frames(socket())[1], { op: "publish", channel: "chat.x", data: { text: "hi" } });
});

test("server errors become error events; frames of other channels are ignored", () => {
  const { client, socket, events } = v1Client();
  client.subscribe("room");
  socket().serverOpens(V1);
  socket().serverSends(JSON.stringify({ op: "error", code: 403, reason: "no", channel: "news" }));
  socket().serverSends(msg(1, "stray", "e", "elsewhere"));
  assert.deepEqual(events.filter((e) => e.type === "error").map((e) => e.code), [403]);
  assert.equal(events.filter((e) => e.type === "publication").length, 0);
  assert.equal(events.filter((e) => e.type === "message").length, 0);
});

test("a server that does not accept wsheart.v1 stops the client with a reason", () => {
  const { client, clock, socket, WebSocket } = v1Client();
  client.subscribe("room");
  socket().serverOpens("");
  assert.equal(client.state, "closed");
  assert.match(client.closeReason, /did not accept the wsheart.v1 subprotocol/);
  clock.advance(120000);
  assert.equal(WebSocket.sockets.length, 1);
});

test("channel methods need the subprotocol", () => {
  const { client } = makeClient();
  assert.throws(() => client.subscribe("room"), /needs options.protocols/);
});

test("channel names that are Object.prototype keys work", () => {
  const { client, socket } = v1Client();
  client.subscribe("constructor");
  client.subscribe("__proto__");
  socket().serverOpens(V1);
  assert.deepEqual(frames(socket()).map((f) => f.channel), ["constructor", "__proto__"]);
});

test("close() from an open listener leaves nothing behind", () => {
  const { client, clock, socket } = v1Client();
  client.subscribe("room");
  client.send("queued");
  client.addEventListener("open", () => client.close());
  socket().serverOpens(V1);
  assert.equal(client.state, "closed");
  assert.deepEqual(socket().sent, []);
  clock.advance(120000);
  assert.equal(clock.pending(), 0);
});

test("a member list cut short says so in the subscribed event", () => {
  const { client, socket, events } = v1Client();
  client.subscribe("stadium");
  socket().serverOpens(V1);
  socket().serverSends(JSON.stringify({ op: "subscribed", channel: "stadium", epoch: "e", seq: 0, recovered: false,
    presence: [{ id: "c1" }, { id: "c2" }], presence_complete: false, presence_count: 52311 }));
  client.subscribe("small");
  socket().serverSends(JSON.stringify({ op: "subscribed", channel: "small", epoch: "e", seq: 0, recovered: false, presence: [{ id: "c1" }] }));
  const subscribed = events.filter((e) => e.type === "subscribed");
  assert.deepEqual(subscribed.map((e) => [e.channel, e.presenceComplete, e.presenceCount]), [["stadium", false, 52311], ["small", true, 1]]);
});

test("a subscribed the server sends on its own moves the position and says why", () => {
  const { client, socket, events } = v1Client();
  client.subscribe("room");
  socket().serverOpens(V1);
  socket().serverSends(JSON.stringify({ op: "subscribed", channel: "room", epoch: "e1", seq: 0, recovered: false, presence: [] }));
  socket().serverSends(JSON.stringify({ op: "message", channel: "room", epoch: "e1", seq: 1, data: "a" }));
  socket().serverSends(JSON.stringify({ op: "subscribed", channel: "room", epoch: "e2", seq: 0, recovered: false, reason: "new epoch" }));
  socket().serverSends(JSON.stringify({ op: "message", channel: "room", epoch: "e2", seq: 1, data: "b" }));
  const subscribed = events.filter((e) => e.type === "subscribed");
  assert.deepEqual(subscribed.map((e) => [e.epoch, e.recovered, e.reason]), [["e1", false, null], ["e2", false, "new epoch"]]);
  assert.deepEqual(events.filter((e) => e.type === "publication").map((e) => [e.epoch, e.seq, e.data]), [["e1", 1, "a"], ["e2", 1, "b"]]);
  assert.deepEqual(client.positions.room, { epoch: "e2", seq: 1 });
});

test("a subscribe refused with 503 is retried after retry_after, spread", () => {
  const { client, clock, socket, events } = v1Client({ random: () => 0.5 });
  client.subscribe("room");
  socket().serverOpens(V1);
  socket().sent.length = 0;
  socket().serverSends(JSON.stringify({ op: "error", code: 503, reason: "channels unavailable", channel: "room", retry_after: 2 }));
  assert.equal(events.filter((e) => e.type === "error")[0].retryAfter, 2);
  clock.advance(2999);
  assert.deepEqual(frames(socket()), [], "not before retry_after * (1 + random)");
  clock.advance(1);
  assert.deepEqual(frames(socket()), [{ op: "subscribe", channel: "room" }]);
  socket().serverSends(JSON.stringify({ op: "error", code: 403, reason: "no", channel: "room" }));
  clock.advance(10000);
  assert.equal(frames(socket()).length, 1, "other refusals are not retried");
});

test("a subscribe refused with 429 (too fast) is retried after retry_after too", () => {
  const { client, clock, socket } = v1Client({ random: () => 0 });
  client.subscribe("room");
  socket().serverOpens(V1);
  socket().sent.length = 0;
  socket().serverSends(JSON.stringify({ op: "error", code: 429, reason: "too many requests", channel: "room", retry_after: 0.5 }));
  const subscribes = () => frames(socket()).filter((f) => f.op === "subscribe");
  clock.advance(499);
  assert.deepEqual(subscribes(), []);
  clock.advance(1);
  assert.deepEqual(subscribes(), [{ op: "subscribe", channel: "room" }]);
});
