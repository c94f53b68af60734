# Sourced by bench/run --soak S: load through the hub (in-process state) for S seconds while its
# RSS is sampled every 10 s. Two loads at once: 64 keep-alive connections of intercepted HTTPS
# (per-request leaks) and 2 connections that open a new tunnel + TLS handshake for every request
# (per-connection leaks: tunnel tasks, TLS sessions, leaf lookups).
# shellcheck shell=bash disable=SC2016

metric_sum() { # METRICS_PORT NAME -> sum over every series of NAME
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v n="$2" '($1 == n || index($1, n "{") == 1) {s += $2} END {printf "%.0f\n", s + 0}'
}

run_soak() {
    local pid=${PID_OF[hub]} samples="$RESULTS/soak.tsv" period=10
    local n=$(( (SOAK + period - 1) / period ))
    : >"$samples"
    log "soak: ${SOAK} s of HTTPS load through the hub (64 keep-alive + 2 new-connection-per-request), RSS every ${period} s"
    local url args=(--no-tui --output-format json -z "${SOAK}s" -w --cacert "$WORK/pki/clients-ca.pem"
        -H "Authorization: Bearer module_dummy_key" -x "http://127.0.0.1:$HUB_PROXY" --no-pre-lookup)
    url=$(url_for hub https)
    local keep new
    # stdout (the JSON) and stderr go to separate files: exec keeps the pid that of the timeout.
    start oha-soak-keepalive "$WORK/soak-keepalive.json" sh -c 'exec "$@" 2>>"$0"' "$WORK/soak-keepalive.err" \
        timeout --kill-after=5 $((SOAK + 60)) "$OHA" "${args[@]}" -c 64 "$url"
    keep=$LAST_PID
    start oha-soak-newconn "$WORK/soak-newconn.json" sh -c 'exec "$@" 2>>"$0"' "$WORK/soak-newconn.err" \
        timeout --kill-after=5 $((SOAK + 60)) "$OHA" "${args[@]}" -c 2 --disable-keepalive "$url"
    new=$LAST_PID
    local t0=$SECONDS i rss
    printf '%s\t%s\t%s\t%s\t%s\n' 0 "$(status_kb VmRSS "$pid")" \
        "$(metric_sum "$HUB_METRICS" integration_requests_total)" \
        "$(metric_sum "$HUB_METRICS" integration_open_tunnels)" \
        "$(metric_sum "$HUB_METRICS" integration_certificates_minted_total)" >>"$samples"
    for ((i = 1; i <= n; i++)); do
        sleep "$period"
        truncate_logs
        rss=$(status_kb VmRSS "$pid")
        printf '%s\t%s\t%s\t%s\t%s\n' $((SECONDS - t0)) "$rss" \
            "$(metric_sum "$HUB_METRICS" integration_requests_total)" \
            "$(metric_sum "$HUB_METRICS" integration_open_tunnels)" \
            "$(metric_sum "$HUB_METRICS" integration_certificates_minted_total)" >>"$samples"
        log "soak t=$((SECONDS - t0)) s: hub RSS $((rss / 1024)) MiB"
    done
    wait "$keep" 2>/dev/null || true
    wait "$new" 2>/dev/null || true
    sleep 3
    printf '%s\t%s\t%s\t%s\t%s\n' $((SECONDS - t0)) "$(status_kb VmRSS "$pid")" \
        "$(metric_sum "$HUB_METRICS" integration_requests_total)" \
        "$(metric_sum "$HUB_METRICS" integration_open_tunnels)" \
        "$(metric_sum "$HUB_METRICS" integration_certificates_minted_total)" >>"$samples"
    {
        echo "### Soak: ${SOAK} s through the hub (in-process state), RSS every ${period} s (last row: 3 s after the load stopped)"
        echo
        echo "- keep-alive load (64 connections): $(python3 "$BENCH/report.py" oha "$WORK/soak-keepalive.json" | awk '{printf "%.0f req/s, p99 %.2f ms, %d errors", $1, $3, $4}')"
        echo "- new tunnel + TLS handshake per request (2 connections): $(python3 "$BENCH/report.py" oha "$WORK/soak-newconn.json" | awk '{printf "%.0f req/s, p99 %.2f ms, %d errors", $1, $3, $4}')"
        echo "- hub peak RSS (VmHWM) over the whole soak: $(($(status_kb VmHWM "$pid") / 1024)) MiB"
        echo
        python3 "$BENCH/report.py" soak "$samples"
    } | tee "$RESULTS/soak.md"
    log "results in $RESULTS"
}
