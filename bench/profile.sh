# Sourced by bench/run --profile S: where the hub's CPU goes. For each of HTTPS (intercepted) and
# plain HTTP at 64 connections, `perf record` samples the hub process (software cpu-clock event,
# which works where hardware counters do not; DWARF call graphs from the release binary's
# unwind tables) for S seconds under load, then `perf report` writes flat (self) and inclusive
# (children) profiles into the results directory.
# shellcheck shell=bash disable=SC2016

run_profile() {
    command -v perf >/dev/null || die "perf is not installed (apt-get install linux-perf)"
    local pid=${PID_OF[hub]} mode data
    for mode in https http; do
        data="$RESULTS/perf-$mode.data"
        log "profile: hub under $mode c64 load, perf record for ${PROFILE} s"
        start "oha-profile-$mode" "$WORK/profile-$mode.json" sh -c 'exec "$@" 2>>"$0"' "$WORK/profile-$mode.err" \
            timeout --kill-after=5 $((PROFILE + 60)) "$OHA" --no-tui --output-format json -z "$((PROFILE + 4))s" -c 64 -w \
            --cacert "$WORK/pki/clients-ca.pem" -H "Authorization: Bearer module_dummy_key" \
            -x "http://127.0.0.1:$HUB_PROXY" --no-pre-lookup "$(url_for hub "$mode")"
        local load=$LAST_PID
        sleep 2
        timeout --kill-after=5 $((PROFILE + 30)) perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 \
            -p "$pid" -o "$data" -- sleep "$PROFILE" >/dev/null 2>"$WORK/perf-record-$mode.log" ||
            log "perf record: $(tail -2 "$WORK/perf-record-$mode.log")"
        wait "$load" 2>/dev/null || true
        truncate_logs
        log "profile: $mode load: $(python3 "$BENCH/report.py" oha "$WORK/profile-$mode.json" | awk '{printf "%.0f req/s", $1}')"
        perf report -i "$data" --stdio --no-children --sort dso -g none --percent-limit 0.5 \
            >"$RESULTS/perf-$mode-dso.txt" 2>/dev/null || true
        perf report -i "$data" --stdio --no-children --sort symbol -g none --percent-limit 0.05 \
            >"$RESULTS/perf-$mode-self.txt" 2>/dev/null || true
        perf report -i "$data" --stdio --children --sort symbol -g none --percent-limit 0.3 \
            >"$RESULTS/perf-$mode-children.txt" 2>/dev/null || true
        python3 "$BENCH/perf_summary.py" "$RESULTS/perf-$mode-children.txt" "$RESULTS/perf-$mode-self.txt" \
            "$RESULTS/perf-$mode-dso.txt" >"$RESULTS/perf-$mode-summary.txt"
        log "profile: $RESULTS/perf-$mode-{summary,dso,self,children}.txt"
        # The raw samples are ~200 MB per mode: kept only with --keep (for drilling with perf report).
        ((KEEP)) || rm -f "$data"
    done
    run_syscalls
}

# Syscalls per request at one connection (no batching across connections): `perf trace -s`
# counts every syscall of every hub thread while the load runs; divided by the requests the
# hub answered meanwhile (integration_requests_total).
run_syscalls() {
    local pid=${PID_OF[hub]} mode out secs=3
    for mode in https http; do
        out="$RESULTS/syscalls-$mode-c1.txt"
        start "oha-syscalls-$mode" "$WORK/syscalls-$mode.json" sh -c 'exec "$@" 2>>"$0"' "$WORK/syscalls-$mode.err" \
            timeout --kill-after=5 60 "$OHA" --no-tui --output-format json -z "$((secs + 3))s" -c 1 -w \
            --cacert "$WORK/pki/clients-ca.pem" -H "Authorization: Bearer module_dummy_key" \
            -x "http://127.0.0.1:$HUB_PROXY" --no-pre-lookup "$(url_for hub "$mode")"
        local load=$LAST_PID r0 r1
        sleep 1.5
        r0=$(metric_total integration_requests_total)
        timeout --kill-after=5 $((secs + 30)) perf trace -s -p "$pid" -o "$WORK/trace-$mode.txt" -- sleep "$secs" \
            >/dev/null 2>&1 || true
        r1=$(metric_total integration_requests_total)
        # Who makes the syscalls that are not the request's own I/O: call chains of each.
        timeout --kill-after=5 30 perf record -q -e syscalls:sys_enter_getpeername -e syscalls:sys_enter_getrandom \
            -e syscalls:sys_enter_write --call-graph dwarf,16384 -p "$pid" -o "$WORK/sc-$mode.data" -- sleep 1 \
            >/dev/null 2>&1 || true
        perf report -i "$WORK/sc-$mode.data" --stdio --no-children --sort sym -G --percent-limit 5 \
            >"$RESULTS/syscalls-$mode-callers.txt" 2>/dev/null || true
        wait "$load" 2>/dev/null || true
        truncate_logs
        awk -v n=$((r1 - r0)) -v mode="$mode" '
            NF >= 8 && $1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ { calls[$1] += $2; total += $2 }
            END {
                printf "hub, %s at 1 connection: %d requests traced, %.1f syscalls per request\n", mode, n, (n ? total / n : 0)
                for (c in calls) if (n && calls[c] / n >= 0.05) printf "  %-16s %6.2f per request\n", c, calls[c] / n
            }' "$WORK/trace-$mode.txt" >"$WORK/syscalls.tmp"
        { head -1 "$WORK/syscalls.tmp"; tail -n +2 "$WORK/syscalls.tmp" | sort -k2 -nr; } >"$out"
        log "syscalls: $(head -1 "$out")"
    done
}

metric_total() { # NAME -> sum over every series, from the hub's /metrics
    curl -s --max-time 5 "http://127.0.0.1:$HUB_METRICS/metrics" |
        awk -v n="$1" '($1 == n || index($1, n "{") == 1) {s += $2} END {printf "%.0f\n", s + 0}'
}
