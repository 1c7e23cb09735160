//! Every way a request can fail, and the one table ([`ApiError::shape`]) that maps each to an
//! HTTP status, an OpenAI `error.type` and `error.code`. Handlers return [`ApiError`]; nothing
//! else decides a status.

use std::time::Duration;

use hyper::StatusCode;
use moebox_protocol::{ErrorBody, ErrorCode};
use serde::Serialize;

/// OpenAI's `error.type` values.
pub const INVALID_REQUEST: &str = "invalid_request_error";
pub const AUTHENTICATION: &str = "authentication_error";
pub const PERMISSION: &str = "permission_error";
pub const NOT_FOUND: &str = "not_found_error";
pub const RATE_LIMIT: &str = "rate_limit_error";
pub const SERVER: &str = "server_error";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error(
        "missing API key: send it as `Authorization: Bearer mbx_...` (ask an admin for one: \
         moebox keys create)"
    )]
    MissingKey,
    #[error("invalid API key: {0}")]
    InvalidKey(String),
    #[error("this API key was revoked")]
    RevokedKey,
    #[error("this route needs an admin key")]
    AdminRequired,
    #[error(
        "a request made with an admin session must carry the session's token in the \
         X-CSRF-Token header"
    )]
    CsrfMismatch,
    #[error("unknown URL: {method} {path}")]
    UnknownRoute { method: String, path: String },
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("no key with id {0} (GET /admin/keys lists them)")]
    KeyNotFound(i64),
    #[error("the model `{0}` does not exist (GET /v1/models lists those served)")]
    ModelNotFound(String),
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// A known field has the wrong type (the message is serde's, which names what it expected).
    #[error("invalid type for `{param}`: {message}")]
    WrongType { param: String, message: String },
    /// A field is of the right type but out of range or malformed.
    #[error("{message}")]
    InvalidValue { param: String, message: String },
    /// A field asks for something this server does not do (yet).
    #[error("{message}")]
    Unsupported { param: String, message: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("reading the request body failed or took too long")]
    BodyRead,
    #[error(
        "this API key already has {limit} requests in flight (gateway.per_key_max_concurrent); \
         wait for one to finish"
    )]
    KeyConcurrency { limit: usize },
    #[error(
        "the server is at capacity ({limit} requests in flight, gateway.max_queued_requests); \
         retry after {retry_after_seconds} s"
    )]
    Overloaded {
        limit: usize,
        retry_after_seconds: u32,
    },
    #[error("no engine is ready to serve; retry after {retry_after_seconds} s")]
    NoEngine { retry_after_seconds: u32 },
    /// An engine refused the request (its ErrorBody).
    #[error("{message}")]
    Engine {
        code: ErrorCode,
        message: String,
        param: Option<String>,
        retry_after_seconds: Option<u32>,
    },
    #[error(
        "too many failed API key checks from this address (gateway.auth_failures_per_minute); \
         retry after {retry_after_seconds} s"
    )]
    AuthFailures { retry_after_seconds: u32 },
    #[error(
        "this API key's limit of {limit} {unit} per minute is used up; retry after \
         {retry_after_seconds} s"
    )]
    RateLimited {
        limit: u32,
        unit: &'static str,
        retry_after_seconds: u32,
    },
    #[error(
        "this API key's monthly budget of {budget} tokens is used up ({used} used this month); \
         it renews on the 1st (UTC)"
    )]
    BudgetExhausted { budget: u64, used: u64 },
    #[error(
        "the usage ledger cannot record this request (is the data partition full?); retry \
         after {retry_after_seconds} s"
    )]
    LedgerUnavailable { retry_after_seconds: u32 },
    #[error("the request took longer than its deadline of {} s", .deadline.as_secs())]
    DeadlineExceeded { deadline: Duration },
    #[error("internal error")]
    Internal,
}

/// What the table says about one error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
}

impl ApiError {
    /// THE table: status, OpenAI `error.type`, `error.code`.
    pub fn shape(&self) -> Shape {
        use StatusCode as S;
        let (status, kind, code) = match self {
            Self::MissingKey => (S::UNAUTHORIZED, AUTHENTICATION, "missing_api_key"),
            Self::InvalidKey(_) => (S::UNAUTHORIZED, AUTHENTICATION, "invalid_api_key"),
            Self::RevokedKey => (S::UNAUTHORIZED, AUTHENTICATION, "revoked_api_key"),
            Self::AdminRequired => (S::FORBIDDEN, PERMISSION, "insufficient_scope"),
            Self::CsrfMismatch => (S::FORBIDDEN, PERMISSION, "csrf_token_mismatch"),
            Self::UnknownRoute { .. } => (S::NOT_FOUND, NOT_FOUND, "unknown_url"),
            Self::MethodNotAllowed { .. } => {
                (S::METHOD_NOT_ALLOWED, INVALID_REQUEST, "method_not_allowed")
            }
            Self::ModelNotFound(_) => (S::NOT_FOUND, INVALID_REQUEST, "model_not_found"),
            Self::KeyNotFound(_) => (S::NOT_FOUND, NOT_FOUND, "key_not_found"),
            Self::InvalidJson(_) => (S::BAD_REQUEST, INVALID_REQUEST, "invalid_json"),
            Self::WrongType { .. } => (S::BAD_REQUEST, INVALID_REQUEST, "invalid_type"),
            Self::InvalidValue { .. } => (S::BAD_REQUEST, INVALID_REQUEST, "invalid_value"),
            Self::Unsupported { .. } => (S::BAD_REQUEST, INVALID_REQUEST, "unsupported_value"),
            Self::BodyTooLarge { .. } => {
                (S::PAYLOAD_TOO_LARGE, INVALID_REQUEST, "request_too_large")
            }
            Self::BodyRead => (S::BAD_REQUEST, INVALID_REQUEST, "body_read_failed"),
            Self::KeyConcurrency { .. } => (
                S::TOO_MANY_REQUESTS,
                RATE_LIMIT,
                "concurrency_limit_exceeded",
            ),
            Self::AuthFailures { .. } => {
                (S::TOO_MANY_REQUESTS, RATE_LIMIT, "too_many_auth_failures")
            }
            Self::RateLimited { .. } => (S::TOO_MANY_REQUESTS, RATE_LIMIT, "rate_limit_exceeded"),
            Self::BudgetExhausted { .. } => {
                (S::TOO_MANY_REQUESTS, RATE_LIMIT, "insufficient_quota")
            }
            Self::Overloaded { .. } => (S::SERVICE_UNAVAILABLE, SERVER, "overloaded"),
            Self::NoEngine { .. } => (S::SERVICE_UNAVAILABLE, SERVER, "engine_unavailable"),
            Self::LedgerUnavailable { .. } => {
                (S::SERVICE_UNAVAILABLE, SERVER, "ledger_unavailable")
            }
            Self::Engine { code, .. } => match code {
                ErrorCode::InvalidRequest => (S::BAD_REQUEST, INVALID_REQUEST, "invalid_value"),
                ErrorCode::ContextLengthExceeded => {
                    (S::BAD_REQUEST, INVALID_REQUEST, "context_length_exceeded")
                }
                ErrorCode::QueueFull => (S::SERVICE_UNAVAILABLE, SERVER, "overloaded"),
                ErrorCode::Unavailable => (S::SERVICE_UNAVAILABLE, SERVER, "engine_unavailable"),
                ErrorCode::Internal => (S::INTERNAL_SERVER_ERROR, SERVER, "engine_error"),
            },
            Self::DeadlineExceeded { .. } => (S::GATEWAY_TIMEOUT, SERVER, "timeout"),
            Self::Internal => (S::INTERNAL_SERVER_ERROR, SERVER, "internal_error"),
        };
        Shape { status, kind, code }
    }

    /// The request field at fault, as OpenAI's `error.param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::WrongType { param, .. }
            | Self::InvalidValue { param, .. }
            | Self::Unsupported { param, .. } => Some(param),
            Self::ModelNotFound(_) => Some("model"),
            Self::Engine { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// Seconds for `Retry-After`, on the errors a retry can cure.
    pub fn retry_after_seconds(&self) -> Option<u32> {
        match self {
            Self::Overloaded {
                retry_after_seconds,
                ..
            }
            | Self::NoEngine {
                retry_after_seconds,
            }
            | Self::AuthFailures {
                retry_after_seconds,
            }
            | Self::LedgerUnavailable {
                retry_after_seconds,
            }
            | Self::RateLimited {
                retry_after_seconds,
                ..
            } => Some(*retry_after_seconds),
            Self::KeyConcurrency { .. } => Some(1),
            Self::Engine {
                retry_after_seconds,
                ..
            } => *retry_after_seconds,
            _ => None,
        }
    }

    /// An engine's refusal; `fallback_retry_after` fills in Retry-After when the engine said
    /// none on an error a retry can cure.
    pub fn from_engine(body: ErrorBody, fallback_retry_after: u32) -> Self {
        let retry_after_seconds = match body.code {
            ErrorCode::QueueFull | ErrorCode::Unavailable => {
                Some(body.retry_after_seconds.unwrap_or(fallback_retry_after))
            }
            _ => body.retry_after_seconds,
        };
        Self::Engine {
            code: body.code,
            message: body.message,
            param: body.param,
            retry_after_seconds,
        }
    }

    /// OpenAI's error body.
    pub fn body(&self) -> ErrorEnvelope {
        let shape = self.shape();
        ErrorEnvelope {
            error: ErrorObject {
                message: self.to_string(),
                kind: shape.kind,
                param: self.param().map(str::to_owned),
                code: shape.code,
            },
        }
    }
}

/// `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_codes_map_to_openai_statuses() {
        for (code, status, kind) in [
            (ErrorCode::InvalidRequest, 400, INVALID_REQUEST),
            (ErrorCode::ContextLengthExceeded, 400, INVALID_REQUEST),
            (ErrorCode::QueueFull, 503, SERVER),
            (ErrorCode::Unavailable, 503, SERVER),
            (ErrorCode::Internal, 500, SERVER),
        ] {
            let error = ApiError::from_engine(
                ErrorBody {
                    message: "m".into(),
                    code,
                    param: None,
                    retry_after_seconds: None,
                },
                3,
            );
            assert_eq!(error.shape().status.as_u16(), status, "{code:?}");
            assert_eq!(error.shape().kind, kind, "{code:?}");
            let retry = matches!(code, ErrorCode::QueueFull | ErrorCode::Unavailable);
            assert_eq!(error.retry_after_seconds(), retry.then_some(3), "{code:?}");
        }
    }

    #[test]
    fn body_has_openai_shape() {
        let error = ApiError::WrongType {
            param: "max_tokens".into(),
            message: "invalid type: string \"x\", expected u32".into(),
        };
        let json = serde_json::to_value(error.body()).expect("serialises");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert_eq!(json["error"]["param"], "max_tokens");
        assert_eq!(json["error"]["code"], "invalid_type");
        assert!(
            json["error"]["message"]
                .as_str()
                .expect("message")
                .contains("max_tokens")
        );
    }

    #[test]
    fn auth_errors_are_401_and_scope_is_403() {
        assert_eq!(
            ApiError::MissingKey.shape().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ApiError::RevokedKey.shape().status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            ApiError::AdminRequired.shape().status,
            StatusCode::FORBIDDEN
        );
        assert_eq!(ApiError::AdminRequired.shape().kind, PERMISSION);
    }
}
