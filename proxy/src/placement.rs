//! Credentials that go in the URL path (`path`) or in the request body (`body`).
//!
//! - `path`: the caller sends the template's path with a placeholder of its choice in the
//!   secret's segment ([`hub_core::provider::placement`]); the request the provider gets
//!   ([`crate::forward::upstream_header`]) has the secret there instead. Everything the hub
//!   logs or keeps (access line, DLQ entry, job) has the caller's path, placeholder and all.
//! - `body`: buffered bodies only (at most the replay limit; a bigger one is `413`). Form: every
//!   `field=…` the caller sent is removed and the provider's appended. JSON: the top-level
//!   object's `field` is set (a dotted name is one key, not a path); the object is re-serialized
//!   compactly, and its keys come out sorted (the workspace's `serde_json` has no
//!   `preserve_order`). An empty body becomes the field alone, with the format's content type
//!   when the caller sent none. The DLQ keeps the caller's body, so a replay injects again.
//!
//! What does not fit is refused before anything is sent ([`check`] at admission, [`place_body`]
//! once the body is read) with `400 credential_placement`: a path that does not match the
//! template; for `body`, a content type other than the format's, a compressed body, a JSON body
//! that is not an object, a gRPC call or a WebSocket upgrade (the first is a stream of framed
//! messages, the second has no body).

use bytes::Bytes;
use hub_core::provider::placement::PathTemplate;
use hub_core::provider::{Auth, BodyFormat};
use hub_core::wire::problem;
use pingora::http::RequestHeader;

use crate::problem::Problem;
use crate::registry::Provider;

fn refused(detail: String) -> Problem {
    Problem::new(problem::CREDENTIAL_PLACEMENT, detail)
}

/// `path` (no query) with the provider's `path` credential placed; `None` when it does not
/// match the template. Other schemes: `path` as is.
pub fn upstream_path<'a>(auth: Option<&Auth>, path: &'a str) -> Option<std::borrow::Cow<'a, str>> {
    match auth {
        Some(Auth::Path { template, value }) => PathTemplate::parse(template)
            .ok()?
            .place(path, value.expose())
            .map(std::borrow::Cow::Owned),
        _ => Some(std::borrow::Cow::Borrowed(path)),
    }
}

/// The media type of `content-type`, lower-cased, without parameters.
fn media_type(req: &RequestHeader) -> Option<String> {
    let v = req.headers.get("content-type")?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn fits(format: BodyFormat, media: &str) -> bool {
    match format {
        BodyFormat::Form => media == "application/x-www-form-urlencoded",
        BodyFormat::Json => {
            media == "application/json"
                || media
                    .strip_prefix("application/")
                    .is_some_and(|s| s.ends_with("+json"))
        }
    }
}

/// Whether the call can carry `provider`'s credential where it goes: checked at admission,
/// before the body is read or anything is sent.
pub fn check(
    req: &RequestHeader,
    path_and_query: &str,
    provider: &Provider,
) -> Result<(), Problem> {
    match provider.auth.as_ref() {
        Some(Auth::Path { template, .. }) => {
            let path = path_and_query
                .split_once('?')
                .map_or(path_and_query, |(p, _)| p);
            let matched = PathTemplate::parse(template).is_ok_and(|t| t.matches(path));
            if matched {
                Ok(())
            } else {
                Err(refused(format!(
                    "provider {} takes its credential in the URL path: the path must start \
                     with {template}, a placeholder of your choice in place of {{secret}}",
                    provider.name
                )))
            }
        }
        Some(Auth::Body { format, field, .. }) => {
            let name = &provider.name;
            if crate::forward::is_websocket(req) {
                return Err(refused(format!(
                    "provider {name} takes its credential in the request body, which a \
                     WebSocket upgrade does not have"
                )));
            }
            if crate::problem::is_grpc(req) {
                return Err(refused(format!(
                    "provider {name} takes its credential in the request body, which a gRPC \
                     call cannot carry"
                )));
            }
            if req
                .headers
                .get_all("content-encoding")
                .iter()
                .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
            {
                return Err(refused(format!(
                    "provider {name} takes its credential in the request body: send it \
                     uncompressed (no Content-Encoding)"
                )));
            }
            match media_type(req) {
                Some(m) if fits(*format, &m) => Ok(()),
                // An empty body gets the format's content type.
                None if body_absent(req) => Ok(()),
                other => Err(refused(format!(
                    "provider {name} takes its credential in the {} field {field:?} of a {} \
                     body; this call's content type is {}",
                    format.as_str(),
                    format.content_type(),
                    other.as_deref().unwrap_or("missing"),
                ))),
            }
        }
        _ => Ok(()),
    }
}

/// Whether the request announces no body (no `Content-Length` or `0`, not chunked). The body
/// read later decides; this only lets a bodiless call without a content type through.
fn body_absent(req: &RequestHeader) -> bool {
    !req.headers.contains_key("transfer-encoding")
        && req
            .headers
            .get("content-length")
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// The body the provider gets for `provider`'s `body` credential (`None`: another scheme, the
/// caller's body goes as it is), the content type set on `header` for an empty one. `caller`
/// is the whole body (`Some`), or `None` when it was larger than the replay limit (`413`).
pub fn place_body(
    provider: &Provider,
    header: &mut RequestHeader,
    caller: Option<&Bytes>,
    replay_limit: usize,
) -> Result<Option<Bytes>, Problem> {
    let Some(Auth::Body {
        format,
        field,
        value,
    }) = provider.auth.as_ref()
    else {
        return Ok(None);
    };
    let Some(body) = caller else {
        return Err(Problem::new(
            problem::BODY_TOO_LARGE,
            format!(
                "provider {} takes its credential in the request body, which the hub must hold \
                 whole: at most {replay_limit} bytes",
                provider.name
            ),
        ));
    };
    let media = media_type(header);
    match &media {
        Some(m) if fits(*format, m) => {}
        None if body.is_empty() => {
            header
                .insert_header("content-type", format.content_type())
                .map_err(|_| Problem::bad_request("the request cannot be forwarded"))?;
        }
        _ => {
            return Err(refused(format!(
                "provider {} takes its credential in a {} body; this call's content type is {}",
                provider.name,
                format.content_type(),
                media.as_deref().unwrap_or("missing")
            )));
        }
    }
    let placed = match format {
        BodyFormat::Form => form_with(body, field, value.expose()),
        BodyFormat::Json => json_with(body, field, value.expose()).ok_or_else(|| {
            refused(format!(
                "provider {} takes its credential in the field {field:?} of a JSON object; \
                 this call's body is not one",
                provider.name
            ))
        })?,
    };
    Ok(Some(Bytes::from(placed)))
}

/// A form body with every `field=…` removed (names compared decoded) and `field=value`
/// appended; the other pairs are kept byte for byte, in order.
pub fn form_with(body: &[u8], field: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + field.len() + value.len() * 3 + 2);
    if !body.is_empty() {
        for pair in body.split(|&b| b == b'&') {
            let name = form_urlencoded::parse(pair).next().map(|(k, _)| k);
            if name.as_deref() == Some(field) {
                continue;
            }
            out.extend_from_slice(pair);
            out.push(b'&');
        }
    }
    out.extend(form_urlencoded::byte_serialize(field.as_bytes()).flat_map(str::bytes));
    out.push(b'=');
    out.extend(form_urlencoded::byte_serialize(value.as_bytes()).flat_map(str::bytes));
    out
}

/// A JSON object body with `field` set to `value` (`{}` for an empty body); `None` when the
/// body is not a JSON object.
pub fn json_with(body: &[u8], field: &str, value: &str) -> Option<Vec<u8>> {
    let mut object = if body.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice(body).ok()? {
            serde_json::Value::Object(o) => o,
            _ => return None,
        }
    };
    object.insert(field.to_owned(), value.into());
    Some(serde_json::to_vec(&object).expect("a JSON object serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_replaced_once_others_kept_byte_for_byte() {
        let out = form_with(
            b"a=1&token=dummy&b=x+y%21&token=two&tok=3",
            "token",
            "xoxb-1/2 3",
        );
        assert_eq!(out, b"a=1&b=x+y%21&tok=3&token=xoxb-1%2F2+3");
        // Encoded names are the same name.
        let out = form_with(b"to%6Ben=d&x=1", "token", "s");
        assert_eq!(out, b"x=1&token=s");
        // A name with a space, a value-less pair.
        let out = form_with(b"my+field=d&token&z=", "my field", "s");
        assert_eq!(out, b"token&z=&my+field=s");
        let out = form_with(b"token", "token", "s");
        assert_eq!(out, b"token=s");
        assert_eq!(form_with(b"", "token", "s&t=u"), b"token=s%26t%3Du");
    }

    #[test]
    fn json_fields_are_set_in_objects_only() {
        let out = json_with(
            br#"{"b":1,"token":"dummy","a":{"x":[1,2]}}"#,
            "token",
            "s\"1",
        );
        assert_eq!(
            String::from_utf8(out.unwrap()).unwrap(),
            r#"{"a":{"x":[1,2]},"b":1,"token":"s\"1"}"#
        );
        assert_eq!(json_with(b"", "token", "s").unwrap(), br#"{"token":"s"}"#);
        assert_eq!(json_with(b" {} ", "a.b", "s").unwrap(), br#"{"a.b":"s"}"#);
        // Duplicate keys: the last one wins when parsed, and the field is there once.
        assert_eq!(
            json_with(br#"{"token":"a","token":"b"}"#, "token", "s").unwrap(),
            br#"{"token":"s"}"#
        );
        for not_object in [&b"[1]"[..], b"\"x\"", b"null", b"{", b"12", b"  ", b"{}x"] {
            assert!(json_with(not_object, "t", "s").is_none(), "{not_object:?}");
        }
    }

    #[test]
    fn content_types_must_fit_the_format() {
        assert!(fits(BodyFormat::Form, "application/x-www-form-urlencoded"));
        assert!(!fits(BodyFormat::Form, "multipart/form-data"));
        assert!(fits(BodyFormat::Json, "application/json"));
        assert!(fits(BodyFormat::Json, "application/vnd.api+json"));
        assert!(!fits(BodyFormat::Json, "text/json"));
        assert!(!fits(BodyFormat::Json, "application/x-www-form-urlencoded"));
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("content-type", "Application/JSON; charset=utf-8")
            .unwrap();
        assert_eq!(media_type(&req).as_deref(), Some("application/json"));
    }

    fn provider(auth: serde_json::Value) -> Provider {
        let mut p = Provider::for_tests("slack");
        p.auth = Some(serde_json::from_value(auth).unwrap());
        p
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn body_credentials_are_checked_and_placed() {
        let form = provider(
            serde_json::json!({"type": "body", "format": "form", "field": "token", "value": "xoxb-1"}),
        );
        let ct = ("content-type", "application/x-www-form-urlencoded");
        let ok = request("POST", &[ct, ("content-length", "3")]);
        check(&ok, "/api/chat", &form).unwrap();
        for (headers, why) in [
            (
                vec![
                    ("content-type", "application/json"),
                    ("content-length", "2"),
                ],
                "application/json",
            ),
            (vec![("content-length", "2")], "missing"),
            (vec![ct, ("content-encoding", "gzip")], "uncompressed"),
            (vec![("content-type", "application/grpc")], "gRPC"),
        ] {
            let e = check(&request("POST", &headers), "/", &form).unwrap_err();
            assert_eq!((e.status, e.code), (400, "credential_placement"));
            assert!(e.detail.contains(why), "{}", e.detail);
            assert!(!e.detail.contains("xoxb"), "{}", e.detail);
        }
        let ws = request(
            "GET",
            &[("upgrade", "websocket"), ("connection", "Upgrade")],
        );
        assert!(
            check(&ws, "/", &form)
                .unwrap_err()
                .detail
                .contains("WebSocket")
        );
        // A bodiless call without a content type gets the format's.
        check(&request("POST", &[]), "/", &form).unwrap();
        let mut up = request("POST", &[]);
        let sent = place_body(&form, &mut up, Some(&Bytes::new()), 10).unwrap();
        assert_eq!(sent.unwrap(), "token=xoxb-1");
        assert_eq!(
            up.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        let mut up = request("POST", &[ct]);
        let sent = place_body(&form, &mut up, Some(&Bytes::from("token=dummy&a=1")), 10);
        assert_eq!(sent.unwrap().unwrap(), "a=1&token=xoxb-1");
        // Larger than the replay limit: 413, never streamed without the credential.
        let e = place_body(&form, &mut up, None, 10).unwrap_err();
        assert_eq!((e.status, e.code), (413, "body_too_large"));
        assert!(e.detail.contains("10 bytes"), "{}", e.detail);
        // A body with a content type that does not fit (caught here too, e.g. h2 without one).
        let mut up = request("POST", &[]);
        let e = place_body(&form, &mut up, Some(&Bytes::from("a=1")), 10).unwrap_err();
        assert_eq!(e.code, "credential_placement");

        let json = provider(
            serde_json::json!({"type": "body", "format": "json", "field": "key", "value": "j-1"}),
        );
        let mut up = request("POST", &[("content-type", "application/json")]);
        let e = place_body(&json, &mut up, Some(&Bytes::from("[1]")), 100).unwrap_err();
        assert_eq!((e.status, e.code), (400, "credential_placement"));
        let sent = place_body(
            &json,
            &mut up,
            Some(&Bytes::from(r#"{"key":0,"a":1}"#)),
            100,
        );
        assert_eq!(sent.unwrap().unwrap(), r#"{"a":1,"key":"j-1"}"#);
        // Other schemes: the body goes as it is.
        let none = Provider::for_tests("none");
        assert!(place_body(&none, &mut up, None, 0).unwrap().is_none());
        check(&request("POST", &[]), "/", &none).unwrap();
    }

    #[test]
    fn path_credentials_refuse_paths_off_the_template() {
        let tg = provider(
            serde_json::json!({"type": "path", "template": "/bot{secret}", "value": "1:AA"}),
        );
        let req = request("GET", &[]);
        check(&req, "/botPLACEHOLDER/getMe?x=1", &tg).unwrap();
        check(&req, "/bot/getMe", &tg).unwrap();
        let e = check(&req, "/getMe?bot=1", &tg).unwrap_err();
        assert_eq!((e.status, e.code), (400, "credential_placement"));
        assert!(e.detail.contains("/bot{secret}"), "{}", e.detail);
        assert!(!e.detail.contains("1:AA"));
    }

    #[test]
    fn the_provider_gets_the_secret_under_its_base_path_and_logs_keep_the_placeholder() {
        let mut tg = provider(
            serde_json::json!({"type": "path", "template": "/bot{secret}", "value": "1:A/B"}),
        );
        tg.base = hub_core::provider::parse_base_url("https://api.tg.test/v2", false).unwrap();
        let mut caller = request("GET", &[("x-note", "botX")]);
        caller.set_raw_path(b"/botX/send/botX?q=botX").unwrap();
        let up = crate::forward::upstream_header(
            &caller,
            &tg,
            "/botX/send/botX?q=botX",
            "rid",
            &mut None,
        )
        .unwrap();
        assert_eq!(up.raw_path(), b"/v2/bot1:A%2FB/send/botX?q=botX");
        assert_eq!(up.headers["x-note"], "botX");
        assert_eq!(
            crate::inject::loggable_path(tg.auth.as_ref(), "/botX/send/botX?q=botX"),
            "/botX/send/botX?q=botX"
        );
        assert!(crate::forward::upstream_header(&caller, &tg, "/nope", "rid", &mut None).is_err());
    }

    #[test]
    fn path_credentials_are_placed_only_where_the_template_says() {
        let auth = Auth::Path {
            template: "/bot{secret}".into(),
            value: hub_core::secret::SecretString::new("1:a/b%c"),
        };
        assert_eq!(
            upstream_path(Some(&auth), "/botX/getMe").as_deref(),
            Some("/bot1:a%2Fb%25c/getMe")
        );
        assert_eq!(upstream_path(Some(&auth), "/getMe"), None);
        assert_eq!(
            upstream_path(Some(&Auth::None), "/botX").as_deref(),
            Some("/botX")
        );
    }
}
