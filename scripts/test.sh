#!/usr/bin/env bash
# Full check: formatting, lints, and every test (unit + integration against real etcdctl,
# etcd, PostgreSQL and MariaDB).
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

# The results sink tests (tests/sinks.rs) start real PostgreSQL and MariaDB servers of their own
# on free ports, as child processes in temp dirs.
have_postgres() {
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_mariadb() {
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]
}
if ! have_postgres || ! have_mariadb; then
    echo "installing postgresql and mariadb-server" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    # No service may be started by the install (policy-rc.d 101), so nothing holds a port or
    # runs after the tests; where a service started anyway (systemd hosts), stop it.
    POLICY=/usr/sbin/policy-rc.d
    OURS=""
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
        $SUDO chmod +x "$POLICY"
        OURS=1
        trap '$SUDO rm -f "$POLICY"' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y postgresql mariadb-server
    if [ -n "$OURS" ]; then
        $SUDO rm -f "$POLICY"
        trap - EXIT
    fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        $SUDO systemctl disable --now postgresql mariadb >/dev/null 2>&1 || true
    fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start several server processes each; the harness runs one cluster at
# a time per test binary, and two test threads keep a 2-core machine responsive.
cargo test --workspace --no-fail-fast -- --test-threads=2
