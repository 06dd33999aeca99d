// Test doubles for wsheart.js under Node's test runner: the library is
// loaded as the classic script a browser gets, and time, randomness, the
// WebSocket and the page's events are injected - as task.Clock and
// in-memory transports are for the Python side.

import { readFileSync } from "node:fs";
import vm from "node:vm";

const source = readFileSync(new URL("../../wsheart/static/wsheart.js", import.meta.url), "utf8");

/** A fresh copy of the library, as a classic script defines it. */
export function loadWsHeart() {
  return vm.runInThisContext(`(function () {\n${source}\nreturn WsHeart;\n})()`, { filename: "wsheart.js" });
}

export const WsHeart = loadWsHeart();

/** Time that moves only when told to (like twisted.internet.task.Clock). */
export class FakeClock {
  constructor() {
    this.time = 1_000_000;
    this.calls = [];
    this.nextId = 1;
  }
  now() {
    return this.time;
  }
  setTimeout(f, ms) {
    const call = { id: this.nextId++, at: this.time + Math.max(0, ms), f };
    this.calls.push(call);
    return call.id;
  }
  clearTimeout(id) {
    this.calls = this.calls.filter((c) => c.id !== id);
  }
  /** Run every timer due within `ms`, in order, then stop at now + ms. */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      const due = this.calls.filter((c) => c.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.calls = this.calls.filter((c) => c !== due);
      this.time = Math.max(this.time, due.at);
      due.f();
    }
    this.time = end;
  }
  /** Jump the clock without running timers (a sleeping or frozen page). */
  jump(ms) {
    this.time += ms;
  }
  pending() {
    return this.calls.length;
  }
}

/** A WebSocket the test drives: every instance is recorded. */
export function fakeWebSocketClass() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      if (!/^wss?:\/\//.test(url)) throw new SyntaxError(`invalid URL ${url}`);
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closedWith = null;
      this.readyState = 0;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(data);
    }
    close(code, reason) {
      if (code !== undefined && code !== 1000 && !(code >= 3000 && code <= 4999)) {
        throw new Error("InvalidAccessError");
      }
      this.closedWith = { code, reason };
      this.readyState = 2;
    }
    // -- what the network does --
    serverOpens(protocol = "") {
      this.protocol = protocol;
      this.readyState = 1;
      this.onopen && this.onopen({});
    }
    serverSends(data) {
      this.onmessage && this.onmessage({ data });
    }
    serverCloses(code, reason = "", wasClean = true) {
      this.readyState = 3;
      this.onclose && this.onclose({ code, reason, wasClean });
    }
    connectionFails() {
      this.readyState = 3;
      this.onerror && this.onerror({});
      this.onclose && this.onclose({ code: 1006, reason: "", wasClean: false });
    }
  }
  FakeWebSocket.sockets = sockets;
  return FakeWebSocket;
}

/** Random numbers from a list (then 0.5 for ever). */
export function scriptedRandom(values) {
  const queue = [...values];
  return () => (queue.length ? queue.shift() : 0.5);
}

/** A client with every dependency faked; returns the parts. */
export function makeClient(options = {}) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocketClass();
  const win = new EventTarget();
  const doc = new EventTarget();
  doc.visibilityState = "visible";
  const events = [];
  const client = new WsHeart("ws://127.0.0.1:1/", {
    clock,
    WebSocket,
    window: win,
    document: doc,
    random: () => 0.5,
    ...options,
  });
  for (const type of ["state", "open", "message", "close", "heartbeat", "miss", "overflow", "subscribed", "publication", "presence", "error", "published", "authed"]) {
    client.addEventListener(type, (e) => events.push({ type, ...e.detail }));
  }
  const socket = () => WebSocket.sockets[WebSocket.sockets.length - 1];
  return { client, clock, WebSocket, win, doc, events, socket };
}
