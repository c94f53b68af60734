//! The provider's scrubber ([`hub_core::scrub`]) applied to what goes back to the module: the
//! response head (header values, reason phrase), body chunks as they stream, h2 trailers. Every
//! function takes the scrubber to use (the provider's, or a per-call one with more secrets).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use hub_core::scrub::{ScrubStream, Scrubber};
use pingora::http::ResponseHeader;

use crate::metrics::METRICS;

/// `v` with the secrets masked, when it holds any (same length: still a valid value).
fn masked_value(s: &Scrubber, v: &HeaderValue) -> Option<HeaderValue> {
    let bytes = s.masked(v.as_bytes())?;
    let mut out = HeaderValue::from_bytes(&bytes).ok()?;
    out.set_sensitive(v.is_sensitive());
    Some(out)
}

/// Names whose values hold a secret, once each.
fn dirty_names(s: &Scrubber, map: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for (k, v) in map {
        if s.masked(v.as_bytes()).is_some() && !names.contains(k) {
            names.push(k.clone());
        }
    }
    names
}

/// Masks the secrets in a response head's header values and reason phrase.
pub(crate) fn head(s: &Scrubber, resp: &mut ResponseHeader) {
    for name in dirty_names(s, &resp.headers) {
        let values: Vec<HeaderValue> = resp
            .headers
            .get_all(&name)
            .iter()
            .map(|v| masked_value(s, v).unwrap_or_else(|| v.clone()))
            .collect();
        resp.remove_header(&name);
        for v in values {
            let _ = resp.append_header(name.clone(), v);
        }
    }
    if let Some(phrase) = resp.get_reason_phrase().map(|p| s.mask_str(p))
        && resp.get_reason_phrase() != Some(phrase.as_str())
    {
        let _ = resp.set_reason_phrase(Some(&phrase));
    }
}

/// Masks the secrets in header values (h2 trailers).
pub(crate) fn map(s: &Scrubber, map: &mut HeaderMap) {
    for v in map.values_mut() {
        if let Some(m) = masked_value(s, v) {
            *v = m;
        }
    }
}

/// The body scrubber for a response with head `resp`: `None` when there is nothing to scrub
/// with, or the body is compressed (`Content-Encoding`, or gRPC's `grpc-encoding`, other than
/// `identity`: the secret's bytes are not in it as such). A compressed body of a provider that is scrubbed is relayed as it is,
/// counted in `integration_responses_unscrubbed_total{provider}` and logged at debug.
pub(crate) fn body_stream<'a>(
    s: Option<&'a Scrubber>,
    resp: &ResponseHeader,
    provider: &str,
) -> Option<ScrubStream<'a>> {
    let s = s?;
    let encoded = [http::header::CONTENT_ENCODING.as_str(), "grpc-encoding"]
        .into_iter()
        .flat_map(|h| resp.headers.get_all(h))
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if encoded {
        METRICS
            .responses_unscrubbed
            .with_label_values(&[provider])
            .inc();
        tracing::debug!(
            provider,
            "provider answered with a Content-Encoding: body relayed unscrubbed"
        );
        return None;
    }
    Some(s.stream())
}

/// A body chunk through the stream (when there is one).
pub(crate) fn chunk(stream: Option<&mut ScrubStream<'_>>, b: Bytes) -> Bytes {
    match stream {
        Some(st) => st.push(b),
        None => b,
    }
}
