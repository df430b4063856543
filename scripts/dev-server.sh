# Sourced by the scripts that need a dev server (demo.sh, bench-*.sh):
#
#   . scripts/dev-server.sh
#   trap 'stop_dev_server' EXIT
#   start_dev_server ALLOT DIR
#
# start_dev_server runs `ALLOT server --dev` on a free loopback port, its
# standard output in DIR/server.out and its log in DIR/server.log, waits
# for the export lines it prints, exports them (ALLOT_ADDR, ALLOT_TOKEN,
# ALLOT_ADMIN_TOKEN) and sets $server to its pid. If the server exits
# first, it prints the log and fails. stop_dev_server stops it.

server=

start_dev_server() {
    local allot="$1" dir="$2"
    "$allot" server --dev --listen 127.0.0.1:0 >"$dir/server.out" 2>"$dir/server.log" &
    server=$!
    for _ in $(seq 1 200); do
        grep -q '^export ALLOT_ADMIN_TOKEN=' "$dir/server.out" && break
        kill -0 "$server" 2>/dev/null || { cat "$dir/server.log" >&2; return 1; }
        sleep 0.05
    done
    eval "$(grep '^export ' "$dir/server.out")"
}

stop_dev_server() {
    if [[ -n "$server" ]]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
}
