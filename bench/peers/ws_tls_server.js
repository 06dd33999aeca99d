// Node `ws` echo server over TLS (wss): https.createServer with the given key
// and certificate, ws attached to it, and the same heartbeat as
// ws_server.js (the one of ws's README): every --ping-interval seconds, a
// client whose isAlive flag no pong has reset since the previous tick is
// terminated, then every remaining client is marked not-alive and pinged.
// Node's TLS defaults are kept (TLS 1.3 session tickets on, no ALPN).
//
//   node bench/peers/ws_tls_server.js --port 9443 --ping-interval 10 --key key.pem --cert cert.pem
'use strict';

const fs = require('fs');
const https = require('https');
const { WebSocketServer } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  if (i === -1) {
    if (fallback === undefined) throw new Error(`missing ${name}`);
    return fallback;
  }
  return process.argv[i + 1];
}

const port = Number(arg('--port'));
const intervalMs = Number(arg('--ping-interval')) * 1000;
const backlog = Number(arg('--backlog', '4096'));

const server = https.createServer({
  key: fs.readFileSync(arg('--key')),
  cert: fs.readFileSync(arg('--cert')),
});
// Aborted handshakes (the soak's, or a port probe) are not errors here.
server.on('tlsClientError', () => {});
const wss = new WebSocketServer({ server });

function heartbeat() {
  this.isAlive = true;
}

wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.on('error', () => {});
  ws.on('pong', heartbeat);
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});

const timer = setInterval(() => {
  wss.clients.forEach((ws) => {
    if (ws.isAlive === false) return ws.terminate();
    ws.isAlive = false;
    ws.ping();
  });
}, intervalMs);

wss.on('close', () => clearInterval(timer));
server.listen({ host: '127.0.0.1', port, backlog }, () =>
  console.error(`ws (TLS) listening on 127.0.0.1:${port}`));

function stop() {
  clearInterval(timer);
  for (const ws of wss.clients) ws.terminate();
  wss.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
