//! Request signing (`aws_sigv4`, `hmac`): made per attempt over the request exactly as the
//! provider receives it (target, `host`, framing, body), so a retried attempt carries a fresh
//! timestamp and signature. The caller's own signature headers are replaced.

use std::collections::BTreeSet;

use hub_core::provider::Auth;
use hub_core::signing::{Payload, SignError};
use hub_core::wire::problem;
use pingora::http::RequestHeader;

use crate::problem::Problem;
use crate::registry::Provider;

/// Whether `provider`'s requests are signed per attempt.
pub(crate) fn signs(provider: &Provider) -> bool {
    matches!(provider.auth, Some(Auth::AwsSigV4(_) | Auth::Hmac(_)))
}

/// Signs `header` for `provider` (a no-op for other schemes). `body`: the whole body, or `None`
/// when it is streamed (SigV4 then signs `UNSIGNED-PAYLOAD`; an HMAC scheme that signs the body
/// refuses with 413).
pub(crate) fn sign(
    provider: &Provider,
    header: &mut RequestHeader,
    body: Option<&[u8]>,
) -> Result<(), Problem> {
    let now = chrono::Utc::now();
    let target = String::from_utf8_lossy(header.raw_path()).into_owned();
    let method = header.method.as_str().to_owned();
    let mut map = header.headers.clone();
    let signed = match &provider.auth {
        Some(Auth::AwsSigV4(a)) => {
            let payload = body.map_or(Payload::Unsigned, Payload::Bytes);
            a.sign(&method, &target, &mut map, payload, now)
        }
        Some(Auth::Hmac(h)) => h.sign(&method, &target, &mut map, body, now),
        _ => return Ok(()),
    };
    signed.map_err(|e| refusal(provider, &e))?;
    apply(header, &map)
}

/// Makes `header`'s fields what `map` holds, through Pingora's API (which keeps the header
/// names' case for HTTP/1.1): only the names whose values differ are rewritten.
fn apply(header: &mut RequestHeader, map: &http::HeaderMap) -> Result<(), Problem> {
    let names: BTreeSet<String> = header
        .headers
        .keys()
        .chain(map.keys())
        .map(|k| k.as_str().to_owned())
        .collect();
    let bad = |_| Problem::bad_request("the signed request cannot be formed");
    for name in names {
        let old: Vec<_> = header.headers.get_all(name.as_str()).iter().collect();
        let new: Vec<_> = map.get_all(name.as_str()).iter().collect();
        if old == new {
            continue;
        }
        let new: Vec<http::HeaderValue> = new.into_iter().cloned().collect();
        header.remove_header(name.as_str());
        for v in new {
            header.append_header(name.clone(), v).map_err(bad)?;
        }
    }
    Ok(())
}

fn refusal(provider: &Provider, e: &SignError) -> Problem {
    match e {
        SignError::BodyRequired => Problem::new(
            problem::BODY_TOO_LARGE,
            format!(
                "provider {} signs request bodies, and this one is larger than the hub holds \
                 to sign it",
                provider.name
            ),
        ),
        other => Problem::bad_request(format!(
            "the request cannot be signed for provider {}: {other}",
            provider.name
        )),
    }
}
