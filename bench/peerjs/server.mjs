// peerjs-server (npm `peer`) on 127.0.0.1 and an ephemeral port, for examples/bench-signaling.rs --vs-peerjs.
// Usage: node server.mjs MAX_CLIENTS. Prints the port it listens on, then serves until SIGTERM.
import { PeerServer } from "peer";

const limit = Number(process.argv[2] ?? 10000);
if (!Number.isInteger(limit) || limit < 1) {
  console.error("usage: node server.mjs MAX_CLIENTS");
  process.exit(2);
}
// concurrent_limit (default 5000) raised like ponte's max_connections in the bench config; everything else is
// peerjs-server's default (90 s alive timeout, no discovery, key "peerjs", WebSocket path /peerjs).
const peer = PeerServer({ host: "127.0.0.1", port: 0, concurrent_limit: limit }, (server) => {
  console.log(server.address().port);
});
peer.on("error", (e) => console.error("peerjs-server error:", e?.message ?? e));
process.on("SIGTERM", () => process.exit(0));
