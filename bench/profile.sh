# Sourced by bench/run --profile S: where the hub's CPU goes. For each of HTTPS (intercepted) and
# plain HTTP at 64 connections, `perf record` samples the hub process (software cpu-clock event,
# which works where hardware counters do not; DWARF call graphs from the release binary's
# unwind tables) for S seconds under load, then `perf report` writes flat (self) and inclusive
# (children) profiles into the results directory.
# shellcheck shell=bash

run_profile() {
    command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"
    local pid=${PID_OF[hub]} mode data
    for mode in https http; do
        data="$RESULTS/perf-$mode.data"
        log "profile: hub under $mode c64 load, perf record for ${PROFILE} s"
        start "oha-profile-$mode" "$WORK/profile-$mode.json" sh -c 'exec "$@" 2>>"$0"' "$WORK/profile-$mode.err" \
            timeout --kill-after=5 $((PROFILE + 60)) "$OHA" --no-tui --output-format json -z "$((PROFILE + 4))s" -c 64 -w \
            --cacert "$WORK/pki/clients-ca.pem" -H "Authorization: Bearer module_dummy_key" \
            -x "http://127.0.0.1:$HUB_PROXY" "$(url_for hub "$mode")"
        local load=$LAST_PID
        sleep 2
        timeout --kill-after=5 $((PROFILE + 30)) perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 \
            -p "$pid" -o "$data" -- sleep "$PROFILE" >/dev/null 2>"$WORK/perf-record-$mode.log" ||
            log "perf record: $(tail -2 "$WORK/perf-record-$mode.log")"
        wait "$load" 2>/dev/null || true
        truncate_logs
        log "profile: $mode load: $(python3 "$BENCH/report.py" oha "$WORK/profile-$mode.json" | awk '{printf "%.0f req/s", $1}')"
        perf report -i "$data" --stdio --no-children --sort dso -g none --percent-limit 0.5 \
            >"$RESULTS/perf-$mode-dso.txt" 2>/dev/null || true
        perf report -i "$data" --stdio --no-children --sort symbol -g none --percent-limit 0.3 \
            >"$RESULTS/perf-$mode-self.txt" 2>/dev/null || true
        perf report -i "$data" --stdio --children --sort symbol -g none --percent-limit 1.5 \
            >"$RESULTS/perf-$mode-children.txt" 2>/dev/null || true
        log "profile: $RESULTS/perf-$mode-{dso,self,children}.txt"
    done
}
