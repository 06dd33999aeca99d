// Compiled (not run) by tests/test_integration_npm.py inside a scratch
// project that installed the packed tarball: proves `import ... from
// "wsheart"` finds the package's types through its package.json (exports,
// types), under both the bundler and the Node.js module resolution.
import WsHeartDefault, { WsHeart, type WsHeartOptions, type WsHeartStateDetail } from "wsheart";

const options: WsHeartOptions = { interval: 25000, protocols: ["wsheart.v1"] };
const ws = new WsHeart("wss://example.org/", options);
ws.addEventListener("state", (e) => {
  const d: WsHeartStateDetail = e.detail;
  if (d.state === "reconnecting") console.log(d.delay, d.attempt);
});
ws.addEventListener("heartbeat", (e) => console.log(e.detail.rtt.toFixed(1)));
ws.addEventListener("publication", (e) => console.log(e.detail.channel, e.detail.seq, e.detail.data));
ws.subscribe("chat.lobby", { name: "ann" });
const queued: boolean = ws.send("hello");
void queued;
const version: string = WsHeartDefault.VERSION;
void version;

// Another WebSocket constructor, as on Node.js 20 (the "ws" package's has
// this shape): accepted by the option's type.
class OtherWebSocket {
  constructor(readonly url: string, readonly protocols?: string | string[]) {}
}
new WsHeart("ws://127.0.0.1:8080/", { WebSocket: OtherWebSocket });

// @ts-expect-error: durations are numbers of milliseconds
new WsHeart("wss://example.org/", { interval: "25s" });
// @ts-expect-error: an import defines no global WsHeart
void globalThis.WsHeart;
