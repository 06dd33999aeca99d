// Node `ws` echo server with the heartbeat the ws README recommends: every
// --ping-interval seconds, a client whose isAlive flag was not reset by a
// pong since the previous tick is terminated (TCP destroyed), then every
// remaining client is marked not-alive and pinged.  A silent client is thus
// terminated within 2 * interval.  With --key and --cert it serves wss:
// https.createServer with that key and certificate, ws attached to it, Node's
// TLS defaults kept (TLS 1.3 session tickets on, no ALPN).
//
//   node bench/peers/ws_server.js --port 9000 --ping-interval 1
//   node bench/peers/ws_server.js --port 9443 --ping-interval 10 --key key.pem --cert cert.pem
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

const keyFile = arg('--key', '');
let server = null;
let wss;
if (keyFile) {
  server = https.createServer({ key: fs.readFileSync(keyFile), cert: fs.readFileSync(arg('--cert')) });
  // Aborted handshakes (the soak's, or a port probe) are not errors here.
  server.on('tlsClientError', () => {});
  wss = new WebSocketServer({ server });
  server.listen({ host: '127.0.0.1', port, backlog }, () => console.error(`ws (TLS) listening on 127.0.0.1:${port}`));
} else {
  wss = new WebSocketServer({ host: '127.0.0.1', port, backlog });
  wss.on('listening', () => console.error(`ws listening on 127.0.0.1:${port}`));
}

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

function stop() {
  clearInterval(timer);
  for (const ws of wss.clients) ws.terminate();
  if (server) {
    wss.close();
    server.close(() => process.exit(0));
  } else {
    wss.close(() => process.exit(0));
  }
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
