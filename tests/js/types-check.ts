// Compiled (not run) by `tsc -p tests/js`: proves wsheart.d.ts describes
// the documented API, and that misuse is a type error.
import WsHeartDefault, { WsHeart, type WsHeartStateDetail } from "../../wsheart/static/wsheart";

const ws: WsHeart = new WsHeart("wss://example.org/", { interval: 25000, maxMissed: 2, protocols: ["wsheart.v1"] });
ws.addEventListener("state", (e) => {
  const d: WsHeartStateDetail = e.detail;
  const label: string = d.state === "reconnecting" ? `in ${d.delay} ms as attempt ${d.attempt}` : d.state;
  void label;
});
ws.addEventListener("message", (e) => console.log(e.detail.data));
ws.addEventListener("heartbeat", (e) => console.log(e.detail.rtt.toFixed(1)));
ws.addEventListener("overflow", (e) => console.log(e.detail.queued));
const accepted: boolean = ws.send("hello");
void accepted;
ws.close(1000, "bye");
const window0: number = WsHeart.backoffWindow(3, { initialDelay: 500 });
const hint = WsHeart.parseHint(1012, '{"retry_after": 5}');
if (hint) console.log(hint.retryAfter + hint.jitter);
console.log(WsHeartDefault.VERSION, window0, globalThis.WsHeart.DEFAULTS.interval);

const chat = new WsHeart("wss://example.org/", { protocols: "wsheart.v1" });
chat.subscribe("chat.lobby", { name: "ann" });
chat.addEventListener("publication", (e) => console.log(e.detail.channel, e.detail.seq, e.detail.data));
chat.addEventListener("subscribed", (e) => {
  if (!e.detail.recovered) console.log("refetch", e.detail.channel);
});
chat.addEventListener("presence", (e) => console.log(e.detail.members.map((m) => m.name ?? m.id)));
chat.publish("chat.lobby", { text: "hi" });
const where = chat.positions["chat.lobby"];
if (where) console.log(where.epoch, where.seq);

// @ts-expect-error: durations are numbers of milliseconds
new WsHeart("wss://example.org/", { interval: "25s" });
// @ts-expect-error: no such state
const bad: WsHeartStateDetail["state"] = "dead";
void bad;
