#!/usr/bin/env node
// Serves the web chat: index.html, chat.js and MQTT.js's browser bundle (from the
// node_modules that `scripts/setup.sh` installs into conformance/js).
//
//   node examples/web-chat/server.js [PORT]      (default 8080; 0: any free port)
//
// Prints "web chat on http://127.0.0.1:PORT/" once it listens. The page talks to the broker
// directly over WebSocket; this server only hands out files.
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');

/** URL path -> [file, content type]. Nothing else is served. */
function files() {
  let bundle;
  try {
    // mqtt's package exports map `mqtt/dist/X` to dist/X.js.
    bundle = require.resolve('mqtt/dist/mqtt.min', {
      paths: [__dirname, path.join(__dirname, '..', '..', 'conformance', 'js')],
    });
  } catch (e) {
    throw new Error(`MQTT.js is not installed (${e.code}): run scripts/setup.sh`);
  }
  return {
    '/': [path.join(__dirname, 'index.html'), 'text/html; charset=utf-8'],
    '/chat.js': [path.join(__dirname, 'chat.js'), 'text/javascript; charset=utf-8'],
    '/mqtt.min.js': [bundle, 'text/javascript; charset=utf-8'],
  };
}

/** Starts serving on 127.0.0.1:`port`; resolves to the http.Server once it listens. */
async function start(port) {
  const routes = files();
  const server = http.createServer((req, res) => {
    const route = routes[new URL(req.url, 'http://localhost').pathname];
    if (req.method !== 'GET' || !route) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found\n');
      return;
    }
    const [file, type] = route;
    fs.readFile(file, (err, body) => {
      if (err) {
        res.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${err.message}\n`);
        return;
      }
      res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' }).end(body);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

module.exports = { start };

if (require.main === module) {
  const port = Number(process.argv[2] ?? 8080);
  start(port).then(
    (server) => console.log(`web chat on http://127.0.0.1:${server.address().port}/`),
    (err) => {
      console.error(`cannot serve on port ${port}: ${err.message}`);
      process.exit(1);
    },
  );
}
