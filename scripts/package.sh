#!/usr/bin/env bash
# Builds Shoal's Debian package (target/debian/shoal_<version>-1_<arch>.deb) with cargo-deb,
# from [package.metadata.deb] in Cargo.toml; installs cargo-deb first if it is missing.
#
#   bash scripts/package.sh                 # the release package: a release build, then the .deb
#   bash scripts/package.sh --dev           # from the debug build already in target/debug, no
#                                           # compile, into target/debian/dev: checks the
#                                           # packaging (tests/package.rs); not for shipping
#   bash scripts/package.sh --install-tool  # only install cargo-deb (scripts/deps.sh)
#
# Prints the paths of the packages it made.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0

mode=release
case "${1:-}" in
  "") ;;
  --dev) mode=dev ;;
  --install-tool) mode=tool ;;
  *) echo "usage: $0 [--dev | --install-tool]" >&2; exit 2 ;;
esac

installed=$(cargo deb --version 2>/dev/null || true)
if [[ "$installed" != *" $CARGO_DEB_VERSION"* ]]; then
  echo "installing cargo-deb $CARGO_DEB_VERSION${installed:+ (found: $installed)}" >&2
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
[[ $mode == tool ]] && exit 0

target=${CARGO_TARGET_DIR:-target}
if [[ $mode == release ]]; then
  out=$target/debian
  mkdir -p "$out"
  # [profile.release] keeps debug info (debug = 1), which cargo-deb would ship in the binary
  # (300 MB). --dbgsym strips it into a separate shoal-dbgsym .ddeb (install it next to the
  # .deb for symbolized backtraces and gdb); the .deb itself stays small.
  cargo deb --locked --dbgsym --output "$out"
else
  # cargo-deb maps the assets' target/release/ prefix to the chosen profile's directory.
  # It warns that the dev profile is unsupported (the package is for checking the packaging,
  # not for shipping): -q keeps that quiet. --fast: lighter compression. Its own directory,
  # never mistaken for (or overwriting) the release package.
  out=$target/debian/dev
  mkdir -p "$out"
  bin=$target/debug/shoal
  [[ -x $bin ]] || { echo "$bin is missing: run cargo build --bin shoal first" >&2; exit 1; }
  cargo deb --locked --profile dev --no-build --fast -q --output "$out"
fi
