#!/usr/bin/env bash
# The soak: a 5-peer lab (one peer a worker) running services and sharing content for a while
# (10 minutes unless SOAK_SECONDS says otherwise) while peers are killed, powered off,
# stopped, restarted, partitioned and healed at random. Afterwards it checks that every
# service runs each of its replicas exactly once, that every shared blob is intact on every
# peer that holds it, and that nothing (container, mount, namespace, cgroup, process) is
# leaked; it reports the faults injected, the checks passed and the agents' peak memory and
# file descriptors. Not part of CI.
#   bash scripts/soak.sh                 # 10 minutes
#   SOAK_SECONDS=120 SOAK_SEED=7 bash scripts/soak.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then echo "the soak needs root (network namespaces, cgroups)" >&2; exit 1; fi
SECONDS_TOTAL=${SOAK_SECONDS:-600}
RANDOM=${SOAK_SEED:-$$}
export SHOAL_LAB=soak
export SHOAL_LAB_ROOT=${SOAK_ROOT:-/var/lib/shoal/labs}
PEERS=5

bash scripts/deps.sh >/dev/null
echo "building shoal (release)..."
cargo build --release --locked -q --bin shoal || exit 1
SHOAL=$PWD/target/release/shoal
$SHOAL lab down >/dev/null 2>&1 || true
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log() { printf '[%4ds] %s\n' "$SECONDS" "$*"; }
fail=0
check() { # name, then a command that must succeed
  local what=$1; shift
  if "$@"; then echo "  ok: $what"; passed=$((passed + 1)); else echo "  FAILED: $what"; fail=$((fail + 1)); fi
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }
pids() { python3 -c "
import json; s=json.load(open('$SHOAL_LAB_ROOT/soak/lab.json'))
print(' '.join(str(p.get('pid') or 0) for p in s['peers']))"; }

log "lab up: $PEERS peers, peer $((PEERS - 1)) a worker"
$SHOAL lab up --peers $PEERS --workers 1 >/dev/null || exit 1

# An image (busybox httpd), two services and three shared files.
mkdir -p "$WORK/root/bin" "$WORK/root/www" "$WORK/root/tmp"
cp /bin/busybox "$WORK/root/bin/busybox"
for a in sh httpd hostname sleep; do ln -s busybox "$WORK/root/bin/$a"; done
echo soak > "$WORK/root/www/index.html"
tar -C "$WORK/root" -cf "$WORK/web.tar" .
$SHOAL lab exec 0 -- shoal image import --name soak/web:v1 "$WORK/web.tar" >/dev/null || exit 1
$SHOAL lab exec 1 -- shoal service create --name web --replicas 3 -p 8080:80 soak/web:v1 \
  sh -c 'exec httpd -f -p 80 -h /www' >/dev/null || exit 1
$SHOAL lab exec 2 -- shoal service create --name idle --replicas 2 soak/web:v1 sleep 1000000 >/dev/null || exit 1
declare -A SHA
for i in 0 1 2; do
  f="$WORK/blob$i"
  head -c $((16 << 20)) /dev/urandom > "$f"
  id=$($SHOAL lab exec "$i" -- shoal share "$f" 2>/dev/null | head -1)
  SHA[$id]=$(sha256sum "$f" | cut -d' ' -f1)
  for j in $(seq 0 $((PEERS - 1))); do
    ((j == i)) || $SHOAL lab exec "$j" -- shoal get "$id" -o "$WORK/got-$i-$j" >/dev/null 2>&1 &
  done
done
wait
rm -f "$WORK"/got-*

peak_rss=0 peak_fds=0
sample() {
  for p in $(pids); do
    ((p > 0)) && [[ -d /proc/$p ]] || continue
    local rss fds
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    fds=$(ls "/proc/$p/fd" 2>/dev/null | wc -l)
    ((rss > peak_rss)) && peak_rss=$rss
    ((fds > peak_fds)) && peak_fds=$fds
  done
}

declare -A DOWN   # peer -> how it went down
kills=0 powers=0 stops=0 partitions=0 restarts=0
log "faults for ${SECONDS_TOTAL}s"
end=$((SECONDS + SECONDS_TOTAL))
while ((SECONDS < end)); do
  sample
  # Bring back what is down (each fault lasts one round).
  for p in "${!DOWN[@]}"; do
    $SHOAL lab start "$p" >/dev/null 2>&1 && restarts=$((restarts + 1))
    unset "DOWN[$p]"
  done
  $SHOAL lab heal >/dev/null 2>&1
  victim=$((RANDOM % PEERS))
  case $((RANDOM % 4)) in
    0) log "kill $victim (agent SIGKILL, containers live on)"; $SHOAL lab kill "$victim" >/dev/null && kills=$((kills + 1)); DOWN[$victim]=kill ;;
    1) log "power off $victim (agent and containers)"; $SHOAL lab kill --all "$victim" >/dev/null && powers=$((powers + 1)); DOWN[$victim]=power ;;
    2) log "stop $victim (SIGTERM: it leaves)"; $SHOAL lab stop "$victim" >/dev/null && stops=$((stops + 1)); DOWN[$victim]=stop ;;
    3)
      a=$((RANDOM % PEERS)); groups=""; rest=""
      for i in $(seq 0 $((PEERS - 1))); do if ((i == a || i == (a + 1) % PEERS)); then groups+="$i,"; else rest+="$i,"; fi; done
      log "partition ${groups%,} | ${rest%,}"; $SHOAL lab partition "${groups%,}" "${rest%,}" >/dev/null && partitions=$((partitions + 1)) ;;
  esac
  sleep $((5 + RANDOM % 10))
done
for p in "${!DOWN[@]}"; do $SHOAL lab start "$p" >/dev/null 2>&1 && restarts=$((restarts + 1)); done
$SHOAL lab heal >/dev/null 2>&1
sample

log "settling: every peer alive, every replica placed"
alive() { $SHOAL lab exec "$1" -- shoal peers --json 2>/dev/null | grep -c '"state": "alive"'; }
for _ in $(seq 600); do
  ok=1; for i in $(seq 0 $((PEERS - 1))); do [[ $(alive "$i") == "$PEERS" ]] || ok=0; done
  ((ok)) && break; sleep 0.2
done
running() { $SHOAL lab exec 0 -- shoal service ps "$1" --json 2>/dev/null | grep -c '"state": "running"'; }
for _ in $(seq 600); do [[ $(running web) == 3 && $(running idle) == 2 ]] && break; sleep 0.2; done
sleep 3

passed=0
echo "checks:"
for i in $(seq 0 $((PEERS - 1))); do check "peer $i sees $PEERS alive" test "$(alive "$i")" = "$PEERS"; done
for svc in web:3 idle:2; do
  name=${svc%:*} want=${svc#*:}
  check "$name runs $want replicas (service ps)" test "$(running "$name")" = "$want"
  total=0
  for i in $(seq 0 $((PEERS - 1))); do
    n=$($SHOAL lab exec "$i" -- shoal ps --json 2>/dev/null | json "print(sum(1 for c in d if c['spec'].get('labels',{}).get('shoal.service')=='$name'))")
    total=$((total + ${n:-0}))
  done
  check "$name has exactly $want containers across the peers (no duplicate, none lost)" test "$total" = "$want"
done
for id in "${!SHA[@]}"; do
  for i in $(seq 0 $((PEERS - 1))); do
    held=$($SHOAL lab exec "$i" -- shoal content ls --json 2>/dev/null | json "print(any(c['id']=='$id' and c['state']=='complete' for c in d))")
    [[ $held == True ]] || continue
    $SHOAL lab exec "$i" -- shoal get "$id" -o "$WORK/check" >/dev/null 2>&1
    check "blob ${id:0:12} intact on peer $i" test "$(sha256sum "$WORK/check" | cut -d' ' -f1)" = "${SHA[$id]}"
    rm -f "$WORK/check"
  done
done
log "lab down"
$SHOAL lab down >/dev/null 2>&1
left=$(( $(ip netns list | grep -c "^shoal-soak-") + $(grep -c "$SHOAL_LAB_ROOT/soak" /proc/self/mountinfo) \
  + $(find /sys/fs/cgroup -maxdepth 4 -name 'shoal-lab-soak' 2>/dev/null | wc -l) + $(pgrep -fc "$SHOAL_LAB_ROOT/soak") ))
check "nothing leaked (namespaces, mounts, cgroups, processes)" test "${left:-0}" = 0

echo
echo "faults: $kills kills, $powers power-offs, $stops stops, $partitions partitions; $restarts restarts"
echo "checks: $passed passed, $fail failed"
echo "agents: peak RSS $((peak_rss / 1024)) MiB, peak open files $peak_fds"
((fail == 0))
