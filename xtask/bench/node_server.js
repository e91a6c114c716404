// A Node.js http server for `cargo xtask bench --only busy`, behind haproxy: node's own
// keep-alive server as most Node services run it. `/sleep/MS` reads the request body and
// answers after MS milliseconds.
//
// Usage: node node_server.js PORT [--graceful]. Without --graceful, SIGTERM has node's
// default effect (the process exits at once, open connections are cut by the kernel).
// With it, SIGTERM stops the server as Node's documentation shows: the listener closes,
// idle keep-alive connections close, busy ones after their response, and the process
// exits when none is left (at most 30 s).
"use strict";
const http = require("http");

const port = Number(process.argv[2]);
const graceful = process.argv.includes("--graceful");

const server = http.createServer((request, response) => {
  request.resume();
  request.on("end", () => {
    const ms = Number(request.url.replace(/^\/sleep\//, "")) || 0;
    setTimeout(() => response.end("ok\n"), ms);
  });
});
server.keepAliveTimeout = 30000;

if (graceful) {
  process.on("SIGTERM", () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
    setTimeout(() => process.exit(0), 30000).unref();
  });
}

server.listen(port, "127.0.0.1", () => console.log(`listening 127.0.0.1:${port}`));
