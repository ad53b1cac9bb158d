#!/usr/bin/env bash
# The demo: a lab of containerized Shoal peers on this machine (each in its own network
# namespace and cgroup, links shaped to 50 Mbit/s), then a failure and a partition.
#   bash scripts/demo.sh        bring it up and show it (it keeps running)
#   bash scripts/demo.sh stop   tear it down
set -euo pipefail
cd "$(dirname "$0")/.."
export SHOAL_LAB=demo
if [[ $(id -u) -ne 0 ]]; then echo "the demo needs root (network namespaces, cgroups)" >&2; exit 1; fi

if [[ ${1:-} == stop ]]; then
  [[ -x target/release/shoal ]] && target/release/shoal lab down
  exit 0
fi

bash scripts/deps.sh
echo "building shoal (release)..."
cargo build --release --locked -q --bin shoal
SHOAL=$PWD/target/release/shoal
$SHOAL lab down >/dev/null 2>&1 || true

say() { printf '\n== %s\n' "$*"; }
alive_seen_by() { $SHOAL lab exec "$1" -- shoal peers --json | grep -c '"state": "alive"' || true; }
wait_alive() { # viewer count
  for _ in $(seq 150); do (($(alive_seen_by "$1") == $2)) && return 0; sleep 0.1; done
  echo "timed out waiting for $2 alive peers" >&2; return 1
}

say "shoal lab up --peers 5 --bandwidth 50mbit"
$SHOAL lab up --peers 5 --bandwidth 50mbit

say "the cluster as peer 3 sees it (shoal lab exec 3 -- shoal peers):"
$SHOAL lab exec 3 -- shoal peers

say "SIGKILL peer 4's agent (shoal lab kill 4): every other peer marks it dead"
t0=$(date +%s%N)
$SHOAL lab kill 4
for _ in $(seq 150); do
  $SHOAL lab exec 0 -- shoal peers --json | grep -q '"state": "dead"' && break; sleep 0.05
done
echo "detected in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
$SHOAL lab status

say "restart it (shoal lab start 4): same id, alive again"
$SHOAL lab start 4
wait_alive 0 5
$SHOAL lab status

say "partition 0,1,2 | 3,4, then heal"
$SHOAL lab partition 0,1,2 3,4
sleep 5
$SHOAL lab status
$SHOAL lab heal
wait_alive 0 5
wait_alive 4 5
echo "healed: every peer sees 5 alive again"

cat <<EOT

The lab keeps running. Try:
  $SHOAL lab status
  $SHOAL lab exec 2 -- shoal peers --json
  $SHOAL lab logs 1
  $SHOAL lab link 2 --bandwidth 5mbit
(set SHOAL_LAB=demo or pass --name demo). Tear it down with: bash scripts/demo.sh stop
EOT
