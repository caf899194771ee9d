#!/usr/bin/env bash
# The main job on this host: the local stack, then the producer and the processor in the
# foreground until Ctrl-C, which stops both cleanly (each flushes what it holds first).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cli=(node "$root/bin/tcpaudit.js")

# When output goes through a pipe (make run | tee), Ctrl-C may end the reader first: a write to
# the closed pipe must not kill this script before it has told the producer to flush.
trap '' PIPE

"${cli[@]}" stack up
eval "$("${cli[@]}" stack env)"
export PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE KAFKA_BROKERS SCHEMA_REGISTRY_URL

# Own sessions, so a Ctrl-C reaches them once, from stop() below, and not also from the
# terminal: a second signal would make them exit without flushing.
setsid "${cli[@]}" process &
processor=$!
# The producer with the memory settings of producer/runtime-settings.ts, as its units give them.
setsid env MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 \
	node --max-semi-space-size=4 "$root/bin/tcpaudit.js" produce &
producer=$!

stopping=0
stop() {
	# Once only: a second TERM tells them to exit without flushing.
	((stopping)) && return
	stopping=1
	kill -TERM "$producer" "$processor" 2>/dev/null || true
	echo "run: stopping producer and processor" >&2 || true
}
trap stop INT TERM

cat >&2 <<INFO

tcpaudit is running: producer pid $producer, processor pid $processor. Ctrl-C stops both.
Make a TCP connection on this host (for example: curl -s http://127.0.0.1:$PGPORT), then look:

  PGPASSWORD=$PGPASSWORD psql -h $PGHOST -p $PGPORT -U $PGUSER $PGDATABASE -c \\
    'SELECT opened_at, comm, pid, local_addr, local_port, remote_addr, remote_port, outcome,
            closed_by, states FROM connections ORDER BY opened_at DESC LIMIT 20'

Logs of the stack: $root/.tcpaudit/logs/. The stack keeps running after Ctrl-C;
stop it with: node bin/tcpaudit.js stack down

INFO

# Whichever ends first (Ctrl-C, or a failure), the other is stopped too.
status=0
wait -n "$producer" "$processor" || status=$?
((stopping)) && status=0 # interrupted by Ctrl-C: a clean stop, not a failure
stop
wait "$producer" 2>/dev/null || true
wait "$processor" 2>/dev/null || true
exit "$status"
