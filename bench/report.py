#!/usr/bin/env python3
"""Numbers for bench/run.

  report.py oha FILE.json                 -> "rps p50_ms p99_ms errors ok" of one oha run
  report.py table RUNS.tsv MACHINE.md TUNNELS.jsonl
                                          -> the markdown tables (median of the runs) and the bars
  report.py soak SAMPLES.tsv              -> the soak table and its verdict

Standard library only.
"""

import json
import statistics
import sys

TARGETS = {
    "direct": "direct (no proxy)",
    "hub": "hub (in-process state)",
    "hub-redis": "hub (Redis state)",
    "hub-base": "hub, baseline build (--baseline)",
    "hub-callers": "hub, callers required (one grant)",
    "squid": "squid (plain)",
    "squid-bump": "squid ssl-bump",
    "tinyproxy": "tinyproxy",
}
ORDER = list(TARGETS)
INTERCEPTS = {"hub", "hub-redis", "hub-base", "hub-callers", "squid-bump"}


def mode_label(target, mode):
    if mode == "h2":
        if target == "direct":
            return "HTTP/2, streams over 4 connections"
        return "HTTP/2 in the tunnel, streams over 4 connections"
    if mode == "ws":
        if target == "direct":
            return "WebSocket echo round trips"
        return "WebSocket echo round trips, tunnel"
    if mode == "http":
        return "HTTP absolute-form" if target != "direct" else "HTTP"
    if mode == "https":
        if target == "direct":
            return "HTTPS"
        return "HTTPS intercepted" if target in INTERCEPTS else "HTTPS CONNECT tunnel (not intercepted)"
    how = "intercepted" if target in INTERCEPTS else "tunnel"
    if mode == "newconn":
        if target == "direct":
            return "HTTPS, new connection per request"
        return f"HTTPS {how}, new tunnel + handshake per request"
    if target == "direct":
        return "50 ms endpoint, HTTPS"
    return f"50 ms endpoint, HTTPS {how}"


def oha_summary(path):
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        print("0 0 0 -1 0")
        return
    codes = {int(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    bad_status = sum(v for k, v in codes.items() if not 200 <= k < 300)
    errors = sum((d.get("errorDistribution") or {}).values()) + bad_status
    lat = d.get("latencyPercentiles") or {}
    rps = (d.get("summary") or {}).get("requestsPerSec") or 0.0
    p50 = (lat.get("p50") or 0.0) * 1e3
    p99 = (lat.get("p99") or 0.0) * 1e3
    # Requests per second counts successes only (oha's own figure counts every answer).
    total = ok + errors
    if total:
        rps = rps * ok / total
    print(f"{rps:.1f} {p50:.4f} {p99:.4f} {errors} {ok}")


def num(x):
    try:
        return float(x)
    except ValueError:
        return None


def load_runs(path):
    runs = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 12:
                continue
            t, mode, conns, rep, rps, p50, p99, errs, ok, cpu, rss, rt = parts[:12]
            row = {
                "rps": num(rps), "p50": num(p50), "p99": num(p99), "errors": int(errs),
                "ok": int(ok), "cpu": num(cpu), "rss": num(rss), "rt": num(rt),
            }
            if row["ok"] <= 0:  # a failed run: no numbers, only its failure
                row.update(rps=None, p50=None, p99=None, cpu=None, rss=None, rt=None)
            runs.setdefault((t, mode, int(conns)), []).append(row)
    return runs


def med(rows, key):
    vals = [r[key] for r in rows if r[key] is not None]
    return statistics.median(vals) if vals else None


def spread(rows, key, fmt):
    vals = [r[key] for r in rows if r[key] is not None]
    if not vals:
        return "–"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"


def table(runs_path, machine_path, tunnels_path):
    runs = load_runs(runs_path)
    out = []
    try:
        out.append(open(machine_path).read().rstrip())
        out.append("")
    except OSError:
        pass
    out.append(
        "Each cell is the median of the runs, (min–max) beside it. CPU is the proxy process's "
        "utime+stime over the run divided by completed requests (Squid: with its helper processes). "
        "Peak RSS is VmHWM during the run (reset before it). +p50 is the p50 added over direct at "
        "the same mode and connections. Redis RT/req: shared-state round trips per request."
    )
    out.append("")
    out.append(
        "| target | mode | conns | req/s | p50 ms | p99 ms | errors | vs direct | +p50 µs "
        "| proxy CPU µs/req | peak RSS MiB | Redis RT/req |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    modes = ["http", "https", "slow", "newconn", "h2", "ws"]
    keys = sorted(
        runs,
        key=lambda k: (modes.index(k[1]) if k[1] in modes else 9, -k[2], ORDER.index(k[0]) if k[0] in ORDER else 99),
    )
    for t, mode, conns in keys:
        rows = runs[(t, mode, conns)]
        direct = runs.get(("direct", mode, conns))
        rps, p50, p99 = med(rows, "rps"), med(rows, "p50"), med(rows, "p99")
        ratio = "–"
        dp50 = "–"
        if direct and t != "direct":
            drps, dp = med(direct, "rps"), med(direct, "p50")
            if drps and rps is not None:
                ratio = f"{rps / drps:.2f}×"
            if dp is not None and p50 is not None:
                dp50 = f"{(p50 - dp) * 1e3:+.0f}"
        rss = med(rows, "rss")
        failed = sum(1 for r in rows if r["ok"] <= 0)
        errors = sum(max(r["errors"], 0) for r in rows)
        errors = f"{errors}" + (f" ({failed} run{'s' if failed > 1 else ''} FAILED)" if failed else "")
        out.append(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                TARGETS.get(t, t), mode_label(t, mode), conns,
                spread(rows, "rps", "{:.0f}"),
                "–" if p50 is None else f"{p50:.3f}", "–" if p99 is None else f"{p99:.3f}",
                errors,
                ratio, dp50,
                spread(rows, "cpu", "{:.1f}"),
                f"{rss / 1024:.1f}" if rss else "–",
                spread(rows, "rt", "{:.3f}") if t == "hub-redis" else "–",
            )
        )
    out.append("")
    out.extend(memory_section(runs, tunnels_path))
    out.extend(bars(runs))
    print("\n".join(out))


def memory_section(runs, tunnels_path):
    out = ["### Memory", ""]
    out.append("| target | peak RSS under 64-connection HTTPS load, MiB | idle tunnels held | RSS before, MiB | RSS holding them, MiB | per tunnel, KiB | RSS after closing, MiB | tunnels left open |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    tun = {}
    try:
        with open(tunnels_path) as f:
            for line in f:
                line = line.strip()
                if line:
                    d = json.loads(line)
                    tun[d["target"]] = d["result"]
    except (OSError, ValueError):
        pass
    for t in ORDER:
        if t == "direct":
            continue
        rows = runs.get((t, "https", 64))
        if not rows and t not in tun:
            continue
        rss = med(rows, "rss") if rows else None
        r = tun.get(t) or {}
        def mib(k):
            v = r.get(k)
            return f"{v / 1024:.1f}" if isinstance(v, (int, float)) else "–"
        held = "–"
        if "open" in r:
            held = f"{r['open']} of {r['requested']}"
            if r.get("failed") or r.get("timed_out"):
                held += f" ({r.get('failed', 0)} failed, {r.get('timed_out', 0)} timed out)"
        if "error" in r:
            held = r["error"]
        per = r.get("per_tunnel_kb")
        left = r.get("open_tunnels_after_close")
        out.append(
            f"| {TARGETS[t]} | {f'{rss / 1024:.1f}' if rss else '–'} | {held} | {mib('rss_before_kb')} | "
            f"{mib('rss_holding_kb')} | {per if per is not None else '–'} | {mib('rss_after_close_kb')} | "
            f"{'–' if left is None else f'{left:.0f}'} |"
        )
    out.append("")
    return out


def bars(runs):
    """The bars of issue 8, evaluated on this run's medians."""
    def m(t, mode, c, key):
        rows = runs.get((t, mode, c))
        return med(rows, key) if rows else None

    out = ["### Bars (issue 8), from this run", ""]
    out.append("| bar | measured | target | met |")
    out.append("|---|---:|---:|---|")

    def row(name, value, target, ok, unit="", digits=1):
        if value is None or target is None:
            out.append(f"| {name} | – | – | not measured |")
            return
        out.append(f"| {name} | {value:.{digits}f}{unit} | {target} | {'yes' if ok else 'NO'} |")

    cpu = m("hub", "https", 64, "cpu")
    row("hub HTTPS intercepted, CPU µs/req (c64)", cpu, "≤ 30 µs (g3proxy ~36)", cpu is not None and cpu <= 30, " µs")
    bump = m("squid-bump", "https", 64, "cpu")
    row("… as a share of squid-bump's CPU µs/req", cpu / bump * 100 if cpu and bump else None,
        "≤ 50 %", bool(cpu and bump and cpu <= bump / 2), " %")
    h1, d1 = m("hub", "https", 1, "p50"), m("direct", "https", 1, "p50")
    add = (h1 - d1) * 1e3 if h1 is not None and d1 is not None else None
    row("hub HTTPS added p50 at 1 connection", add, "< 30 µs", add is not None and add < 30, " µs")
    hr, br = m("hub", "https", 64, "rps"), m("squid-bump", "https", 64, "rps")
    row("hub HTTPS req/s at c64 ÷ squid-bump's", hr / br if hr and br else None, "≥ 2.0", bool(hr and br and hr >= 2 * br), "×")
    rc = m("hub-redis", "https", 64, "cpu")
    row("Redis state CPU/req over in-process (HTTPS c64)", (rc / cpu - 1) * 100 if rc and cpu else None,
        "≤ +25 %", bool(rc and cpu and rc <= cpu * 1.25), " %")
    rt = m("hub-redis", "https", 64, "rt")
    row("Redis round trips per request (HTTPS c64)", rt, "≤ 1", rt is not None and rt <= 1, digits=3)
    hc, sc = m("hub", "http", 64, "cpu"), m("squid", "http", 64, "cpu")
    row("plain HTTP: hub CPU µs/req ÷ squid's (c64)", hc / sc if hc and sc else None, "≤ 1.0 (g3proxy ~20 µs: ~0.3)",
        bool(hc and sc and hc <= sc), "×", digits=2)
    hh, sh = m("hub", "http", 64, "rps"), m("squid", "http", 64, "rps")
    row("plain HTTP: hub req/s ÷ squid's (c64)", hh / sh if hh and sh else None, "≥ 1.0", bool(hh and sh and hh >= sh), "×", digits=2)
    sr, dr = m("hub", "slow", 64, "rps"), m("direct", "slow", 64, "rps")
    row("50 ms endpoint c64: hub req/s vs direct", (sr / dr - 1) * 100 if sr and dr else None, "within −3 %",
        bool(sr and dr and sr >= 0.97 * dr), " %")
    for mode, conns in (("https", 64), ("http", 64), ("https", 1)):
        hc, bc = m("hub", mode, conns, "cpu"), m("hub-base", mode, conns, "cpu")
        if hc and bc:
            row(f"{mode.upper()} c{conns}: hub CPU µs/req ÷ baseline build's", hc / bc, "≤ 1.0 + noise",
                hc <= bc * 1.05, "×", digits=3)
    for mode, conns in (("https", 64), ("http", 64), ("https", 1)):
        cc, hc = m("hub-callers", mode, conns, "cpu"), m("hub", mode, conns, "cpu")
        if cc and hc:
            row(f"{mode.upper()} c{conns}: callers required CPU µs/req ÷ callers off", cc / hc, "≤ 1.10",
                cc <= hc * 1.10, "×", digits=3)
    sp, dp = m("hub", "slow", 64, "p99"), m("direct", "slow", 64, "p99")
    row("50 ms endpoint c64: hub p99 − direct p99", sp - dp if sp is not None and dp is not None else None,
        "≤ 5 ms", sp is not None and dp is not None and sp - dp <= 5, " ms")
    out.append("")
    return out


def soak(samples_path):
    rows = []
    with open(samples_path) as f:
        for line in f:
            p = line.split()
            if len(p) >= 5:
                rows.append([float(x) for x in p[:5]])
    out = ["| t s | hub RSS MiB | requests so far | open tunnels | leaves minted so far |", "|---:|---:|---:|---:|---:|"]
    for t, rss, reqs, tunnels, leaves in rows:
        out.append(f"| {t:.0f} | {rss / 1024:.1f} | {reqs:.0f} | {tunnels:.0f} | {leaves:.0f} |")
    if len(rows) >= 3:
        # Growth after warm-up: from the sample at 20 % of the soak to the last one.
        base = rows[max(1, len(rows) // 5)]
        last = rows[-1]
        peak = max(r[1] for r in rows[max(1, len(rows) // 5):])
        growth = (last[1] - base[1]) / 1024
        pct = (last[1] / base[1] - 1) * 100 if base[1] else 0
        verdict = "no growth" if pct <= 5 else "GROWTH"
        out.append("")
        out.append(
            f"RSS from t={base[0]:.0f} s to t={last[0]:.0f} s: {base[1] / 1024:.1f} → {last[1] / 1024:.1f} MiB "
            f"({growth:+.1f} MiB, {pct:+.1f} %; peak after warm-up {peak / 1024:.1f} MiB): {verdict} "
            f"(threshold +5 %)."
        )
    print("\n".join(out))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "oha" and len(sys.argv) == 3:
        oha_summary(sys.argv[2])
    elif cmd == "table" and len(sys.argv) == 5:
        table(*sys.argv[2:5])
    elif cmd == "soak" and len(sys.argv) == 3:
        soak(sys.argv[2])
    else:
        sys.exit(__doc__)
