//! A fake OAuth2 identity provider: an HTTPS token endpoint on 127.0.0.1:0 that records every
//! token request and answers like a real one — client credentials checked, refresh tokens
//! rotated (the old one refused after use), JWT bearer assertions verified with the public key —
//! or is down, or slow, on cue.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One token request as the endpoint received it.
#[derive(Debug, Clone)]
pub struct TokenCall {
    /// Form parameters, decoded, in order.
    pub form: Vec<(String, String)>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

impl TokenCall {
    /// The value of form parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    calls: Vec<TokenCall>,
    issued: usize,
    lifetime: u64,
    down: bool,
    delay: Duration,
    /// Expected client Basic credentials (`id`, `secret`), when checked.
    client: Option<(String, String)>,
    /// The refresh token currently valid (rotation on: each use issues a new one).
    refresh: Option<String>,
    /// ES256 public key (uncompressed point) assertions must verify with, and their `iss`.
    jwt: Option<(Vec<u8>, String)>,
    /// Refused refresh tokens (the old ones, presented again).
    refused: Vec<String>,
}

/// A running fake identity provider.
#[derive(Clone)]
pub struct FakeIdp {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// A per-instance marker in every access token (`at-<n>-<marker>`), so tests can search
    /// outputs for tokens it issued.
    pub marker: String,
    state: Arc<Mutex<State>>,
}

/// Text every error body carries: a test checks it never reaches a module.
pub const IDP_ERROR_MARKER: &str = "IDP-PRIVATE-ERROR-DETAIL";

impl FakeIdp {
    /// Starts an endpoint serving TLS with `tls` (a `localhost` certificate), issuing tokens
    /// valid for an hour.
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            lifetime: 3600,
            ..State::default()
        }));
        let marker = ulid::Ulid::new().to_string();
        let idp = Self {
            port,
            marker: marker.clone(),
            state: state.clone(),
        };
        let acceptor = TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, state, marker) = (acceptor.clone(), state.clone(), marker.clone());
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        serve(&mut s, &state, &marker).await;
                    }
                });
            }
        });
        idp
    }

    /// The token endpoint's URL.
    pub fn token_url(&self) -> String {
        format!("https://localhost:{}/oauth/token", self.port)
    }

    /// Every token request so far.
    pub fn calls(&self) -> Vec<TokenCall> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Refresh tokens presented after they were rotated away (and refused).
    pub fn refused(&self) -> Vec<String> {
        self.state.lock().unwrap().refused.clone()
    }

    /// Answers `503` (with [`IDP_ERROR_MARKER`] in the body) while `down`.
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Waits this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Issued tokens' `expires_in`.
    pub fn set_lifetime(&self, secs: u64) {
        self.state.lock().unwrap().lifetime = secs;
    }

    /// Client credentials must come as Basic `id:secret`.
    pub fn expect_client(&self, id: &str, secret: &str) {
        self.state.lock().unwrap().client = Some((id.to_owned(), secret.to_owned()));
    }

    /// Refresh tokens rotate, starting from `initial`.
    pub fn rotate_refresh_tokens(&self, initial: &str) {
        self.state.lock().unwrap().refresh = Some(initial.to_owned());
    }

    /// The refresh token currently valid.
    pub fn current_refresh_token(&self) -> Option<String> {
        self.state.lock().unwrap().refresh.clone()
    }

    /// JWT bearer assertions must be ES256-signed by the key whose public point is `public`,
    /// issued by `iss`.
    pub fn verify_assertions(&self, public: Vec<u8>, iss: &str) {
        self.state.lock().unwrap().jwt = Some((public, iss.to_owned()));
    }
}

fn form_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    state: &Mutex<State>,
    marker: &str,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let (head_len, content_length, authorization) = loop {
        let Ok(n) = s.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(&buf) {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let cl = header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            break (len, cl, header("authorization"));
        }
    };
    while buf.len() < head_len + content_length {
        let Ok(n) = s.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_len..head_len + content_length]).into_owned();
    let form: Vec<(String, String)> = body
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect();
    let call = TokenCall {
        form,
        authorization,
    };
    let delay = state.lock().unwrap().delay;
    tokio::time::sleep(delay).await;
    let (status, json) = answer(state, &call, marker);
    state.lock().unwrap().calls.push(call);
    let body = json.to_string();
    let resp = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

fn error(status: u16, code: &str) -> (u16, serde_json::Value) {
    (
        status,
        serde_json::json!({"error": code, "error_description": IDP_ERROR_MARKER}),
    )
}

fn answer(state: &Mutex<State>, call: &TokenCall, marker: &str) -> (u16, serde_json::Value) {
    let mut st = state.lock().unwrap();
    if st.down {
        return error(503, "temporarily_unavailable");
    }
    let mut new_refresh = None;
    match call.param("grant_type") {
        Some("client_credentials") => {
            if let Some((id, secret)) = &st.client {
                let expected = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
                );
                if call.authorization.as_deref() != Some(expected.as_str()) {
                    return error(401, "invalid_client");
                }
            }
        }
        Some("refresh_token") => {
            let presented = call.param("refresh_token").unwrap_or_default().to_owned();
            match &st.refresh {
                Some(valid) if *valid == presented => {
                    let next = format!("rt-{}-{marker}", st.issued + 1);
                    st.refresh = Some(next.clone());
                    new_refresh = Some(next);
                }
                Some(_) => {
                    st.refused.push(presented);
                    return error(400, "invalid_grant");
                }
                None => {}
            }
        }
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let Some((public, iss)) = st.jwt.clone() else {
                return error(400, "unsupported_grant_type");
            };
            if !assertion_ok(call.param("assertion").unwrap_or_default(), &public, &iss) {
                return error(400, "invalid_grant");
            }
        }
        _ => return error(400, "unsupported_grant_type"),
    }
    st.issued += 1;
    let mut body = serde_json::json!({
        "access_token": format!("at-{}-{marker}", st.issued),
        "token_type": "Bearer",
        "expires_in": st.lifetime,
    });
    if let Some(rt) = new_refresh {
        body["refresh_token"] = rt.into();
    }
    (200, body)
}

/// Verifies an ES256 compact JWS and its `iss`/`aud`/`exp` claims.
fn assertion_ok(jwt: &str, public: &[u8], iss: &str) -> bool {
    let b64 = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return false;
    }
    let Some(sig) = b64(parts[2]) else {
        return false;
    };
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public);
    if key
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .is_err()
    {
        return false;
    }
    let Some(claims) =
        b64(parts[1]).and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
    else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["iss"] == iss
        && claims["aud"]
            .as_str()
            .is_some_and(|a| a.ends_with("/oauth/token"))
        && claims["exp"].as_u64().is_some_and(|e| e > now)
}
