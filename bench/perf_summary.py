#!/usr/bin/env python3
"""Condenses two `perf report` outputs of the hub into the shares docs/PERFORMANCE.md cites.

  perf_summary.py CHILDREN.txt SELF.txt DSO.txt

CHILDREN.txt: `perf report --children --sort symbol -g none` (inclusive %, first column);
SELF.txt: `perf report --no-children --sort symbol -g none` (self %); DSO.txt: `--sort dso`.
Inclusive shares of nested entries overlap (a span's cost is also inside request_filter);
self shares add up.
"""

import re
import sys

# (label, regex on the symbol): inclusive share of the hottest matching symbol.
INCLUSIVE = [
    ("whole request (Pingora process_request)", r"pingora_proxy::HttpProxy<SV,C>::process_request::"),
    ("hub request_filter (routing + forwarder)", r"HubProxy as pingora_proxy::proxy_trait::ProxyHttp>::request_filter::"),
    ("forwarder: attempt (upstream write + read response head)", r"hub_proxy::forward::Forwarder::attempt::"),
    ("forwarder: relay (response to the caller)", r"hub_proxy::forward::Forwarder::relay::"),
    ("response head written to the caller (own send)", r"pingora_proxy::Session::write_response_header::"),
    ("response body written to the caller (own send)", r"pingora_proxy::Session::write_response_body::"),
    ("reading the request head (Pingora server)", r"v1::server::HttpSession::read_request::"),
    ("access log + metrics (HubProxy::logging)", r"HubProxy as pingora_proxy::proxy_trait::ProxyHttp>::logging::"),
    ("tracing events formatted (JSON access line)", r"tracing_subscriber::fmt::Subscriber<N,E,F,W> as tracing_core::subscriber::Subscriber>::event$"),
    ("per-request tracing span (Span::new)", r"^tracing::span::Span::new$"),
    ("upstream request head built (upstream_header)", r"^hub_proxy::forward::upstream_header$"),
    ("RequestHeader clones", r"^<pingora_http::RequestHeader as core::clone::Clone>::clone$"),
    ("ResponseHeader clones", r"^<pingora_http::ResponseHeader as core::clone::Clone>::clone$"),
    ("request id (uuid v4 via getrandom)", r"^hub_proxy::hygiene::request_id$"),
    ("trace context (traceparent)", r"hub_proxy::trace::TraceContext::"),
    ("DNS cache lookup (escape::Resolver)", r"hub_proxy::escape::Resolver::resolve::"),
    ("shared state admit/record", r"(LocalState|RedisState) as hub_core::state::SharedState>::(admit|record)"),
    ("Prometheus label lookups (with_label_values)", r"prometheus::vec::MetricVec<T>>::with_label_values|get_metric_with_label_values"),
    ("upstream pool: reused_stream (incl. getpeername)", r"TransportConnector::reused_stream::"),
    ("TLS: rustls writes (encrypt + send)", r"tokio_rustls::(server|client)::TlsStream<IO> as tokio::io::async_write::AsyncWrite>::poll_write$"),
    ("TLS: AEAD seal/open (ring)", r"ring::aead::|aes_hw_|aes_gcm|gcm_ghash|ChaCha20|aesni"),
    ("writev/send syscalls (kernel TCP send incl. loopback delivery)", r"^(__GI___writev|__libc_sendto|__libc_send|__send)$"),
    ("read/recvfrom syscalls", r"^(__GI___libc_read|__libc_recvfrom|__libc_recv)$"),
    ("epoll_wait (reactor)", r"^(epoll_wait|__GI_epoll_wait)$"),
    ("futex / thread wake-ups", r"^(__GI___futex|futex_wait|__futex_abstimed_wait_common)|syscall$"),
    ("log writer thread: channel recv (spin + sched_yield)", r"crossbeam_channel::flavors::\w+::Channel<T>::recv$"),
    ("sched_yield", r"^(__GI_sched_yield|__sched_yield|sched_yield)$"),
]

MALLOC = re.compile(
    r"^(_?mi_\w+|_int_malloc|_int_free|malloc|cfree@GLIBC.*|__libc_free|free|malloc_consolidate|unlink_chunk.*|_int_realloc|realloc|__libc_malloc|__libc_calloc|calloc|tcache_.*|_int_memalign)$"
)
MEMCPY = re.compile(r"__memmove|__memcpy|__memset")


def parse(path, col):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                m = re.match(r"\s*([\d.]+)%\s+(?:([\d.]+)%\s+)?\[(.)\]\s+(.*?)\s*$", line)
                if not m:
                    continue
                pct = float(m.group(1)) if col == 0 else float(m.group(2) or 0)
                # perf appends IPC columns ("-  -") where it has no IPC data.
                sym = re.sub(r"\s+-\s+-\s*$", "", m.group(4)).strip()
                sym = re.sub(r"\s+\(inlined\)$", "", sym)
                rows.append((pct, m.group(3), sym))
    except OSError:
        pass
    return rows


def main():
    children_path, self_path, dso_path = sys.argv[1:4]
    children = parse(children_path, 0)
    selfs = parse(self_path, 0)
    print("Inclusive (a function and everything it calls; nested rows overlap):")
    for label, pat in INCLUSIVE:
        rx = re.compile(pat)
        best = max((p for p, _, s in children if rx.search(s)), default=None)
        if best is not None:
            print(f"  {best:5.1f} %  {label}")
        else:
            print(f"    –      {label} (below the report's limit or inlined)")
    kernel = sum(p for p, k, _ in selfs if k == "k")
    malloc = sum(p for p, k, s in selfs if k == "." and MALLOC.search(s))
    memcpy = sum(p for p, k, s in selfs if MEMCPY.search(s))
    print("Self (adds up):")
    print(f"  {kernel:5.1f} %  kernel (syscalls, TCP/IP over loopback, scheduling)")
    print(f"  {malloc:5.1f} %  allocator (malloc/free: glibc or mimalloc)")
    print(f"  {memcpy:5.1f} %  memcpy/memmove/memset")
    try:
        with open(dso_path) as f:
            dso = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
        print("By binary: " + "; ".join(re.sub(r"\s+", " ", d) for d in dso))
    except OSError:
        pass


if __name__ == "__main__":
    main()
