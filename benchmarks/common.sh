# Sourced by the benchmark scripts (after setting $work and $bin): starts `rosetta serve` in
# the background, waits until it is ready, and ends every process it started on exit.

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start NAME CONFIG [ARGS...]: `rosetta serve --config CONFIG ARGS...` ($ROSETTA is the
# binary, this build's unless set); its URL is left in $started_url. Not to be called in a
# subshell, which would lose the PID (and leave the server running).
start() {
    local name=$1 config=$2; shift 2
    "${ROSETTA:-$bin/rosetta}" serve --config "$config" "$@" > "$work/$name.out" 2> "$work/$name.err" &
    pids+=($!)
    started_url=""
    for _ in $(seq 600); do
        started_url=$(sed -n 's/^listening on //p' "$work/$name.out")
        [[ -n "$started_url" ]] && curl -sf "$started_url/ready" > /dev/null && return
        sleep 0.1
    done
    echo "$name did not become ready; see $work/$name.err" >&2
    exit 1
}
