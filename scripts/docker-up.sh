#!/usr/bin/env bash
# Start dockerd if it is not running, and wait until its socket answers.
#
# Usage: scripts/docker-up.sh [PIDFILE]
#
# If dockerd already answers, nothing is started and PIDFILE is not written: it is not
# ours to stop. Otherwise dockerd is started in its own session (without TESTBED_RUN,
# so no run's clean-up mistakes it for a testbed process), its pid and start time are
# written to PIDFILE (default /run/testbed-dockerd.pid), and scripts/docker-down.sh
# PIDFILE later stops exactly that process. The wait for the socket is bounded
# (DOCKERD_TIMEOUT seconds, default 60); on timeout the started dockerd is stopped again.
#
# dockerd sets the root namespace's FORWARD policy to DROP and loads br_netfilter with
# bridge-nf-call-iptables=1, and leaves both after it stops (plain `mn` then loses every
# frame). The two settings as they were are kept in PIDFILE.net, and docker-down.sh puts
# them back.
set -euo pipefail

PIDFILE=${1:-/run/testbed-dockerd.pid}
SOCKET=/var/run/docker.sock
TIMEOUT=${DOCKERD_TIMEOUT:-60}
LOG=${DOCKERD_LOG:-/var/log/testbed-dockerd.log}

answers() {
    # The engine's ping endpoint over its unix socket; a dead socket file fails fast.
    [[ -S $SOCKET ]] && timeout 5 python3 - "$SOCKET" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
sys.exit(0 if b"OK" in s.recv(1024) else 1)
EOF
}

if answers; then
    echo "docker-up: dockerd already running (left alone)" >&2
    exit 0
fi
if ! command -v dockerd >/dev/null; then
    echo "docker-up: dockerd not found: install the Debian package docker.io (scripts/setup.sh)" >&2
    exit 1
fi
if [[ -e $PIDFILE ]]; then
    echo "docker-up: $PIDFILE exists but dockerd does not answer: run scripts/docker-down.sh $PIDFILE" >&2
    exit 1
fi

bridge_nf=/proc/sys/net/bridge/bridge-nf-call-iptables
{ iptables -S FORWARD 2>/dev/null | awk '$1=="-P"{print $3; exit}' || true
  cat "$bridge_nf" 2>/dev/null || echo absent; } >"$PIDFILE.net"
env -u TESTBED_RUN setsid dockerd >>"$LOG" 2>&1 </dev/null &
pid=$!
start=$(awk '{print $22}' "/proc/$pid/stat")
echo "$pid $start" >"$PIDFILE"
echo "docker-up: started dockerd (pid $pid, log $LOG)" >&2

deadline=$((SECONDS + TIMEOUT))
until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PIDFILE"
        echo "docker-up: dockerd exited while starting; see $LOG" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "docker-up: dockerd did not answer on $SOCKET within ${TIMEOUT}s; stopping it (see $LOG)" >&2
        "$(dirname "$0")/docker-down.sh" "$PIDFILE"
        exit 1
    fi
    sleep 0.2
done
echo "docker-up: dockerd answers on $SOCKET" >&2
