//! Extractors that turn every kind of bad input into a 4xx [`ApiError`] naming the field:
//! JSON bodies ([`ApiJson`]), ULID path ids ([`IdPath`]), query strings ([`ApiQuery`]) and
//! `If-Match` ([`IfMatch`]).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use ulid::Ulid;

use crate::BODY_LIMIT;
use crate::error::ApiError;

/// A JSON body: 415 unless `Content-Type: application/json`, 413 over [`BODY_LIMIT`], 400 when
/// it is not JSON, 422 (naming the field) when it does not fit `T`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(BODY_LIMIT)
            } else {
                ApiError::MalformedJson("the body could not be read".into())
            }
        })?;
        parse_json(&bytes).map(Self)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Parses JSON into `T`; syntax errors are 400, data errors 422 with the JSON path as `field`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        data_error(&path, e.into_inner())
    })?;
    de.end().map_err(|e| data_error(".", e))?;
    Ok(value)
}

/// Reads `T` from an in-memory JSON value that came from the caller under `prefix` (e.g. a
/// merged `config`); data errors are 422 naming `prefix.field`.
pub fn from_value<T: DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = match e.path().to_string().as_str() {
            "." => prefix.to_owned(),
            p => format!("{prefix}.{p}"),
        };
        data_error(&path, e.into_inner())
    })
}

/// Maps a serde_json error at `path` (serde_path_to_error's dotted form, `.` for the root).
fn data_error(path: &str, e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let message = without_position(&e.to_string());
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedJson(message),
        Category::Data => {
            let field = field_path(path, &message);
            // Never echo input under `auth`: a secret typed into the wrong field would come back.
            let message = if field == "auth" || field.starts_with("auth.") {
                redact_value(&message)
            } else {
                message
            };
            ApiError::Validation { field, message }
        }
    }
}

/// serde_json appends ` at line L column C`; the field says where, so drop it.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// The offending field: the path serde reached, plus the name an `unknown field` / `missing
/// field` message carries (serde reports those at the enclosing object).
fn field_path(path: &str, message: &str) -> String {
    let base = match path {
        "." | "" => String::new(),
        p => p.replace(".[", "["),
    };
    let named = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    // An unknown field is usually in the path already (its key was read before the error).
    let last = base.rsplit(['.', '[']).next().unwrap_or_default();
    match (base.is_empty(), named) {
        (true, Some(n)) => n.to_owned(),
        (false, Some(n)) if n != last => format!("{base}.{n}"),
        (true, None) => "body".to_owned(),
        (false, _) => base,
    }
}

/// `invalid type: string "s3cr3t", expected …` → `invalid type: string, expected …`.
fn redact_value(message: &str) -> String {
    match (message.find(['"', '`']), message.find(", expected")) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{}", message[..start].trim_end(), &message[end..])
        }
        _ => message.to_owned(),
    }
}

/// A ULID path parameter named `id`; 400 `invalid_id` when it is anything else.
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub Ulid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidId { field: "id" })?;
        parse_ulid(&raw)
            .map(Self)
            .ok_or(ApiError::InvalidId { field: "id" })
    }
}

/// A ULID in its canonical spelling (either case). The decoder alone would accept aliases and
/// silently drop overflowing high bits (`8…` decodes like `0…`), giving one id several names.
pub fn parse_ulid(raw: &str) -> Option<Ulid> {
    let id = Ulid::from_string(raw).ok()?;
    id.to_string().eq_ignore_ascii_case(raw).then_some(id)
}

/// A query string deserialized into `T` (which should deny unknown fields); 400
/// `invalid_query` naming the parameter otherwise.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Self)
    }
}

/// Parses a query string into `T`.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        ApiError::InvalidQuery {
            field: match field_path(&path, &message).as_str() {
                "body" => "query".to_owned(),
                f => f.to_owned(),
            },
            message,
        }
    })
}

/// `If-Match: "<version>"` (also `W/"<version>"` or a bare number); `*` or no header means
/// "whatever the current version is".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(header::IF_MATCH) else {
            return Ok(Self(None));
        };
        let bad = || ApiError::InvalidHeader {
            field: "If-Match",
            message: "expected the ETag of a previous response, e.g. \"3\"".into(),
        };
        let s = v.to_str().map_err(|_| bad())?.trim();
        if s == "*" {
            return Ok(Self(None));
        }
        let s = s.strip_prefix("W/").unwrap_or(s);
        let s = s
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(s);
        s.parse::<i64>()
            .ok()
            .filter(|v| *v >= 1)
            .map(|v| Self(Some(v)))
            .ok_or_else(bad)
    }
}

/// The `ETag` for a record version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Inner {
        timeout_ms: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        config: Option<Inner>,
        hosts: Option<Vec<String>>,
    }

    fn field_of(json: &str) -> (u16, String) {
        let e = parse_json::<Outer>(json.as_bytes()).unwrap_err();
        let body = e.to_string();
        let field = match e {
            ApiError::Validation { field, .. } => field,
            ApiError::MalformedJson(_) => "-".into(),
            other => panic!("{other:?}"),
        };
        let status = if field == "-" { 400 } else { 422 };
        assert!(!body.contains(" at line "), "{body}");
        (status, field)
    }

    #[test]
    fn data_errors_name_the_field() {
        assert_eq!(field_of(r#"{"name": 1}"#), (422, "name".into()));
        assert_eq!(
            field_of(r#"{"name": "a", "config": {"timeoutMs": "x"}}"#),
            (422, "config.timeoutMs".into())
        );
        assert_eq!(
            field_of(r#"{"name": "a", "config": {"bogus": 1}}"#),
            (422, "config.bogus".into())
        );
        assert_eq!(field_of(r#"{"name": "a", "x": 1}"#), (422, "x".into()));
        assert_eq!(field_of(r#"{}"#), (422, "name".into()));
        assert_eq!(
            field_of(r#"{"name": "a", "hosts": ["a", 2]}"#),
            (422, "hosts[1]".into())
        );
        assert_eq!(field_of(r#"[]"#), (422, "body".into()));
    }

    #[test]
    fn syntax_errors_are_400() {
        for bad in [r#"{"name": "#, r#"{"name": "a"} trailing"#, "", "nul\u{0}"] {
            assert_eq!(field_of(bad).0, 400, "{bad:?}");
        }
    }

    #[test]
    fn only_canonical_ulids_are_ids() {
        let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        assert!(parse_ulid(id).is_some());
        assert_eq!(parse_ulid(&id.to_lowercase()), parse_ulid(id));
        for bad in [
            "81ARZ3NDEKTSV4RRFFQ69G5FAV",
            "01ARZ3NDEKTSV4RRFFQ69G5FA",
            "",
            "0".repeat(27).as_str(),
        ] {
            assert_eq!(parse_ulid(bad), None, "{bad}");
        }
    }

    #[test]
    fn auth_values_are_not_echoed() {
        assert_eq!(
            redact_value(r#"invalid type: string "s3cr3t", expected u32"#),
            "invalid type: string, expected u32"
        );
        assert_eq!(
            redact_value("unknown variant `s3cr3t`, expected one of `none`, `bearer`"),
            "unknown variant, expected one of `none`, `bearer`"
        );
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Q {
        limit: Option<u32>,
        cursor: Option<String>,
    }

    #[test]
    fn queries_name_the_parameter() {
        assert_eq!(
            parse_query::<Q>("limit=5&cursor=x").unwrap(),
            Q {
                limit: Some(5),
                cursor: Some("x".into())
            }
        );
        for (q, field) in [
            ("limit=x", "limit"),
            ("limit=-1", "limit"),
            ("bogus=1", "bogus"),
            ("limit=1&limit=2", "limit"),
        ] {
            match parse_query::<Q>(q).unwrap_err() {
                ApiError::InvalidQuery { field: f, .. } => assert_eq!(f, field, "{q}"),
                other => panic!("{other:?}"),
            }
        }
    }
}
