#!/usr/bin/env bash
# `make demo`: the original two-server setup, done right, in a sandbox of
# its own. Starts a peerd a and b linked to each other on two free loopback
# ports, with their sockets, journals and logs in a fresh temp dir (never
# the default ports, sockets or state dirs, so instances a and b you run
# yourself are neither used nor disturbed), sends a message from a that no
# other run could have sent, checks that b received exactly that, shows the
# link's status, and stops both. Any step that does not work stops the demo
# with the daemons' logs and exit status 1.
#
# BIN: where peerd and peerctl are (make passes $(TARGET_DIR)/debug).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "${BIN:-target/debug}" && pwd)
for b in peerd peerctl; do
    [ -x "$bin/$b" ] || { echo "demo: $bin/$b is not built (run \`make build\`)" >&2; exit 1; }
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/peerlink-demo.XXXXXX")
pids=()
stop() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop; rm -rf "$dir"' EXIT
cd "$dir"

fail() {
    echo "demo: FAILED: $*" >&2
    for i in a b; do
        [ -f "$i.log" ] && { echo "--- log of the demo's peerd $i:" >&2; cat "$i.log" >&2; }
    done
    exit 1
}
# Everything runs with relative paths in $dir, so what is shown is what
# you would type in such a folder.
show() { echo "\$ $*"; }
ctl() { local i=$1; shift; "$bin/peerctl" --socket "$i.sock" "$@"; }

# A port nobody listens on right now, below the ephemeral range (an
# outgoing connection could take one from that range first).
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((10000 + RANDOM % 10000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    fail "no free loopback port in 10000..19999"
}

# Start both; a port taken between the check and the bind is retried with
# others (each daemon says why it stopped in its log).
up=no
for attempt in 1 2 3; do
    pa=$(free_port) pb=$(free_port)
    [ "$pa" != "$pb" ] || continue
    printf 'listen = "127.0.0.1:%s"\n[[peer]]\nname = "b"\nurl = "ws://127.0.0.1:%s/ws"\n' "$pa" "$pb" >a.toml
    printf 'listen = "127.0.0.1:%s"\n[[peer]]\nname = "a"\nurl = "ws://127.0.0.1:%s/ws"\n' "$pb" "$pa" >b.toml
    rm -rf a-state b-state a.log b.log
    for i in a b; do
        "$bin/peerd" "$i" --config "$i.toml" --socket "$i.sock" --state-dir "$i-state" 2>"$i.log" &
        pids+=($!)
    done
    # Wait (deadline 10 s) until both answer with their link up, or one exits.
    for _ in $(seq 1 100); do
        if ctl a status >/dev/null 2>&1 && ctl b status >/dev/null 2>&1; then up=yes; break; fi
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || break 2; done
        sleep 0.1
    done
    [ $up = yes ] && break
    if grep -q "already in use\|already answering" a.log b.log 2>/dev/null && [ $attempt -lt 3 ]; then
        stop
        continue
    fi
    fail "the demo's daemons did not come up linked within 10 s"
done
[ $up = yes ] || fail "no two free ports found to run on"
echo "demo: peerd a on 127.0.0.1:$pa and b on 127.0.0.1:$pb, files in $dir"
show cat a.toml
cat a.toml

msg="hello from a (demo $$-$RANDOM at $(date +%T))"
show "peerctl --socket a.sock send --wait '$msg'"
ctl a send --wait "$msg" || fail "send failed"

show "peerctl --socket b.sock tail -n 1"
out=$(ctl b tail -n 1) || fail "tail failed"
echo "$out"
[[ "$out" == *" a $msg" ]] || fail "b's last message is not the one just sent: '$out'"
[ "$(ctl b tail -n 10 | wc -l)" = 1 ] || fail "b's inbox holds more than the demo's message"

show "peerctl --socket a.sock status"
ctl a status || fail "status of a says the link is down (exit $?)"

show "kill -TERM (peerd a and b)"
for p in "${pids[@]}"; do kill -TERM "$p"; done
for i in 0 1; do
    rc=0; wait "${pids[$i]}" || rc=$?
    [ $rc = 0 ] || fail "peerd $([ $i = 0 ] && echo a || echo b) exited with $rc on SIGTERM"
done
pids=()
echo "both stopped; demo ok"
