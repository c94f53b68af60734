//! Credential injection: the provider's credentials replace whatever the caller sent for that
//! scheme (SDKs often insist on a dummy key), never appended beside it.

use base64::Engine;
use http::HeaderValue;
use hub_core::provider::Auth;
use hub_core::secret::SecretString;
use pingora::http::RequestHeader;

/// What a header-borne credential becomes; values are marked sensitive (never HPACK-indexed).
fn sensitive(v: &str) -> pingora::Result<HeaderValue> {
    let mut hv = HeaderValue::from_str(v).map_err(|_| {
        pingora::Error::explain(
            pingora::ErrorType::InternalError,
            "credential is not a valid header value",
        )
    })?;
    hv.set_sensitive(true);
    Ok(hv)
}

/// Sets the credential headers for `auth` (query credentials are handled by [`rewrite_query`]).
pub fn inject_headers(req: &mut RequestHeader, auth: &Auth) -> pingora::Result<()> {
    match auth {
        // OAuth2: the access token is the forwarder's to inject (`inject_bearer`).
        // Path and body credentials: `crate::placement`.
        Auth::None
        | Auth::Query { .. }
        | Auth::Path { .. }
        | Auth::Body { .. }
        | Auth::OAuth2ClientCredentials(_)
        | Auth::OAuth2RefreshToken(_)
        | Auth::OAuth2JwtBearer(_) => Ok(()),
        Auth::Bearer { token } => {
            let v = sensitive(&format!("Bearer {}", token.expose()))?;
            req.insert_header("authorization", v)
        }
        Auth::Basic { username, password } => {
            let raw = format!("{}:{}", username.expose(), password.expose());
            let v = sensitive(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ))?;
            req.insert_header("authorization", v)
        }
        Auth::Header { name, value } => {
            let v = sensitive(value.expose())?;
            req.insert_header(name.to_ascii_lowercase(), v)
        }
    }
}

/// Sets `Authorization: Bearer <token>` (an OAuth2 access token the hub obtained).
pub fn inject_bearer(req: &mut RequestHeader, token: &SecretString) -> pingora::Result<()> {
    req.insert_header(
        "authorization",
        sensitive(&format!("Bearer {}", token.expose()))?,
    )
}

/// Whether the caller's request carries a credential where `auth` would put the provider's:
/// its auth header, or its query parameter. Never for `path` (the caller must send a
/// placeholder there) nor `body` (the body is not read yet; the caller's field is replaced).
pub fn carries_credential(req: &RequestHeader, path_and_query: &str, auth: &Auth) -> bool {
    match auth {
        Auth::None | Auth::Path { .. } | Auth::Body { .. } => false,
        Auth::Bearer { .. }
        | Auth::Basic { .. }
        | Auth::OAuth2ClientCredentials(_)
        | Auth::OAuth2RefreshToken(_)
        | Auth::OAuth2JwtBearer(_) => req.headers.contains_key("authorization"),
        Auth::Header { name, .. } => req.headers.contains_key(name.to_ascii_lowercase().as_str()),
        Auth::Query { name, .. } => path_and_query
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| same_name(param_name(p), name))),
    }
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

fn same_name(raw: &str, name: &str) -> bool {
    raw == name || raw.eq_ignore_ascii_case(&encode_component(name))
}

/// The query string with every `name=…` the caller sent removed and the provider's one appended.
pub fn rewrite_query(query: Option<&str>, name: &str, value: &str) -> String {
    let mut parts: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !same_name(param_name(p), name))
        .map(str::to_owned)
        .collect();
    parts.push(format!(
        "{}={}",
        encode_component(name),
        encode_component(value)
    ));
    parts.join("&")
}

/// `path_and_query` as it may be logged or stored (access log, DLQ, jobs): the values of a
/// `query` credential's parameter redacted, whatever the caller put there. A `path`
/// credential's path is the caller's, with its placeholder (the secret is placed only in the
/// request the provider gets).
pub fn loggable_path(auth: Option<&Auth>, path_and_query: &str) -> String {
    match auth {
        Some(Auth::Query { name, .. }) => redact_query(path_and_query, name),
        _ => path_and_query.to_owned(),
    }
}

/// `path?query` with the values of `name` replaced by `[redacted]` (for logs and the DLQ).
pub fn redact_query(path_and_query: &str, name: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let q: Vec<String> = query
        .split('&')
        .map(|p| {
            if same_name(param_name(p), name) {
                format!("{}=[redacted]", param_name(p))
            } else {
                p.to_owned()
            }
        })
        .collect();
    format!("{path}?{}", q.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_replaces_the_callers_dummy_key() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("authorization", "Bearer dummy").unwrap();
        req.append_header("authorization", "Bearer dummy2").unwrap();
        inject_headers(
            &mut req,
            &Auth::Bearer {
                token: SecretString::new("real"),
            },
        )
        .unwrap();
        let all: Vec<_> = req.headers.get_all("authorization").iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "Bearer real");
        assert!(all[0].is_sensitive());
    }

    #[test]
    fn header_auth_replaces_case_insensitively() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-api-key", "dummy").unwrap();
        let auth = Auth::Header {
            name: "X-Api-Key".into(),
            value: SecretString::new("real"),
        };
        inject_headers(&mut req, &auth).unwrap();
        let all: Vec<_> = req.headers.get_all("x-api-key").iter().collect();
        assert_eq!(all, vec!["real"]);
    }

    #[test]
    fn query_auth_replaces_and_redacts() {
        let q = rewrite_query(
            Some("a=1&api_key=dummy&b=2&api_key=x"),
            "api_key",
            "s3cr et",
        );
        assert_eq!(q, "a=1&b=2&api_key=s3cr%20et");
        assert_eq!(rewrite_query(None, "k", "v"), "k=v");
        assert_eq!(
            redact_query("/v1/x?a=1&api_key=s3cr%20et", "api_key"),
            "/v1/x?a=1&api_key=[redacted]"
        );
        assert_eq!(redact_query("/v1/x", "api_key"), "/v1/x");
    }
}
