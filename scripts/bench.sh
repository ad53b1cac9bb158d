#!/usr/bin/env bash
# The benchmark suite: installs the reference systems, builds in release, runs the benchmarks.
#   bash scripts/bench.sh                 every benchmark
#   bash scripts/bench.sh failure --runs 10
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
if ! command -v serf >/dev/null; then
  echo "installing serf (membership reference)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq serf >/dev/null
fi
if ! command -v runc >/dev/null; then
  echo "installing runc (container runtime reference)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
fi
cargo build --release --locked -q -p shoal -p shoal-bench
B=target/release/shoal-bench
if (($#)); then exec "$B" "$@"; fi
"$B" failure
"$B" idle
"$B" lab
"$B" sim
"$B" swarm
"$B" loopback
"$B" runtime
"$B" services
