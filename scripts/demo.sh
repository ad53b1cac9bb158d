#!/usr/bin/env bash
# The demo: a lab of containerized Shoal peers on this machine (each in its own network
# namespace and cgroup, links shaped to 50 Mbit/s) running a sample service (3 replicas of a
# busybox web server) whose image it pulls from a local registry (Debian's docker-registry, in
# peer 0's namespace: each layer fetched from it once for the whole cluster), reached by name
# from a client container on another peer and through the
# published port of a peer that runs no replica; peer 4 holds only a worker key, so it runs
# replicas but its attempt to change the service is refused; then a peer loses power and its
# replica comes back elsewhere; then a partition heals.
#   bash scripts/demo.sh        bring it up and show it (it keeps running)
#   bash scripts/demo.sh stop   tear it down
set -euo pipefail
cd "$(dirname "$0")/.."
export SHOAL_LAB=demo
if [[ $(id -u) -ne 0 ]]; then echo "the demo needs root (network namespaces, cgroups)" >&2; exit 1; fi

REG=/tmp/shoal-demo-registry
DASH=/tmp/shoal-demo-dashboard
stop_registry() {
  if [[ -f $REG/pid ]]; then kill "$(cat "$REG/pid")" 2>/dev/null || true; fi
  rm -rf "$REG"
  if [[ -f $DASH/pid ]]; then kill "$(cat "$DASH/pid")" 2>/dev/null || true; fi
  rm -rf "$DASH"
}
if [[ ${1:-} == stop ]]; then
  [[ -x target/release/shoal ]] && target/release/shoal lab down
  stop_registry
  exit 0
fi

bash scripts/deps.sh
echo "building shoal (release)..."
cargo build --release --locked -q --bin shoal
SHOAL=$PWD/target/release/shoal
$SHOAL lab down >/dev/null 2>&1 || true
stop_registry

say() { printf '\n== %s\n' "$*"; }
alive_seen_by() { $SHOAL lab exec "$1" -- shoal peers --json | grep -c '"state": "alive"' || true; }
wait_alive() { # viewer count
  for _ in $(seq 150); do (($(alive_seen_by "$1") == $2)) && return 0; sleep 0.1; done
  echo "timed out waiting for $2 alive peers" >&2; return 1
}

REGISTRY=198.18.0.10:5000   # peer 0's address in the lab
say "shoal lab up --peers 5 --bandwidth 50mbit --workers 1 (peers 0-3 hold the operator key, peer 4 a worker key)"
$SHOAL lab up --peers 5 --bandwidth 50mbit --workers 1 --agent-arg=--insecure-registry=$REGISTRY

say "the cluster as peer 3 sees it (shoal lab exec 3 -- shoal peers):"
$SHOAL lab exec 3 -- shoal peers

say "a local registry (Debian's docker-registry) in peer 0's namespace at $REGISTRY"
mkdir -p "$REG/storage"
cat >"$REG/config.yml" <<EOC
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $REG/storage}}
http: {addr: $REGISTRY}
EOC
# nsenter execs the registry itself, so its pid is the one to stop.
nsenter --net=/run/netns/shoal-demo-0 docker-registry serve "$REG/config.yml" >"$REG/registry.log" 2>&1 &
echo $! >"$REG/pid"
for _ in $(seq 100); do grep -q "listening on" "$REG/registry.log" && break; sleep 0.1; done

say "the sample image (busybox httpd serving a page), pushed to it with skopeo: $REGISTRY/demo/web:v1"
img=$(mktemp -d)
mkdir -p "$img/root/bin" "$img/root/www" "$img/root/tmp" "$img/root/etc"
cp /bin/busybox "$img/root/bin/busybox"
for a in sh httpd hostname echo cat sleep wget nslookup; do ln -s busybox "$img/root/bin/$a"; done
echo "hello from a Shoal service" > "$img/root/www/index.html"
tar -C "$img/root" -cf "$img/web.tar" .
$SHOAL lab exec 0 -- shoal image import --name demo/web:v1 "$img/web.tar" >/dev/null
$SHOAL lab exec 0 -- shoal image export demo/web:v1 -o "$img/web.oci.tar" 2>/dev/null
$SHOAL lab exec 0 -- skopeo copy --quiet --dest-tls-verify=false "oci-archive:$img/web.oci.tar" "docker://$REGISTRY/demo/web:v1"
$SHOAL lab exec 0 -- shoal image rm demo/web:v1 >/dev/null   # only the registry has it now
rm -rf "$img"

say "shoal service create --name web --replicas 3 $REGISTRY/demo/web:v1 (declared at peer 1; the tag is pinned to its digest; each layer comes from the registry once, the peers swarm it)"
$SHOAL lab exec 1 -- shoal service create --name web --replicas 3 -p 8080:80 "$REGISTRY/demo/web:v1" \
  sh -c 'hostname > /www/who; exec httpd -f -p 80 -h /www'
running() { $SHOAL lab exec "$1" -- shoal service ps web --json 2>/dev/null | grep -c '"state": "running"' || true; }
for _ in $(seq 300); do (($(running 0) == 3)) && break; sleep 0.1; done
$SHOAL lab exec 0 -- shoal service ps web
echo "blob downloads the registry served for 3 replicas on 3 peers: $(grep -c 'GET /v2/demo/web/blobs/sha256:[0-9a-f]* HTTP/1.1" 200' "$REG/registry.log" || true) (the image has 2 blobs: config and layer)"

say "the cluster network as peer 0 sees it (shoal lab exec 0 -- shoal network):"
$SHOAL lab exec 0 -- shoal network

client=4
say "a client container on peer $client reaches the service by name (shoal exec client wget -qO- http://web/who)"
$SHOAL lab exec $client -- shoal run -d --name client "$REGISTRY/demo/web:v1" sleep 1d >/dev/null
for _ in $(seq 100); do
  $SHOAL lab exec $client -- shoal exec client wget -qO- http://web/who >/dev/null 2>&1 && break; sleep 0.1
done
for _ in 1 2 3; do $SHOAL lab exec $client -- shoal exec client wget -qO- http://web/who; done
say "tasks.web: every healthy replica's own address (shoal exec client nslookup tasks.web)"
$SHOAL lab exec $client -- shoal exec client nslookup tasks.web | grep -A9 '^Name:' || true

say "peer 4 holds a worker key: it runs work, but changing a service is refused (shoal service scale web 5 on peer 4)"
if $SHOAL lab exec 4 -- shoal service scale web 5; then echo "unexpected: a worker changed a service" >&2; exit 1; fi

ps_json=$($SHOAL lab exec 0 -- shoal service ps web --json)
spare=""
for i in 0 1 2 3 4; do grep -q "\"peer_name\": \"peer-$i\"" <<<"$ps_json" || { spare=$i; break; }; done
ip=$($SHOAL lab status --json | grep -o '"ip": "[0-9.]*"' | sed -n "$((spare + 1))p" | grep -o '[0-9.]*')
say "peer $spare runs no replica, yet its published port answers (the routing mesh): wget http://$ip:8080/who from peer 0"
for _ in 1 2 3; do $SHOAL lab exec 0 -- busybox wget -qO- "http://$ip:8080/who"; done

victim=$($SHOAL lab exec 0 -- shoal service ps web --json | grep -o '"peer_name": "peer-[0-9]*"' | grep -v 'peer-1"' | head -1 | grep -o '[0-9]*"$' | tr -d '"')
say "peer $victim loses power (shoal lab kill --all $victim: agent and containers): its replica comes back elsewhere"
t0=$(date +%s%N)
$SHOAL lab kill --all "$victim"
viewer=$(( victim == 0 ? 2 : 0 ))
for _ in $(seq 300); do
  ps=$($SHOAL lab exec "$viewer" -- shoal service ps web --json)
  n=$(grep -c '"state": "running"' <<<"$ps" || true)
  if ((n == 3)) && ! grep -q "\"peer_name\": \"peer-$victim\"" <<<"$ps"; then break; fi
  sleep 0.05
done
echo "3 replicas running again after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
$SHOAL lab exec "$viewer" -- shoal service ps web

say "restart it (shoal lab start $victim): same id, alive again"
$SHOAL lab start "$victim"
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
for _ in $(seq 300); do (($(running 3) == 3)) && break; sleep 0.1; done
$SHOAL lab exec 3 -- shoal service ls

say "what happened, from any peer (shoal lab exec 2 -- shoal events --since 10m)"
$SHOAL lab exec 2 -- shoal events --since 10m | tail -n 15

say "the dashboard (shoal dashboard, on this host's loopback, talking to peer 0's API socket)"
mkdir -p "$DASH"
setsid "$SHOAL" --addr "${SHOAL_LAB_ROOT:-/var/lib/shoal/labs}/demo/peer-0/shoal.sock" dashboard --listen 127.0.0.1:8480 \
  >"$DASH/out" 2>"$DASH/err" </dev/null &
echo $! >"$DASH/pid"
for _ in $(seq 50); do grep -q "http://" "$DASH/out" && break; sleep 0.1; done
if grep -q "http://" "$DASH/out"; then
  cat "$DASH/out"
  echo "(open it in a browser on this machine, or tunnel it: ssh -L 8480:127.0.0.1:8480 THIS-HOST)"
else
  echo "the dashboard did not start: $(cat "$DASH/err")" >&2
fi

cat <<EOT

The lab and the service keep running. Try:
  $SHOAL lab exec 2 -- shoal service ps web
  $SHOAL lab exec 0 -- shoal service scale web 5
  $SHOAL lab exec 3 -- shoal service logs web
  $SHOAL lab status
  $SHOAL lab exec 2 -- shoal peers --json
  $SHOAL lab logs 1
  $SHOAL lab link 2 --bandwidth 5mbit
  $SHOAL lab exec 3 -- shoal image ls
  $SHOAL lab exec 1 -- shoal events -f
  $SHOAL lab exec 0 -- busybox wget -qO- 127.0.0.1:9464/metrics
(set SHOAL_LAB=demo or pass --name demo). Tear it down with: bash scripts/demo.sh stop
EOT
