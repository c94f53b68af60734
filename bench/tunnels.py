#!/usr/bin/env python3
"""Opens N idle CONNECT tunnels through an HTTP proxy, completes the TLS handshake inside each
one (the proxy intercepts: its leaf must verify against --cafile), holds them all open, and
reports the proxy's RSS before, while holding and after closing them.

Bounded: at most N tunnels, at most --parallel handshakes in flight, a deadline for the whole
opening phase, a fixed hold time. Loopback only (the proxy address must be 127.0.0.1 or ::1).

Prints one JSON object on stdout.
"""

import argparse
import asyncio
import json
import resource
import ssl
import sys
import time
import urllib.request


def rss_kb(pids, field="VmRSS"):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def scrape(url, name):
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return None


async def open_tunnel(args, ctx, sem, held, failures):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.proxy_host, args.proxy_port), 10
            )
            writer.write(
                f"CONNECT {args.host}:{args.port} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
                failures.append("connect: " + head.split(b"\r\n", 1)[0].decode(errors="replace"))
                writer.close()
                return
            await asyncio.wait_for(
                writer.start_tls(ctx, server_hostname=args.host), 15
            )
            held.append(writer)
        except Exception as e:  # noqa: BLE001 - any failure is counted and reported
            failures.append(type(e).__name__ + ": " + str(e)[:120])


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy", required=True, help="host:port of the proxy (loopback)")
    p.add_argument("--host", required=True, help="CONNECT/SNI host")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--pids", required=True, help="comma-separated pids whose RSS is summed")
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=128)
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold once all are open")
    p.add_argument("--deadline", type=float, default=240.0, help="max seconds for opening")
    p.add_argument("--metrics", default="", help="a Prometheus /metrics URL with integration_open_tunnels")
    args = p.parse_args()
    host, _, port = args.proxy.rpartition(":")
    host = host.strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost"):
        sys.exit("tunnels.py: loopback proxies only")
    args.proxy_host, args.proxy_port = host, int(port)
    args.count = max(1, min(args.count, 20000))
    pids = [int(x) for x in args.pids.split(",") if x]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.count + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < want:
        args.count = max(1, soft - 1024)

    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["http/1.1"])

    before = rss_kb(pids)
    held, failures = [], []
    sem = asyncio.Semaphore(args.parallel)
    t0 = time.monotonic()
    tasks = [
        asyncio.ensure_future(open_tunnel(args, ctx, sem, held, failures))
        for _ in range(args.count)
    ]
    done, pending = await asyncio.wait(tasks, timeout=args.deadline)
    for t in pending:
        t.cancel()
    opened_in = time.monotonic() - t0
    await asyncio.sleep(args.hold)
    holding = rss_kb(pids)
    gauge = scrape(args.metrics, "integration_open_tunnels")
    for w in held:
        w.close()
    # Wait until the proxy has let go of them (its gauge, where it has one), at most 20 s.
    await asyncio.sleep(3)
    for _ in range(34):
        left = scrape(args.metrics, "integration_open_tunnels")
        if left is None or left == 0:
            break
        await asyncio.sleep(0.5)
    after = rss_kb(pids)
    left = scrape(args.metrics, "integration_open_tunnels")
    out = {
        "requested": args.count,
        "open": len(held),
        "failed": len(failures),
        "timed_out": len(pending),
        "first_failures": sorted(set(failures))[:3],
        "open_seconds": round(opened_in, 1),
        "rss_before_kb": before,
        "rss_holding_kb": holding,
        "rss_after_close_kb": after,
        "per_tunnel_kb": round((holding - before) / len(held), 1) if held else None,
        "open_tunnels_gauge": gauge,
        "open_tunnels_after_close": left,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
