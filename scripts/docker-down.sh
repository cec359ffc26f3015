#!/usr/bin/env bash
# Stop the dockerd that scripts/docker-up.sh started, and nothing else.
#
# Usage: scripts/docker-down.sh [PIDFILE]
#
# PIDFILE (default /run/testbed-dockerd.pid) holds "pid starttime" as docker-up.sh
# wrote it. The process is signalled only if it still runs with that start time and is
# a dockerd (a reused pid is never hit): SIGTERM, up to DOCKERD_STOP_TIMEOUT seconds
# (default 30) for it to stop its containers and its containerd, then SIGKILL.
# Without PIDFILE, dockerd was not started by us and is left running.
set -euo pipefail

PIDFILE=${1:-/run/testbed-dockerd.pid}
TIMEOUT=${DOCKERD_STOP_TIMEOUT:-30}

if [[ ! -e $PIDFILE ]]; then
    echo "docker-down: no $PIDFILE: dockerd was not started by docker-up.sh, left alone" >&2
    exit 0
fi
read -r pid start <"$PIDFILE" || true

ours() {
    [[ -r /proc/$pid/stat ]] || return 1
    [[ $(awk '{print $22}' "/proc/$pid/stat") == "$start" ]] || return 1
    [[ $(cat "/proc/$pid/comm") == dockerd ]]
}

if [[ -n ${pid:-} ]] && ours; then
    kill -TERM "$pid"
    deadline=$((SECONDS + TIMEOUT))
    while ours && ((SECONDS < deadline)); do sleep 0.2; done
    if ours; then
        echo "docker-down: dockerd (pid $pid) still running after ${TIMEOUT}s: SIGKILL" >&2
        kill -KILL "$pid" || true
    fi
    echo "docker-down: stopped dockerd (pid $pid)" >&2
else
    echo "docker-down: dockerd of $PIDFILE is already gone" >&2
fi
rm -f "$PIDFILE"

# The forwarding settings as they were before docker-up.sh started dockerd.
if [[ -r $PIDFILE.net ]]; then
    { read -r policy; read -r bridge_nf; } <"$PIDFILE.net" || true
    [[ ${policy:-} == ACCEPT || ${policy:-} == DROP ]] && iptables -P FORWARD "$policy" || true
    [[ ${bridge_nf:-} == absent ]] && bridge_nf=0   # br_netfilter was not loaded: no bridged frame saw iptables
    if [[ ${bridge_nf:-} == [01] && -w /proc/sys/net/bridge/bridge-nf-call-iptables ]]; then
        echo "$bridge_nf" >/proc/sys/net/bridge/bridge-nf-call-iptables
    fi
    rm -f "$PIDFILE.net"
    echo "docker-down: FORWARD policy ${policy:-unchanged}, bridge-nf-call-iptables ${bridge_nf:-unchanged}, as before dockerd" >&2
fi
