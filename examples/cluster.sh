#!/usr/bin/env bash
# Example: a Nerve cluster on one machine. Run it from the repository root,
# after `npm install`, with redis-server on PATH:
#   NERVE_PASSWORD=secret examples/cluster.sh      # clients connect to ws://127.0.0.1:6669
# It starts a redis-server, three Nerve nodes (ports 7001, 7002, 7003) joined
# through it, and examples/balancer.ts on port 6669 in front of them; Ctrl-C or
# SIGTERM stops them all. REDIS_PORT (default 6379) moves the redis-server;
# NERVE_PASSWORD defaults to change-me. Not for production (see the balancer's
# own comment).

set -u

if [ ! -f adapters/node.ts ] || [ ! -f examples/balancer.ts ]; then
  echo "cluster.sh: run it from the repository root (examples/cluster.sh)" >&2
  exit 1
fi
if ! command -v redis-server >/dev/null; then
  echo "cluster.sh: redis-server is not on PATH (apt-get install redis-server, or brew install redis)" >&2
  exit 1
fi

REDIS_PORT=${REDIS_PORT:-6379}
export NERVE_PASSWORD=${NERVE_PASSWORD:-change-me}
export NERVE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT

# Each background job gets its own process group, so a Ctrl-C reaches this
# script alone and every process below gets exactly one signal, from stop().
set -m

redis=''
nodes=()
balancer=''

# The balancer first, then the nodes (they drain and leave the cluster), then redis.
# Further signals are ignored meanwhile, so nothing is left running.
stop() {
  trap '' INT TERM
  [ -n "$balancer" ] && kill -TERM "$balancer" 2>/dev/null
  for pid in "${nodes[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${nodes[@]}"; do wait "$pid" 2>/dev/null; done
  [ -n "$redis" ] && kill -TERM "$redis" 2>/dev/null
  wait 2>/dev/null
  exit "$1"
}
trap 'stop 0' INT TERM

if (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; then
  echo "cluster.sh: port $REDIS_PORT is taken (another redis-server?): set REDIS_PORT to a free one" >&2
  exit 1
fi
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning </dev/null &
redis=$!
# The nodes refuse to start without Redis: wait until it accepts connections.
until (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; do
  if ! kill -0 "$redis" 2>/dev/null; then
    echo "cluster.sh: redis-server did not start on port $REDIS_PORT" >&2
    stop 1
  fi
  sleep 0.1
done

for port in 7001 7002 7003; do
  NERVE_PORT=$port node --import tsx adapters/node.ts </dev/null &
  nodes+=($!)
done

node --import tsx examples/balancer.ts 6669 7001 7002 7003 </dev/null &
balancer=$!

echo "cluster.sh: nodes on 7001-7003 behind ws://127.0.0.1:6669, Redis on $REDIS_PORT; Ctrl-C stops them" >&2

# Until a signal, or until one of them stops on its own (then stop the rest).
wait -n
stop 1
