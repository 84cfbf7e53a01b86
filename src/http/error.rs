//! The one error shape of both APIs: `{"error":{"code":"…","message":"…"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The body of every error answer.
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_channel`, `token_required`, …).
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds for `Retry-After` (503, 429).
    pub retry_after: Option<u64>,
    /// `WWW-Authenticate` challenge (401, 403).
    pub www_authenticate: Option<String>,
}

impl ApiError {
    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
            },
        }
    }

    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 503 with `Retry-After`: the request may be retried safely.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 404 for any unknown path.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    /// 405 for a known path with another method.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method",
        )
    }
}

impl From<crate::backplane::BackplaneError> for ApiError {
    fn from(e: crate::backplane::BackplaneError) -> Self {
        use crate::backplane::BackplaneError;
        match e {
            BackplaneError::Unavailable(_) => ApiError::unavailable(
                "backplane_unavailable",
                format!("{e}; nothing was done, retry is safe"),
            ),
            BackplaneError::NewChannels { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "channel_creation_limited",
                format!("{e}; this publisher may not create them now"),
            ),
            BackplaneError::OutcomeUnknown(_) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "publish_outcome_unknown",
                format!("{e}; the event may have been published, and a retry may publish it twice"),
            ),
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        // RFC 6750: no error code when no token was sent.
        let (status, code, error) = match &e {
            AuthError::Missing(_) => (StatusCode::UNAUTHORIZED, "token_required", None),
            AuthError::Invalid(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                Some("invalid_token"),
            ),
            AuthError::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                Some("insufficient_scope"),
            ),
        };
        let message = e.to_string();
        let challenge = match error {
            None => r#"Bearer realm="sseplane""#.to_owned(),
            Some(error) => format!(
                r#"Bearer realm="sseplane", error="{error}", error_description="{}""#,
                header_safe(&message)
            ),
        };
        ApiError {
            www_authenticate: Some(challenge),
            ..ApiError::new(status, code, message)
        }
    }
}

/// `text` as a quoted-string's content: printable ASCII without quotes or
/// backslashes (the message may quote a token's claims).
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c == ' ' || c.is_ascii_graphic() => c,
            _ => '?',
        })
        .collect()
}

impl ApiError {
    /// The headers this error adds to a response besides the content type.
    pub fn headers(&self) -> Vec<(header::HeaderName, String)> {
        let mut headers = Vec::new();
        if let Some(seconds) = self.retry_after {
            headers.push((header::RETRY_AFTER, seconds.to_string()));
        }
        if let Some(challenge) = &self.www_authenticate {
            headers.push((header::WWW_AUTHENTICATE, challenge.clone()));
        }
        headers
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        for (name, value) in self.headers() {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// Fallback for unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Fallback for a wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
