//! The one error type of the admin API, [`ApiError`], answered as `application/problem+json`
//! (RFC 9457) with a stable machine-readable `code` and, for bad input, the offending `field`.
//!
//! Bad input is always 4xx. 5xx bodies stay generic: the detail (which may name a database host
//! or a driver message) goes to the log only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_core::access::Role;
use hub_core::catalog::CatalogError;
use hub_core::dlq::DlqError;
use hub_core::jobs::JobError;
use hub_core::provider::ValidationError;
use hub_core::store::StoreError;
use hub_core::vault::VaultError;
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every way an admin request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no bearer token, or not a valid one.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 403: the token's role may not do this.
    #[error("this needs the {needed:?} role; the token has {has:?}")]
    Forbidden {
        /// What the operation needs.
        needed: Role,
        /// What the caller has.
        has: Role,
    },
    /// 403: outside the token's tenant scope (the message says what and why).
    #[error("{0}")]
    OutOfScope(String),
    /// 404: no such resource (or route).
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists, the method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 400: a path id is not a ULID.
    #[error("{field}: not a valid ULID")]
    InvalidId {
        /// The path parameter.
        field: &'static str,
    },
    /// 400: the body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 400: a query parameter is malformed or unknown.
    #[error("{field}: {message}")]
    InvalidQuery {
        /// The parameter.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 400: a request header is malformed.
    #[error("{field}: {message}")]
    InvalidHeader {
        /// The header.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// 422: well-formed JSON that breaks a rule (wrong type, unknown field, out of bounds).
    #[error("{field}: {message}")]
    Validation {
        /// JSON path of the offending field, e.g. `config.timeoutMs`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// 409: a uniqueness rule; the message names the owner.
    #[error("{field}: {message}")]
    Conflict {
        /// The field, e.g. `hosts[0]`.
        field: String,
        /// e.g. `host api.x.com is already claimed by provider stripe (01J…)`.
        message: String,
    },
    /// 409: the provider is disabled (`POST /call`).
    #[error("provider {0} is disabled")]
    ProviderDisabled(String),
    /// 409: the DLQ entry's body was truncated; replaying it would send another request.
    #[error("DLQ entry {0} kept a truncated body; it cannot be replayed")]
    NotReplayable(String),
    /// 409: the DLQ entry was already replayed successfully.
    #[error("DLQ entry {0} is already resolved")]
    AlreadyResolved(String),
    /// 412: `If-Match` names a version the resource no longer has.
    #[error("the resource changed since the given version")]
    PreconditionFailed,
    /// 413: the body is over the limit.
    #[error("the request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: the body is not `application/json`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 502: the hub proxy could not be reached or answered something unusable (`POST /call`).
    #[error("{0}")]
    BadGateway(String),
    /// 503: a dependency (database) is unavailable. The detail is logged, never answered.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 500: a bug or corrupt data. The detail is logged, never answered.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of an error.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    code: &'static str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// A 422 for `field`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } | Self::OutOfScope(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidId { .. }
            | Self::MalformedJson(_)
            | Self::InvalidQuery { .. }
            | Self::InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict { .. }
            | Self::ProviderDisabled(_)
            | Self::NotReplayable(_)
            | Self::AlreadyResolved(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code (also the log `kind`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden { .. } | Self::OutOfScope(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidId { .. } => "invalid_id",
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidQuery { .. } => "invalid_query",
            Self::InvalidHeader { .. } => "invalid_header",
            Self::Validation { .. } => "validation_failed",
            Self::Conflict { .. } => "conflict",
            Self::ProviderDisabled(_) => "provider_disabled",
            Self::NotReplayable(_) => "not_replayable",
            Self::AlreadyResolved(_) => "already_resolved",
            Self::PreconditionFailed => "precondition_failed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BadGateway(_) => "bad_gateway",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden { .. } | Self::OutOfScope(_) => "Forbidden",
            Self::NotFound(_) => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::InvalidId { .. } => "Invalid id",
            Self::MalformedJson(_) => "Malformed JSON",
            Self::InvalidQuery { .. } => "Invalid query parameter",
            Self::InvalidHeader { .. } => "Invalid header",
            Self::Validation { .. } => "Validation failed",
            Self::Conflict { .. } => "Conflict",
            Self::ProviderDisabled(_) => "Provider disabled",
            Self::NotReplayable(_) => "Not replayable",
            Self::AlreadyResolved(_) => "Already resolved",
            Self::PreconditionFailed => "Precondition failed",
            Self::PayloadTooLarge(_) => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::BadGateway(_) => "Bad gateway",
            Self::Unavailable(_) => "Service unavailable",
            Self::Internal(_) => "Internal error",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidId { field } | Self::InvalidHeader { field, .. } => Some(field),
            Self::InvalidQuery { field, .. }
            | Self::Validation { field, .. }
            | Self::Conflict { field, .. } => Some(field),
            _ => None,
        }
    }

    /// What the caller is told. 5xx say nothing specific; the rest say what is wrong.
    fn public_detail(&self) -> String {
        match self {
            Self::Unavailable(_) => "a dependency of the admin service is unavailable; \
                                     retry later"
                .to_owned(),
            Self::Internal(_) => "the admin service failed; the log has the details".to_owned(),
            Self::InvalidQuery { message, .. }
            | Self::Validation { message, .. }
            | Self::Conflict { message, .. } => message.clone(),
            Self::InvalidHeader { message, .. } => message.clone(),
            Self::InvalidId { .. } => "not a valid ULID".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "admin request failed");
        } else {
            tracing::debug!(code = self.code(), error = %self, "admin request refused");
        }
        let body = Problem {
            kind: format!("urn:integration-hub:problem:{}", self.code()),
            title: self.title(),
            status: status.as_u16(),
            code: self.code(),
            detail: self.public_detail(),
            field: self.field(),
        };
        let bytes = serde_json::to_vec(&body).expect("a problem of strings serializes");
        let mut resp = (status, bytes).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if matches!(self, Self::Unauthorized) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"integration-hub\""),
            );
        }
        resp
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::Validation {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("no such resource".into()),
            StoreError::Conflict { field, message } => Self::Conflict { field, message },
            StoreError::Stale => Self::PreconditionFailed,
            StoreError::Database(_) => Self::Unavailable(format!("{} ({})", e, e.kind())),
            other => Self::Internal(format!("store: {other} ({})", other.kind())),
        }
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        Self::Internal(format!("vault: {e} ({})", e.kind()))
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Invalid(v) => v.into(),
            CatalogError::Vault(v) => v.into(),
            CatalogError::Store(s) => s.into(),
        }
    }
}

impl ApiError {
    /// A DLQ failure about entry `id`. The handlers use this rather than `From` so 404 and 409
    /// name the entry.
    pub fn dlq(id: impl std::fmt::Display, e: DlqError) -> Self {
        match e {
            DlqError::NotFound => Self::NotFound(format!("no DLQ entry with id {id}")),
            DlqError::NotReplayable => Self::NotReplayable(id.to_string()),
            DlqError::Resolved => Self::AlreadyResolved(id.to_string()),
            other => other.into(),
        }
    }
}

impl From<DlqError> for ApiError {
    fn from(e: DlqError) -> Self {
        let kind = e.kind();
        match e {
            DlqError::NotFound => Self::NotFound("no such DLQ entry".into()),
            DlqError::NotReplayable => Self::NotReplayable("entry".into()),
            DlqError::Resolved => Self::AlreadyResolved("entry".into()),
            DlqError::Database(_) | DlqError::Queue(_) => {
                Self::Unavailable(format!("dlq: {e} ({kind})"))
            }
            DlqError::Corrupt { .. } | DlqError::Vault(_) => {
                Self::Internal(format!("dlq: {e} ({kind})"))
            }
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let kind = e.kind();
        match e {
            JobError::Database(_) => Self::Unavailable(format!("jobs: {e} ({kind})")),
            // Reading a job can fail only on the database or on a row that does not decode.
            other => Self::Internal(format!("jobs: {other} ({kind})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_hide_their_detail() {
        let e = ApiError::Internal("postgres://u:pw@db failed".into());
        assert!(!e.public_detail().contains("pw"));
        let e = ApiError::Unavailable("pool timed out at db.internal".into());
        assert!(!e.public_detail().contains("db.internal"));
    }

    #[test]
    fn store_errors_map_to_statuses() {
        let conflict = ApiError::from(StoreError::Conflict {
            field: "hosts[0]".into(),
            message: "owned by stripe".into(),
        });
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        assert_eq!(conflict.field(), Some("hosts[0]"));
        assert_eq!(
            ApiError::from(StoreError::Stale).status(),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            ApiError::from(StoreError::NotFound).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn dlq_errors_map_to_statuses() {
        let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let cases = [
            (DlqError::NotFound, StatusCode::NOT_FOUND, "not_found"),
            (
                DlqError::NotReplayable,
                StatusCode::CONFLICT,
                "not_replayable",
            ),
            (DlqError::Resolved, StatusCode::CONFLICT, "already_resolved"),
            (
                DlqError::Database(sqlx::Error::PoolTimedOut),
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let e = ApiError::dlq(id, e);
            assert_eq!((e.status(), e.code()), (status, code), "{e}");
        }
        let down = ApiError::from(JobError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
