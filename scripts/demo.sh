#!/usr/bin/env bash
# The demo: a local three-peer Shoal cluster on loopback.
#   bash scripts/demo.sh        start it, show the cluster, kill and restart a peer
#   bash scripts/demo.sh stop   stop it
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${SHOAL_DEMO_DIR:-/tmp/shoal-demo}
N=3

stop() {
  if [[ -d $DEMO ]]; then
    for pidf in "$DEMO"/*.pid; do
      [[ -e $pidf ]] || continue
      kill -TERM "$(cat "$pidf")" 2>/dev/null || true
    done
    sleep 1
    rm -rf "$DEMO"
  fi
}

if [[ ${1:-} == stop ]]; then stop; echo "demo stopped"; exit 0; fi

bash scripts/deps.sh
echo "building shoal (release)..."
cargo build --release --locked -q
SHOAL=$PWD/target/release/shoal
stop
mkdir -p "$DEMO"
$SHOAL keygen -o "$DEMO/cluster.key" 2>/dev/null

start_peer() { # index
  local i=$1 port=$((4300 + $1)) join=()
  ((i > 0)) && join=(--join "127.0.0.1:4300")
  "$SHOAL" agent --data-dir "$DEMO/peer-$i" --name "peer-$i" --cluster-key "$DEMO/cluster.key" \
    --listen "/ip4/127.0.0.1/tcp/$port" --cpus 1 --memory 2g --label "zone=z$((i % 2))" "${join[@]}" \
    >>"$DEMO/peer-$i.log" 2>&1 &
  disown
  echo $! >"$DEMO/peer-$i.pid"
}
peers() { SHOAL_ADDR=$DEMO/peer-${1:-0}/shoal.sock "$SHOAL" peers; }
wait_for() { # index state count
  for _ in $(seq 100); do
    c=$(SHOAL_ADDR=$DEMO/peer-$1/shoal.sock "$SHOAL" peers --json 2>/dev/null | grep -c "\"state\": \"$2\"" || true)
    ((c >= $3)) && return 0
    sleep 0.1
  done
  return 1
}

for i in $(seq 0 $((N - 1))); do start_peer "$i"; sleep 0.3; done
wait_for 0 alive $N
echo; echo "== a $N-peer cluster, as peer-0 sees it (shoal peers):"; peers 0

echo; echo "== SIGKILL peer-2; every other peer marks it dead within seconds:"
t0=$(date +%s.%N); kill -KILL "$(cat "$DEMO/peer-2.pid")"
wait_for 0 dead 1; t1=$(date +%s.%N)
peers 1; awk -v a="$t0" -v b="$t1" 'BEGIN { printf "detected in %.1f s\n", b - a }'

echo; echo "== restart peer-2 (same data dir): alive again with the same id:"
start_peer 2; wait_for 0 alive $N; peers 0

cat <<EOT

The cluster keeps running. Try:
  export SHOAL_ADDR=$DEMO/peer-1/shoal.sock
  $SHOAL peers --json
  $SHOAL status
Logs: $DEMO/peer-*.log.  Stop it with: bash scripts/demo.sh stop
EOT
