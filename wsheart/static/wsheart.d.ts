// Type declarations for wsheart.js, the browser client of wsheart.
// Served at /wsheart.d.ts.  Every duration is in milliseconds.

export interface WsHeartClock {
  now(): number;
  setTimeout(f: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface WsHeartOptions {
  /** Between heartbeat pings (default 25000). */
  interval?: number;
  /** For the pong (default 10000). */
  timeout?: number;
  /** Unanswered pings in a row that make the server dead (default 2). */
  maxMissed?: number;
  /** The text sent as a ping (default "ping"); null turns the heartbeat off. */
  pingText?: string | null;
  /** The text expected back (default "pong"); never delivered as a message. */
  pongText?: string | null;
  /** For the opening handshake (default 10000). */
  connectTimeout?: number;
  /** First backoff window (default 1000). */
  initialDelay?: number;
  /** Window growth per failed attempt (default 2). */
  factor?: number;
  /** Largest backoff window (default 60000). */
  maxDelay?: number;
  /** Added to every delay (default 100). */
  minDelay?: number;
  /** Open this long before the backoff resets (default 30000). */
  stableAfter?: number;
  /** Failed attempts in a row before giving up (default Infinity). */
  maxAttempts?: number;
  /** Messages held while not connected (default 100). */
  queueLimit?: number;
  /** Subprotocols offered in the handshake. */
  protocols?: string | string[];
  /** Offer "wsheart.hints" (unless "wsheart.v1" is offered), so a busy server can say in a 1013 close when to come back (default true). */
  hints?: boolean;
  /**
   * For a daemon with --auth jwt: the token, or a function that returns one
   * (or a Promise of one), asked before every attempt so a reconnect carries
   * a fresh token. Offered as the subprotocol "wsheart.bearer.TOKEN", which
   * the server never echoes. A failed or rejected function is a failed attempt.
   */
  token?: string | (() => string | PromiseLike<string>);
  /** Default "arraybuffer". */
  binaryType?: BinaryType;
  /**
   * The WebSocket constructor (default: the global one). Node.js 20 has none
   * without --experimental-websocket: pass one, e.g. the "ws" package's.
   * Also for tests and unusual hosts.
   */
  WebSocket?: new (url: string, protocols?: string | string[]) => unknown;
  clock?: WsHeartClock;
  random?: () => number;
  window?: EventTarget | null;
  document?: (EventTarget & { visibilityState?: string }) | null;
}

export type WsHeartState = "connecting" | "open" | "reconnecting" | "closed";

export interface WsHeartStateDetail {
  state: WsHeartState;
  /** The attempt in progress, or (when reconnecting) the next one, counted from the last open connection. */
  attempt: number;
  /** When reconnecting: the wait before the next attempt. */
  delay: number | null;
  /** When reconnecting on the backoff schedule: the jitter window the delay was drawn from. */
  window: number | null;
  /** When reconnecting: whether the wait is a server's hint (close 1012/1013). */
  hinted: boolean;
  /** Why it is reconnecting or closed. */
  reason: string | null;
  /** When reconnecting: clock time of the next attempt. */
  retryAt: number | null;
}

export interface WsHeartPosition {
  epoch: string;
  seq: number;
}

export interface WsHeartClient {
  id: string;
  name?: string;
}

export interface WsHeartEventMap {
  state: CustomEvent<WsHeartStateDetail>;
  open: CustomEvent<{ attempt: number }>;
  message: CustomEvent<{ data: string | ArrayBuffer | Blob }>;
  close: CustomEvent<{ code: number; reason: string; wasClean: boolean }>;
  heartbeat: CustomEvent<{ rtt: number; smoothedRtt: number }>;
  miss: CustomEvent<{ misses: number }>;
  overflow: CustomEvent<{ data: unknown; queued: number }>;
  /** wsheart.v1: a (re)subscription took effect; recovered: every missed message follows. */
  /**
   * presenceComplete is false when the channel has more members than one frame lists; presenceCount is how many.
   * Also sent while connected, with recovered false, a reason ("new epoch", "history lost") and presence null,
   * when the server could not deliver every message: refetch the channel's state.
   */
  subscribed: CustomEvent<{ channel: string; recovered: boolean; epoch: string; seq: number; presence: WsHeartClient[] | null; presenceComplete: boolean; presenceCount: number; reason: string | null }>;
  /** wsheart.v1: a channel message, in order, each once. */
  publication: CustomEvent<{ channel: string; data: unknown; epoch: string; seq: number }>;
  presence: CustomEvent<{ channel: string; event: "join" | "leave"; client: WsHeartClient; members: WsHeartClient[] }>;
  /** wsheart.v1: the server refused a request (docs/protocol.md). */
  /** retryAfter (seconds) comes with 503: the server's channels were unavailable; a subscribe is retried by itself after it. */
  error: CustomEvent<{ code: number; reason: string; channel: string | null; ref?: string | number; retryAfter?: number }>;
  published: CustomEvent<{ op: "published"; channel: string; epoch: string; seq: number; ref?: string | number }>;
  /** wsheart.v1 with --auth jwt: the server took a token (sent in a refresh, when it asked for one). */
  authed: CustomEvent<{ sub: string; expiresIn?: number }>;
}

export declare class WsHeart extends EventTarget {
  constructor(url: string | URL, options?: WsHeartOptions);

  static readonly VERSION: string;
  static readonly DEFAULTS: Readonly<Required<Omit<WsHeartOptions, "WebSocket" | "clock" | "random" | "window" | "document" | "protocols" | "token">>>;
  static readonly TERMINAL_CODES: readonly number[];
  /** The jitter window after `failures` failed attempts in a row. */
  static backoffWindow(failures: number, options?: WsHeartOptions): number;
  /** The reconnect hint of a close frame, in ms, or null. */
  static parseHint(code: number, reason: string): { retryAfter: number; jitter: number } | null;

  readonly url: string;
  readonly options: Readonly<Required<Omit<WsHeartOptions, "WebSocket" | "clock" | "random" | "window" | "document">>>;
  readonly state: WsHeartState;
  readonly attempt: number;
  readonly failures: number;
  readonly rtt: number | null;
  readonly smoothedRtt: number | null;
  readonly misses: number;
  readonly closeReason: string | null;
  readonly retryAt: number | null;
  /** Messages waiting for the next open connection. */
  readonly queued: number;
  /** wsheart.v1: the last position seen per subscribed channel. */
  readonly positions: Readonly<Record<string, WsHeartPosition | null>>;
  /** wsheart.v1: who is present per channel, by connection id. */
  readonly presence: Readonly<Record<string, Record<string, WsHeartClient>>>;

  /** Send now, or queue while not connected; false (and an "overflow" event) when the queue is full. Throws after close(). */
  send(data: string | ArrayBufferLike | Blob | ArrayBufferView): boolean;
  /** Close for good. */
  close(code?: number, reason?: string): void;
  /** Send a heartbeat ping now. */
  probe(): void;
  /** wsheart.v1 (options.protocols must include "wsheart.v1"): subscribe now and after every reconnect, resuming from the last message seen. */
  subscribe(channel: string, options?: { name?: string }): void;
  unsubscribe(channel: string): void;
  /** wsheart.v1: publish (queued like send() while not connected). */
  publish(channel: string, data: unknown, ref?: string | number): boolean;

  addEventListener<K extends keyof WsHeartEventMap>(
    type: K,
    listener: (this: WsHeart, event: WsHeartEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof WsHeartEventMap>(
    type: K,
    listener: (this: WsHeart, event: WsHeartEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject, options?: boolean | EventListenerOptions): void;
}

export default WsHeart;

declare global {
  /** The global of the classic-script form (<script src="/wsheart.js">). */
  // eslint-disable-next-line no-var
  var WsHeart: typeof import("./wsheart").WsHeart;
}
