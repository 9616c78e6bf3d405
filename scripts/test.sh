#!/usr/bin/env bash
# Full check: formatting, lints, and every test (unit + integration against real etcdctl).
set -euo pipefail

cd "$(dirname "$0")/.."

# The integration tests drive the real etcdctl (and can be pointed at a real etcd).
if ! command -v etcdctl >/dev/null 2>&1 || ! command -v etcd >/dev/null 2>&1; then
    echo "installing etcd-client and etcd-server" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y etcd-client etcd-server
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start several server processes each; the harness runs one cluster at
# a time per test binary, and two test threads keep a 2-core machine responsive.
cargo test --workspace --no-fail-fast -- --test-threads=2
