// Example: a tiny layer-4 (TCP) load balancer for trying a Nerve cluster on one
// machine (see examples/cluster.sh). Each connection goes to the next node in
// turn, bytes untouched, so WebSocket upgrades and plain HTTP both pass; a node
// that refuses is skipped. Not for production: a real deployment puts nginx,
// HAProxy or a cloud load balancer with WebSocket support in front of the nodes.
//
//   node --import tsx examples/balancer.ts <listen-port> <node-port> <node-port> ...

import { connect, createServer, type Socket } from 'node:net';

const HOST = '127.0.0.1';

const ports = process.argv.slice(2).map((arg) => (/^\d+$/.test(arg) ? Number(arg) : NaN));
const [listenPort, ...nodes] = ports;
const isPort = (port: number | undefined) => port !== undefined && Number.isInteger(port) && port > 0 && port < 65536;
if (!isPort(listenPort) || nodes.length === 0 || !nodes.every(isPort)) {
  console.error('usage: node --import tsx examples/balancer.ts <listen-port> <node-port> [<node-port> ...]');
  process.exit(1);
}

let turn = 0;

/** Pipes `client` to the next node that accepts; `tried` nodes have refused it already. */
function forward(client: Socket, tried: number): void {
  if (client.destroyed) return;
  if (tried === nodes.length) {
    client.destroy();
    return;
  }
  const port = nodes[turn]!;
  turn = (turn + 1) % nodes.length;
  const upstream = connect(port, HOST);
  upstream.once('error', () => forward(client, tried + 1));
  upstream.once('connect', () => {
    upstream.removeAllListeners('error');
    upstream.on('error', () => upstream.destroy());
    if (client.destroyed) {
      upstream.destroy();
      return;
    }
    // Either side closing closes the other.
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
  });
}

// The client's bytes wait (the socket is paused until piped) while a node is chosen.
const server = createServer((client) => {
  client.on('error', () => client.destroy());
  forward(client, 0);
});

server.on('error', (error) => {
  console.error(`balancer: cannot listen on ${HOST}:${listenPort}: ${error.message}`);
  process.exit(1);
});

server.listen(listenPort, HOST, () => {
  console.log(JSON.stringify({ msg: 'balancing', port: listenPort, nodes }));
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => process.exit(0));
}
