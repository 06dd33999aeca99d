// A Node.js program using the npm package as an application would (`import
// { WsHeart } from "wsheart"`), run by tests/test_integration_npm.py from a
// scratch project that installed the packed tarball, against a real daemon.
//
//   node [--experimental-websocket] client.mjs WS_URL API_URL  (WSHEART_API_TOKEN in the environment)
//
// It tells its progress as JSON lines on stdout; "restart-now" asks the test
// to restart the daemon on the same port.  It exits 0 after "done", 1 on
// any failure or after 20 s without the next event.
import { WsHeart } from "wsheart";

const [url, api] = process.argv.slice(2);
const token = process.env.WSHEART_API_TOKEN;
const CHANNEL = "npm.room";
const say = (event, detail = {}) => console.log(JSON.stringify({ event, ...detail }));

/** The detail of the next `type` event of `client` that passes `test`. */
function next(client, type, test = () => true, ms = 20000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} event within ${ms} ms`)), ms);
    client.addEventListener(type, function listener(e) {
      if (!test(e.detail)) return;
      client.removeEventListener(type, listener);
      clearTimeout(timer);
      resolve(e.detail);
    });
  });
}

/** Publish on CHANNEL through the daemon's HTTP API (--admin-endpoint). */
async function publish(text) {
  const response = await fetch(`${api}/publish/${CHANNEL}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ text }),
  });
  if (response.status !== 200) throw new Error(`publish ${text}: HTTP ${response.status} ${await response.text()}`);
}

// The global WebSocket (Node 22+, or 20 with --experimental-websocket),
// given through the `WebSocket` option as Node 20 users give the "ws"
// package's; this one remembers its sockets so the program can cut them.
const live = new Set();
class CuttableWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    live.add(this);
    this.addEventListener("close", () => live.delete(this));
  }
}

const timings = { interval: 300, timeout: 1000, maxMissed: 2, initialDelay: 200, maxDelay: 1000 };

async function main() {
  // Echo and the text heartbeat, on the global WebSocket.
  const echo = new WsHeart(url, { ...timings, minDelay: 50 });
  await next(echo, "open");
  const echoed = next(echo, "message", (d) => d.data === "hello from node");
  echo.send("hello from node");
  await echoed;
  say("echo");
  const beat = await next(echo, "heartbeat");
  say("heartbeat", { rtt: beat.rtt });

  // A channel, and a message published while the subscriber was away.  A
  // reconnect waits at least minDelay: time enough for the publish.
  const chat = new WsHeart(url, { ...timings, minDelay: 1500, protocols: ["wsheart.v1"], WebSocket: CuttableWebSocket });
  const texts = [];
  chat.addEventListener("publication", (e) => e.detail.channel === CHANNEL && texts.push(e.detail.data.text));
  const subscribed = next(chat, "subscribed", (d) => d.channel === CHANNEL);
  chat.subscribe(CHANNEL, { name: "node" });
  await subscribed;
  const one = next(chat, "publication", (d) => d.data.text === "one");
  await publish("one");
  await one;
  say("publication", { text: "one" });

  const away = next(chat, "state", (d) => d.state === "reconnecting");
  const back = next(chat, "subscribed", (d) => d.channel === CHANNEL);
  const two = next(chat, "publication", (d) => d.data.text === "two");
  for (const socket of live) socket.close(1000, "cut by the test");
  await away;
  await publish("two");
  if (chat.state !== "reconnecting") throw new Error(`published after the subscriber came back (${chat.state}): nothing to recover`);
  const resumed = await back;
  await two;
  if (!resumed.recovered) throw new Error("the subscription came back without recovering");
  say("recovered", { texts: [...texts] });

  // The daemon restarts: both come back by themselves.
  const echoClosed = next(echo, "close");
  const echoBack = next(echo, "open");
  const chatBack = next(chat, "subscribed", (d) => d.channel === CHANNEL);
  say("restart-now");
  const closed = await echoClosed;
  say("closed", { code: closed.code });
  await echoBack;
  const again = next(echo, "message", (d) => d.data === "hello again");
  echo.send("hello again");
  await again;
  say("reconnected");
  const resubscribed = await chatBack;
  const three = next(chat, "publication", (d) => d.data.text === "three");
  await publish("three");
  await three;
  say("resubscribed", { recovered: resubscribed.recovered, texts: [...texts] });

  echo.close();
  chat.close();
  say("done");
}

main().then(
  () => process.exit(0),
  (e) => {
    say("failed", { error: String(e && e.stack ? e.stack : e) });
    process.exit(1);
  }
);
