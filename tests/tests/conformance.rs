//! HTTP/1.1 conformance of the hub as an intermediary, on raw sockets against a byte-recording
//! provider: bodies byte-exact in every framing and write split, `Expect: 100-continue`,
//! hostile framing (nothing smuggled), pipelining, slow heads, streaming timeouts. Every case
//! runs in absolute-form and inside a CONNECT tunnel.

use std::time::{Duration, Instant};

use hub_tests::client::{provider_json, raw_tunnel};
use hub_tests::raw::{
    Conn, chunked, data, ends_within, read_head, read_response, read_response_within, sha256,
    write_split,
};
use hub_tests::{Backend, FakeProvider, Mode, TestHub, TestPki};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TLS_HOST: &str = "api.conf.test";
const PLAIN_HOST: &str = "plain.conf.test";
const TOKEN: &str = "conf_secret_token_4711";
const REPLAY: usize = hub_proxy::forward::DEFAULT_REPLAY_LIMIT;
const WAIT: Duration = Duration::from_secs(30);

/// How a request reaches the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// `HTTPS_PROXY`: CONNECT, TLS with a hub leaf, origin-form inside.
    Tunnel,
    /// `HTTP_PROXY`: absolute-form on the plain connection.
    Absolute,
}

const WAYS: [Way; 2] = [Way::Tunnel, Way::Absolute];

struct Setup {
    hub: TestHub,
    tls: FakeProvider,
    plain: FakeProvider,
    _pki: TestPki,
}

impl Setup {
    async fn start(backend: Backend, config: serde_json::Value) -> Option<Self> {
        let pki = TestPki::new();
        let hub = TestHub::start(backend, &pki).await?;
        let tls = FakeProvider::start(Some(pki.server_config.clone())).await;
        let plain = FakeProvider::start(None).await;
        for (name, host, fake) in [("conf", TLS_HOST, &tls), ("plain", PLAIN_HOST, &plain)] {
            let mut p = provider_json(name, host, fake, json!({"type": "bearer", "token": TOKEN}));
            for (k, v) in config.as_object().unwrap() {
                p["config"][k] = v.clone();
            }
            hub.add_provider(p).await;
        }
        Some(Self {
            hub,
            tls,
            plain,
            _pki: pki,
        })
    }

    fn fake(&self, way: Way) -> &FakeProvider {
        match way {
            Way::Tunnel => &self.tls,
            Way::Absolute => &self.plain,
        }
    }

    async fn open(&self, way: Way) -> Conn {
        match way {
            Way::Tunnel => Box::new(raw_tunnel(&self.hub, TLS_HOST, self.tls.port).await),
            Way::Absolute => Box::new(TcpStream::connect(self.hub.proxy_addr).await.unwrap()),
        }
    }

    /// The request line's target and the Host value for `path`.
    fn target(&self, way: Way, path: &str) -> (String, String) {
        match way {
            Way::Tunnel => (path.to_owned(), format!("{TLS_HOST}:{}", self.tls.port)),
            Way::Absolute => {
                let host = format!("{PLAIN_HOST}:{}", self.plain.port);
                (format!("http://{host}{path}"), host)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length,
    Chunked,
}

#[tokio::test]
async fn bodies_reach_the_provider_byte_exact_in_every_framing_and_write_split() {
    let Some(s) = Setup::start(Backend::Sqlite, json!({})).await else {
        return;
    };
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let sizes = [0, 1, 1000, REPLAY - 1, REPLAY, REPLAY + 1, 5 * 1024 * 1024];
    for way in WAYS {
        // One kept-alive connection per way: a byte past any body's end would show up as a
        // request of its own, or as a framing error, at the provider.
        let mut conn = s.open(way).await;
        let mut expected = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            for framing in [Framing::Length, Framing::Chunked] {
                let body = data(seed ^ (i as u64 * 31 + framing as u64), *size);
                let (target, host) = s.target(way, &format!("/up/{size}/{framing:?}"));
                let mut req = format!(
                    "POST {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer dummy\r\n"
                )
                .into_bytes();
                match framing {
                    Framing::Length => {
                        req.extend_from_slice(format!("Content-Length: {size}\r\n\r\n").as_bytes());
                        req.extend_from_slice(&body);
                    }
                    Framing::Chunked => {
                        req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                        let trailers = i % 2 == 0;
                        req.extend_from_slice(&chunked(&body, &mut rng, trailers));
                    }
                }
                write_split(&mut conn, &req, &mut rng).await.unwrap();
                let resp = read_response_within(&mut conn, WAIT)
                    .await
                    .unwrap_or_else(|| panic!("{way:?} {size} {framing:?}: connection ended"));
                assert_eq!(
                    resp.status, 200,
                    "{way:?} {size} {framing:?}: {}",
                    resp.head
                );
                let answer = resp.json();
                assert_eq!(answer["len"], *size, "{way:?} {size} {framing:?}");
                assert_eq!(
                    answer["sha256"],
                    sha256(&body),
                    "{way:?} {size} {framing:?}"
                );
                expected.push((format!("/up/{size}/{framing:?}"), *size));
            }
        }
        let fake = s.fake(way);
        assert_eq!(fake.malformed(), Vec::<String>::new(), "{way:?}");
        let got: Vec<(String, usize)> = fake
            .requests()
            .into_iter()
            .map(|r| {
                assert_eq!(r.header("authorization"), Some(&*format!("Bearer {TOKEN}")));
                assert_eq!(r.header("expect"), None);
                (r.target, r.body_len)
            })
            .collect();
        assert_eq!(
            got, expected,
            "{way:?}: exactly one request per request sent"
        );
    }
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_hub_once_the_call_is_admitted() {
    let Some(s) = Setup::start(Backend::Sqlite, json!({})).await else {
        return;
    };
    let body = data(7, 5000);
    for way in WAYS {
        // Admitted: 100 from the hub before any body byte, then the provider's answer.
        let mut conn = s.open(way).await;
        let (target, host) = s.target(way, "/expect");
        conn.write_all(
            format!(
                "POST {target} HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let (status, head) = tokio::time::timeout(WAIT, read_head(&mut conn))
            .await
            .unwrap()
            .expect("an interim answer");
        assert_eq!(status, 100, "{way:?}: {head}");
        conn.write_all(&body).await.unwrap();
        let resp = read_response_within(&mut conn, WAIT).await.unwrap();
        assert_eq!(resp.status, 200, "{way:?}: {}", resp.head);
        assert_eq!(resp.json()["sha256"], sha256(&body));
        let rec = s.fake(way).requests().pop().unwrap();
        assert_eq!(rec.header("expect"), None, "Expect is never forwarded");
        // The interim answer does not cost the connection: the next request is served on it.
        conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let next = read_response_within(&mut conn, WAIT)
            .await
            .unwrap_or_else(|| panic!("{way:?}: the connection was closed after the 100"));
        assert_eq!(next.status, 200, "{way:?}: {}", next.head);
    }

    // Refused before admission: the final answer comes at once, without 100, and the body is
    // never read (the connection ends).
    let refusals: Vec<(Way, String, u16)> = vec![
        (
            Way::Absolute,
            "POST http://nobody.conf.test/x HTTP/1.1\r\nHost: nobody.conf.test\r\n".into(),
            403,
        ),
        (
            Way::Tunnel,
            "POST /x HTTP/1.1\r\nHost: other.conf.test\r\n".into(),
            421,
        ),
    ];
    for (way, head, want) in refusals {
        let mut conn = s.open(way).await;
        conn.write_all(
            format!("{head}Expect: 100-continue\r\nContent-Length: 1000000\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let resp = read_response_within(&mut conn, WAIT).await.unwrap();
        assert_eq!(resp.status, want, "{way:?}: {}", resp.head);
        assert!(ends_within(&mut conn, WAIT).await, "the connection ends");
    }

    // Refused by admission (rate limit): no 100 either.
    let tight = FakeProvider::start(None).await;
    let mut p = provider_json("tight", "tight.conf.test", &tight, json!({"type": "none"}));
    p["config"]["rateLimitPerSec"] = json!(1);
    p["config"]["burst"] = json!(1);
    s.hub.add_provider(p).await;
    let host = format!("tight.conf.test:{}", tight.port);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let mut conn = s.open(Way::Absolute).await;
        conn.write_all(
            format!(
                "POST http://{host}/t HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let resp = read_response_within(&mut conn, WAIT).await.unwrap();
        if resp.status == 100 {
            conn.write_all(b"abc").await.unwrap();
            statuses.push(read_response_within(&mut conn, WAIT).await.unwrap().status);
        } else {
            statuses.push(resp.status);
        }
    }
    assert_eq!(statuses, vec![200, 429]);
    assert_eq!(tight.requests().len(), 1);

    // An expectation the hub does not know: 417.
    let mut conn = s.open(Way::Absolute).await;
    let (target, host) = s.target(Way::Absolute, "/x");
    conn.write_all(
        format!(
            "POST {target} HTTP/1.1\r\nHost: {host}\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let resp = read_response_within(&mut conn, WAIT).await.unwrap();
    assert_eq!(resp.status, 417);
    assert_eq!(resp.json()["code"], "expectation_failed");
}

#[tokio::test]
async fn a_providers_interim_answers_are_never_relayed_as_final() {
    let Some(s) = Setup::start(Backend::Sqlite, json!({})).await else {
        return;
    };
    for way in WAYS {
        s.fake(way).set_mode(Mode::Interim);
        let mut conn = s.open(way).await;
        let (target, host) = s.target(way, "/interim");
        conn.write_all(
            format!("POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\nhi")
                .as_bytes(),
        )
        .await
        .unwrap();
        let resp = read_response_within(&mut conn, WAIT).await.unwrap();
        assert_eq!(resp.status, 200, "{way:?}: {}", resp.head);
        assert_eq!(resp.json()["len"], 2);
        // And the connection goes on: the next request is answered too.
        conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response_within(&mut conn, WAIT).await.unwrap();
        assert_eq!(resp.status, 200, "{way:?}: {}", resp.head);
    }
}

/// One hostile request: its bytes after the request line, and whether it must be refused
/// (otherwise RFC 9112 allows a normalized forward). Each carries a second request after its
/// body as the hub should frame it: answered as a pipelined request when the first was valid,
/// never reaching the provider hidden inside the first.
struct Hostile {
    name: &'static str,
    /// Header fields and body, after `METHOD target HTTP/1.1\r\n`; `{host}` is replaced.
    rest: String,
    must_refuse: bool,
}

fn hostile_cases() -> Vec<Hostile> {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n";
    let big100k = "a".repeat(100 * 1024);
    let big1m = "a".repeat(1024 * 1024);
    let c = |name, rest: String, must_refuse| Hostile {
        name,
        rest,
        must_refuse,
    };
    vec![
        c(
            "cl+te",
            format!(
                "Host: {{host}}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            true,
        ),
        c(
            "te+cl",
            format!(
                "Host: {{host}}\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            true,
        ),
        c(
            "cl conflicting",
            format!(
                "Host: {{host}}\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\nhello{smuggled}"
            ),
            true,
        ),
        c(
            "cl duplicate same",
            format!(
                "Host: {{host}}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
            true,
        ),
        c(
            "cl list",
            format!("Host: {{host}}\r\nContent-Length: 5, 5\r\n\r\nhello{smuggled}"),
            true,
        ),
        c(
            "cl plus sign",
            format!("Host: {{host}}\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
            true,
        ),
        c(
            "cl negative",
            format!("Host: {{host}}\r\nContent-Length: -1\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "te xchunked",
            format!("Host: {{host}}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "te chunked, identity",
            format!(
                "Host: {{host}}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            true,
        ),
        c(
            "te identity",
            format!(
                "Host: {{host}}\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
            true,
        ),
        c(
            "te twice",
            format!(
                "Host: {{host}}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            true,
        ),
        c(
            "te leading space value",
            format!("Host: {{host}}\r\nTransfer-Encoding:  chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            false,
        ),
        c(
            "te tab separator",
            format!("Host: {{host}}\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n{smuggled}"),
            false,
        ),
        c(
            "te obs-fold",
            format!("Host: {{host}}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "space before colon",
            format!("Host: {{host}}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "chunk size invalid",
            format!(
                "Host: {{host}}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            true,
        ),
        c(
            "chunk size overflow",
            format!(
                "Host: {{host}}\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            true,
        ),
        c(
            "chunk data without CRLF",
            format!(
                "Host: {{host}}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n{smuggled}"
            ),
            true,
        ),
        c(
            "obs-fold",
            format!("Host: {{host}}\r\nX-A: a\r\n b\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "nul in value",
            format!("Host: {{host}}\r\nX-A: a\0b\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "cr in value",
            format!("Host: {{host}}\r\nX-A: a\rb\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "space in name",
            format!("Host: {{host}}\r\nX A: b\r\n\r\n{smuggled}"),
            true,
        ),
        c("no host", format!("X-A: b\r\n\r\n{smuggled}"), true),
        c(
            "host twice",
            format!("Host: {{host}}\r\nHost: {{host}}\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "authorization twice",
            format!("Host: {{host}}\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n{smuggled}"),
            true,
        ),
        c(
            "header 100 KB",
            format!("Host: {{host}}\r\nX-Big: {big100k}\r\n\r\n"),
            true,
        ),
        c(
            "header 1 MB",
            format!("Host: {{host}}\r\nX-Big: {big1m}\r\n\r\n"),
            true,
        ),
        c(
            "bare LF",
            format!(
                "Host: {{host}}\nX-A: b\n\n{}",
                smuggled.replace("\r\n", "\n")
            ),
            false,
        ),
    ]
}

#[tokio::test]
async fn hostile_framing_is_refused_and_nothing_is_ever_smuggled() {
    let Some(s) = Setup::start(Backend::Sqlite, json!({})).await else {
        return;
    };
    let mut report = Vec::new();
    for way in WAYS {
        for case in hostile_cases() {
            let before = s.fake(way).requests().len();
            let (target, host) = s.target(way, "/hostile");
            let method = if case.rest.contains("chunked") || case.rest.contains("Length") {
                "POST"
            } else {
                "GET"
            };
            let line_end = if case.name == "bare LF" { "\n" } else { "\r\n" };
            let raw = format!(
                "{method} {target} HTTP/1.1{line_end}{}",
                case.rest.replace("{host}", &host)
            );
            let mut conn = s.open(way).await;
            let _ = conn.write_all(raw.as_bytes()).await;
            let _ = conn.flush().await;
            // Read every answer until the hub closes (or goes quiet).
            let mut statuses = Vec::new();
            while let Ok(Some(r)) =
                tokio::time::timeout(Duration::from_secs(3), read_response(&mut conn)).await
            {
                statuses.push(r.status);
                if r.status >= 400 {
                    assert_eq!(
                        r.header("content-type").as_deref(),
                        Some("application/problem+json"),
                        "{way:?} {}: {}",
                        case.name,
                        r.head
                    );
                }
            }
            let seen = &s.fake(way).requests()[before..];
            report.push(format!(
                "{way:?} {:<24} -> {statuses:?}, provider saw {}",
                case.name,
                seen.len()
            ));
            // Every request the provider saw is one the hub answered for (a request hidden in
            // another's body would reach the provider without an answer of its own).
            let forwarded = statuses.iter().filter(|s| **s < 400).count();
            assert!(
                seen.len() <= forwarded,
                "{way:?} {}: the provider saw {} requests, the client got {statuses:?}",
                case.name,
                seen.len()
            );
            if case.must_refuse {
                assert!(
                    statuses.first().is_none_or(|s| (400..500).contains(s)),
                    "{way:?} {}: {statuses:?}",
                    case.name
                );
                assert!(
                    seen.is_empty(),
                    "{way:?} {}: reached the provider",
                    case.name
                );
            }
        }
        assert_eq!(s.fake(way).malformed(), Vec::<String>::new(), "{way:?}");
    }
    println!("{}", report.join("\n"));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let Some(s) = Setup::start(Backend::Sqlite, json!({})).await else {
        return;
    };
    for way in WAYS {
        let mut conn = s.open(way).await;
        let mut all = String::new();
        for i in 0..3 {
            let (target, host) = s.target(way, &format!("/p{i}"));
            all.push_str(&format!(
                "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\np{i}"
            ));
        }
        conn.write_all(all.as_bytes()).await.unwrap();
        for i in 0..3 {
            let resp = read_response_within(&mut conn, WAIT)
                .await
                .unwrap_or_else(|| panic!("{way:?}: request {i} was dropped"));
            assert_eq!(resp.status, 200, "{way:?} {i}");
            assert_eq!(resp.json()["sha256"], sha256(format!("p{i}").as_bytes()));
        }
        let targets: Vec<String> = s
            .fake(way)
            .requests()
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(targets, vec!["/p0", "/p1", "/p2"], "{way:?}");
    }
}

#[tokio::test]
async fn slow_heads_are_cut_at_their_deadline_while_other_clients_are_served() {
    let Some(s) = Setup::start(Backend::Sqlite, json!({})).await else {
        return;
    };
    const SLOW: usize = 2000;
    let started = Instant::now();
    // 2,000 connections trickling their heads: plain requests, CONNECT heads, and heads inside
    // established tunnels (some of each).
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let way = if i % 100 == 0 {
            Way::Tunnel
        } else {
            Way::Absolute
        };
        let mut conn = s.open(way).await;
        let first: &[u8] = if i % 10 == 1 {
            b"CONNECT api"
        } else {
            b"GET http://"
        };
        let first = if way == Way::Tunnel {
            &b"GET /"[..]
        } else {
            first
        };
        conn.write_all(first).await.unwrap();
        slow.push(conn);
    }
    let drip = tokio::spawn(async move {
        // One byte per connection per second, never a complete head.
        for _ in 0..15 {
            for c in slow.iter_mut() {
                let _ = c.write_all(b"a").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        slow
    });
    // Meanwhile everyone else is served promptly.
    let c = hub_tests::client::client(&s.hub);
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        let resp = c
            .get(format!("https://{TLS_HOST}:{}/normal/{i}", s.tls.port))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("worst normal call while {SLOW} slow heads are held: {worst:?}");
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    let mut slow = drip.await.unwrap();
    // Every slow connection has been answered (408) or closed by now, 15 s in.
    let mut ended = 0;
    for c in slow.iter_mut() {
        if ends_within(c, Duration::from_millis(200)).await {
            ended += 1;
        }
    }
    println!(
        "{ended} of {SLOW} slow connections ended within {:?}",
        started.elapsed()
    );
    assert_eq!(ended, SLOW);
    assert!(
        s.tls
            .requests()
            .iter()
            .all(|r| r.target.starts_with("/normal/"))
    );
}

#[tokio::test]
async fn streams_live_through_silences_shorter_than_the_idle_timeout_and_end_at_it() {
    // A 10-minute SSE answer with 60 s silences, compressed: 2 s silences, a 3 s idle timeout.
    let Some(s) = Setup::start(
        Backend::Sqlite,
        json!({"idleTimeoutMs": 3000, "totalTimeoutMs": 600000}),
    )
    .await
    else {
        return;
    };
    for way in WAYS {
        s.fake(way).set_mode(Mode::Events {
            count: 4,
            gap_ms: 2000,
        });
        let mut conn = s.open(way).await;
        let (target, host) = s.target(way, "/events");
        conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let resp = read_response_within(&mut conn, WAIT).await.unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.complete, "{way:?}: the stream was cut");
        let text = String::from_utf8_lossy(&resp.body);
        assert_eq!(text.matches("data: event").count(), 4, "{way:?}: {text}");

        // A stream that goes silent for longer: cut at the idle timeout, seen as an end without
        // the closing chunk, and the access line says why.
        s.fake(way).set_mode(Mode::Events {
            count: usize::MAX,
            gap_ms: 60_000,
        });
        let mut conn = s.open(way).await;
        let (target, host) = s.target(way, "/stalls");
        conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let t = Instant::now();
        let resp = read_response_within(&mut conn, WAIT).await.unwrap();
        let took = t.elapsed();
        assert_eq!(resp.status, 200);
        assert!(
            !resp.complete,
            "{way:?}: a cut stream must not look complete"
        );
        assert!(
            String::from_utf8_lossy(&resp.body).contains("data: event 0"),
            "{way:?}"
        );
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_secs(10),
            "{way:?}: cut after {took:?}"
        );
    }
    let logs = hub_tests::logs::contents();
    assert!(
        logs.lines()
            .any(|l| l.contains("\"path\":\"/stalls\"") && l.contains("\"cut\":\"idle_timeout\"")),
        "the access line records the cut"
    );
    assert!(
        !logs.contains(TOKEN),
        "the injected credential reached a log line"
    );
}

#[tokio::test]
async fn a_refused_connect_is_answered_inside_the_tunnel_without_a_dial() {
    let Some(s) = Setup::start(Backend::Sqlite, json!({})).await else {
        return;
    };
    let mut conn = raw_tunnel(&s.hub, "unknown.conf.test", 443).await;
    conn.write_all(
        b"POST /v1/charges HTTP/1.1\r\nHost: unknown.conf.test\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await
    .unwrap();
    let resp = read_response_within(&mut conn, WAIT).await.unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(resp.json()["code"], "unknown_provider");
    assert!(resp.header("x-request-id").is_some());
    assert!(ends_within(&mut conn, WAIT).await);

    // Minting for refused names is bounded: a flood of new unknown names gets, past the bound,
    // the bare refusal of the CONNECT itself, and the hub keeps serving.
    let mut bare = 0;
    for i in 0..40 {
        let mut tcp = TcpStream::connect(s.hub.proxy_addr).await.unwrap();
        tcp.write_all(format!("CONNECT flood{i}.conf.test:443 HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        if head.starts_with("HTTP/1.1 403") {
            assert!(head.contains("unknown_provider"), "{head}");
            bare += 1;
        } else {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
    }
    assert!(
        bare >= 20,
        "at most 10 refusal leaves a second are minted ({bare} bare)"
    );
    assert_eq!(s.tls.connections() + s.plain.connections(), 0);
}

/// `n` connections to `proxy`, each sending `get` and answered 200, then held open: each is
/// counted by the hub before the next one opens.
async fn kept_alive(proxy: std::net::SocketAddr, get: &str, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        c.write_all(get.as_bytes()).await.unwrap();
        assert_eq!(
            read_response_within(&mut c, WAIT).await.unwrap().status,
            200
        );
        held.push(c);
    }
    held
}

#[tokio::test]
async fn connections_over_the_caps_get_503_and_the_others_are_served() {
    let pki = TestPki::new();
    let limits = hub_proxy::serve::ConnLimits {
        total: 1000,
        per_source: 8,
    };
    let Some(hub) = TestHub::start_limited(Backend::Sqlite, &pki, limits).await else {
        return;
    };
    let plain = FakeProvider::start(None).await;
    hub.add_provider(provider_json(
        "cap",
        PLAIN_HOST,
        &plain,
        json!({"type": "none"}),
    ))
    .await;
    let host = format!("{PLAIN_HOST}:{}", plain.port);
    let get = format!("GET http://{host}/c HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut held = kept_alive(hub.proxy_addr, &get, 8).await;
    // The ninth from the same address: 503 overloaded at once, then the end.
    let mut ninth = TcpStream::connect(hub.proxy_addr).await.unwrap();
    let resp = read_response_within(&mut ninth, WAIT).await.unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["code"], "overloaded");
    assert!(ends_within(&mut ninth, WAIT).await);
    // The held ones keep working; closing one makes room for a new one.
    let mut first = held.remove(0);
    first.write_all(get.as_bytes()).await.unwrap();
    assert_eq!(
        read_response_within(&mut first, WAIT).await.unwrap().status,
        200
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = TcpStream::connect(hub.proxy_addr).await.unwrap();
    again.write_all(get.as_bytes()).await.unwrap();
    assert_eq!(
        read_response_within(&mut again, WAIT).await.unwrap().status,
        200
    );
    let metrics = reqwest::get(format!("http://{}/metrics", hub.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("integration_connections_refused_total{reason=\"per_source\"}"),
        "{metrics}"
    );

    // The total cap, below the per-source one: the same answer, counted as "total".
    let limits = hub_proxy::serve::ConnLimits {
        total: 3,
        per_source: 100,
    };
    let Some(small) = TestHub::start_limited(Backend::Sqlite, &pki, limits).await else {
        return;
    };
    small
        .add_provider(provider_json(
            "cap",
            PLAIN_HOST,
            &plain,
            json!({"type": "none"}),
        ))
        .await;
    let _open = kept_alive(small.proxy_addr, &get, 3).await;
    let mut fourth = TcpStream::connect(small.proxy_addr).await.unwrap();
    let resp = read_response_within(&mut fourth, WAIT).await.unwrap();
    assert_eq!(
        (resp.status, resp.json()["code"].clone()),
        (503, json!("overloaded"))
    );
    let metrics = reqwest::get(format!("http://{}/metrics", small.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("integration_connections_refused_total{reason=\"total\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn pipelined_requests_with_bodies_reach_the_provider_whole() {
    let Some(s) = Setup::start(Backend::Sqlite, json!({})).await else {
        return;
    };
    for way in WAYS {
        for size in [10_000usize, 2 * 1024 * 1024] {
            let mut conn = s.open(way).await;
            let body = data(size as u64, size);
            let (target, host) = s.target(way, "/pb");
            let mut all = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
            all.extend_from_slice(
                format!("POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n")
                    .as_bytes(),
            );
            all.extend_from_slice(&body);
            conn.write_all(&all).await.unwrap();
            let first = read_response_within(&mut conn, WAIT).await.unwrap();
            assert_eq!(first.status, 200, "{way:?} {size}");
            let second = read_response_within(&mut conn, WAIT)
                .await
                .unwrap_or_else(|| panic!("{way:?} {size}: the second request was dropped"));
            assert_eq!(second.status, 200, "{way:?} {size}: {}", second.head);
            assert_eq!(second.json()["sha256"], sha256(&body), "{way:?} {size}");
        }
    }
}
