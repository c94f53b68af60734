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

/// The header a header-borne credential goes in and its value as sent (`None` for `none` and
/// `query`): the one place these forms are made, for the request and for the scrubber.
fn header_credential(auth: &Auth) -> Option<(String, String)> {
    match auth {
        // OAuth2: the access token is the forwarder's to inject (`inject_bearer`); signatures
        // are made per attempt, over the final request (`forward::sign`); path and body
        // credentials: `crate::placement`.
        Auth::None
        | Auth::Query { .. }
        | Auth::Path { .. }
        | Auth::Body { .. }
        | Auth::OAuth2ClientCredentials(_)
        | Auth::OAuth2RefreshToken(_)
        | Auth::OAuth2JwtBearer(_)
        | Auth::AwsSigV4(_)
        | Auth::Hmac(_) => None,
        Auth::Bearer { token } => {
            Some(("authorization".into(), format!("Bearer {}", token.expose())))
        }
        Auth::Basic { username, password } => {
            let raw = format!("{}:{}", username.expose(), password.expose());
            Some((
                "authorization".into(),
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ),
            ))
        }
        Auth::Header { name, value } => {
            Some((name.to_ascii_lowercase(), value.expose().to_owned()))
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

/// Sets the credential headers for `auth` (query credentials are handled by [`rewrite_query`]).
pub fn inject_headers(req: &mut RequestHeader, auth: &Auth) -> pingora::Result<()> {
    match header_credential(auth) {
        None => Ok(()),
        Some((name, value)) => req.insert_header(name, sensitive(&value)?),
    }
}

/// Every form of `auth`'s secrets a provider could hand back: the secrets themselves, the whole
/// header value the hub sends (`Bearer …`, `Basic …`) and a `Basic` header's base64 alone, and
/// a query credential as it goes on the query string (percent-encoded).
pub fn sent_forms(auth: &Auth) -> Vec<String> {
    let mut forms: Vec<String> = auth
        .secrets()
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    if let Some((_, value)) = header_credential(auth) {
        if let Some(b64) = value.strip_prefix("Basic ") {
            forms.push(b64.to_owned());
        }
        forms.push(value);
    }
    if let Auth::Query { value, .. } = auth {
        forms.push(encode_component(value.expose()));
    }
    forms
}

/// The scrubber of a provider's answers (`None`: nothing to mask, or `scrubResponses` off).
pub fn scrubber_for(
    auth: Option<&Auth>,
    config: &hub_core::provider::ProviderConfig,
) -> Option<std::sync::Arc<hub_core::scrub::Scrubber>> {
    if !config.scrub_responses {
        return None;
    }
    hub_core::scrub::Scrubber::new(sent_forms(auth?)).map(std::sync::Arc::new)
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
        | Auth::OAuth2JwtBearer(_)
        | Auth::AwsSigV4(_) => req.headers.contains_key("authorization"),
        Auth::Hmac(h) => {
            req.headers
                .contains_key(h.signature_header.to_ascii_lowercase().as_str())
                || h.api_key_header
                    .as_deref()
                    .is_some_and(|k| req.headers.contains_key(k.to_ascii_lowercase().as_str()))
        }
        Auth::Header { name, .. } => req.headers.contains_key(name.to_ascii_lowercase().as_str()),
        Auth::Query { name, .. } => path_and_query
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|p| same_name(param_name(p), name))),
    }
}

/// What a query component keeps as is: RFC 3986's unreserved characters.
const COMPONENT_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT_ESCAPED).to_string()
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
    fn the_scrubber_masks_every_form_the_hub_sends() {
        use hub_core::provider::ProviderConfig;
        let basic = Auth::Basic {
            username: SecretString::new("user_abcdefgh"),
            password: SecretString::new("pw_12345678"),
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        inject_headers(&mut req, &basic).unwrap();
        let sent = req.headers["authorization"].to_str().unwrap().to_owned();
        let s = scrubber_for(Some(&basic), &ProviderConfig::default()).unwrap();
        let b64 = sent.strip_prefix("Basic ").unwrap();
        for echoed in [sent.as_str(), b64, "user_abcdefgh", "pw_12345678"] {
            let masked = s.mask_str(&format!("<{echoed}>"));
            assert_eq!(
                masked,
                format!("<{}>", "*".repeat(echoed.len())),
                "{echoed}"
            );
        }
        let query = Auth::Query {
            name: "api_key".into(),
            value: SecretString::new("q s3cr/t+val"),
        };
        let target = rewrite_query(Some("a=1"), "api_key", "q s3cr/t+val");
        let s = scrubber_for(Some(&query), &ProviderConfig::default()).unwrap();
        assert_eq!(
            s.mask_str(&target),
            format!("a=1&api_key={}", "*".repeat(18))
        );
        // Off by config, or nothing to mask.
        let off = ProviderConfig {
            scrub_responses: false,
            ..ProviderConfig::default()
        };
        assert!(scrubber_for(Some(&basic), &off).is_none());
        assert!(scrubber_for(Some(&Auth::None), &ProviderConfig::default()).is_none());
        assert!(scrubber_for(None, &ProviderConfig::default()).is_none());
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
