#!/usr/bin/env bash
# `make demo`: the original two-server setup, done right. Starts peerd a
# (:8080) and peerd b (:8081) with their built-in defaults, sends a message
# from a, shows it arriving at b, shows the link's status, and stops both.
# Control sockets are at their default places (so plain `peerctl -i a`
# finds them); journals go to a temp dir so the demo leaves no state behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/debug}
dir=$(mktemp -d /tmp/peerlink-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

ctl() { local i=$1; shift; "$bin/peerctl" -i "$i" "$@"; }
show() { echo "\$ $*"; }

for i in a b; do
    "$bin/peerd" "$i" --state-dir "$dir/$i" 2>"$dir/$i.log" &
    pids+=($!)
done

# Wait (with a deadline) until both daemons answer and the link is up.
for _ in $(seq 1 100); do
    if ctl a status >/dev/null 2>&1 && ctl b status >/dev/null 2>&1; then break; fi
    sleep 0.1
done
if ! ctl a status >/dev/null 2>&1; then
    echo "the link did not come up; logs:" >&2
    cat "$dir/a.log" "$dir/b.log" >&2
    exit 1
fi

show "peerctl -i a send 'hello from a'"
ctl a send 'hello from a'

show "peerctl -i b tail"
for _ in $(seq 1 100); do
    out=$(ctl b tail)
    [ -n "$out" ] && break
    sleep 0.1
done
echo "$out"
[ -n "$out" ] || { echo "the message did not arrive" >&2; exit 1; }

show "peerctl -i a status"
ctl a status

show "kill -TERM (peerd a and b)"
cleanup
trap - EXIT
echo "both stopped"
