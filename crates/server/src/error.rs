//! The one error type the HTTP layer returns, rendered in the caller's
//! dialect (OpenAI's or Anthropic's error object). Statuses are chosen here and
//! nowhere else, so every failure maps the same way wherever it arises.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use switchboard_core::Outcome;
use switchboard_dialects::anthropic;
use switchboard_dialects::openai::{ErrorBody, RequestError};
use switchboard_dialects::sse::frame_data;
use switchboard_providers::{Dialect, TimeoutPhase, UpstreamError};

/// An error answer to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `error.type`.
    pub kind: &'static str,
    /// Stable code: OpenAI's `error.code`, the record's `error_code` and a
    /// future metric label.
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// `retry-after` to send (rate limits).
    pub retry_after: Option<String>,
    /// An upstream-provided code to show instead of `code`, when the
    /// upstream's own error is relayed.
    pub upstream_code: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            upstream_code: None,
        }
    }

    pub fn invalid_request(error: RequestError) -> ApiError {
        ApiError {
            param: error.param,
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                error.message,
            )
        }
    }

    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            param: Some("model".to_owned()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!(
                    "The model `{}` does not exist on this gateway; GET /v1/models lists the models it serves.",
                    clip(model, 200)
                ),
            )
        }
    }

    pub fn wrong_endpoint(model: &str, endpoint: &str) -> ApiError {
        ApiError {
            param: Some("model".to_owned()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "model_not_supported",
                format!("The model `{}` cannot serve {endpoint}.", clip(model, 200)),
            )
        }
    }

    pub fn missing_key() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY` or `x-api-key: YOUR_KEY`.",
        )
    }

    pub fn invalid_key() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.",
        )
    }

    /// A virtual key that was revoked or has expired, or whose team has
    /// expired.
    pub fn inactive_key() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "inactive_api_key",
            "This API key has been revoked or has expired.",
        )
    }

    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!(
                "The request body is larger than this gateway's limit of {limit} bytes (server.max_body_bytes)."
            ),
        )
    }

    pub fn unsupported_media_type(found: Option<&str>) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!(
                "Send the request body as JSON with `Content-Type: application/json` (got {}).",
                found.map_or_else(
                    || "no content type".to_owned(),
                    |value| format!("`{}`", clip(value, 100))
                )
            ),
        )
    }

    /// A request body of which nothing arrived for `idle`.
    pub fn body_stalled(idle: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "The request body stopped arriving: no more of it came for {} seconds.",
                idle.as_secs()
            ),
        )
    }

    pub fn unreadable_body(reason: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unreadable_body",
            format!("The request body could not be read: {reason}."),
        )
    }

    /// A request the connection could not read as HTTP/1.1.
    pub fn malformed_http(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "malformed_request",
            format!("The request is not valid HTTP/1.1: {what}."),
        )
    }

    pub fn head_too_large(bytes: usize, headers: usize) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "headers_too_large",
            format!(
                "The request's head is too large: at most {headers} headers and {} KiB in all.",
                bytes / 1024
            ),
        )
    }

    pub fn http_version_not_supported() -> ApiError {
        ApiError::new(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "invalid_request_error",
            "http_version_not_supported",
            "This gateway speaks HTTP/1.0, HTTP/1.1 and HTTP/2.",
        )
    }

    pub fn not_found_path(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!(
                "Unrecognized request URL ({}). This gateway serves /v1/chat/completions, /v1/messages, /v1/embeddings and /v1/models.",
                clip(path, 200)
            ),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("{method} is not allowed on {}.", clip(path, 200)),
        )
    }

    /// No deployment of the model (or its fallbacks) may be tried: every
    /// circuit is open.
    pub fn no_healthy_deployment(model: &str, retry_in: Option<std::time::Duration>) -> ApiError {
        ApiError {
            retry_after: retry_in.map(|wait| wait.as_secs().max(1).to_string()),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "no_healthy_deployment",
                format!(
                    "Every deployment of `{}` is resting after repeated failures; retry later.",
                    clip(model, 200)
                ),
            )
        }
    }

    /// No deployment of the model (or its fallbacks) carries the tags the
    /// request asked for.
    pub fn no_matching_deployment(model: &str, tags: &[String]) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "no_matching_deployment",
            format!(
                "No deployment of `{}` carries the tags [{}] asked for in x-switchboard-tags.",
                clip(model, 200),
                clip(&tags.join(", "), 200)
            ),
        )
    }

    /// The request's whole budget ran out between attempts.
    pub fn deadline_exceeded(attempts: u32) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            "upstream_timeout",
            format!("The request's time budget ran out after {attempts} upstream attempt(s)."),
        )
    }

    /// A stream still running when the request's time budget ran out.
    pub fn deadline_exceeded_in_stream() -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            "upstream_timeout",
            "The request's time budget ran out before the stream ended.",
        )
    }

    pub fn bad_header(name: &str, expected: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_header",
            format!("The `{name}` header must be {expected}."),
        )
    }

    /// The admin API names something that does not exist.
    pub fn admin_not_found(kind: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("No {kind} `{}` exists.", clip(id, 200)),
        )
    }

    /// An admin change that contradicts what is stored.
    pub fn admin_conflict(message: String) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "conflict",
            message,
        )
    }

    /// The database behind the admin API does not answer.
    pub fn store_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "store_unavailable",
            "The gateway's database did not answer; retry later.",
        )
    }

    /// A virtual key may not use this model.
    pub fn model_not_allowed(model: &str) -> ApiError {
        ApiError {
            param: Some("model".to_owned()),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "model_not_allowed",
                format!("This key may not use the model `{}`.", clip(model, 200)),
            )
        }
    }

    /// A budgeted key asked for a model whose price the gateway does not
    /// know, so the budget could not hold.
    pub fn unpriced_model(model: &str) -> ApiError {
        ApiError {
            param: Some("model".to_owned()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unpriced_model",
                format!(
                    "The model `{}` has no known price, so a budget cannot cover it; give its deployments a `price` in the gateway configuration.",
                    clip(model, 200)
                ),
            )
        }
    }

    /// A key's, team's or end user's per-minute or concurrency limit.
    pub fn rate_limited(scope: &str, limit: &str, retry_after: std::time::Duration) -> ApiError {
        ApiError {
            retry_after: Some(retry_after.as_secs().max(1).to_string()),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                format!(
                    "Rate limit reached for {scope}: {limit}. Retry after {} s.",
                    retry_after.as_secs().max(1)
                ),
            )
        }
    }

    /// A budget that the request's worst-case cost does not fit in.
    pub fn budget_exceeded(scope: &str, limit: u64, used: u64, period: &str) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            format!(
                "The {period} budget of {scope} is exhausted: ${:.6} of ${:.6} spent or reserved, and this request could cost more than what is left.",
                used as f64 / 1e9,
                limit as f64 / 1e9
            ),
        )
    }

    /// Shared limits cannot be checked and the rule fails closed.
    pub fn limits_unavailable(why: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "limits_unavailable",
            format!(
                "Rate limits and budgets cannot be checked right now: {}",
                clip(why, 300)
            ),
        )
    }

    /// The admin API is for the master key only.
    pub fn admin_only() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "admin_only",
            "The admin API needs the master key.",
        )
    }

    pub fn shutting_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "gateway_shutting_down",
            "The gateway is shutting down; retry on another instance.",
        )
    }

    /// Folds an upstream failure into what the client sees. The upstream's
    /// message is relayed only when it describes the client's own request
    /// (4xx other than authentication); credentials problems and server
    /// errors are the gateway's to explain.
    pub fn from_upstream(error: &UpstreamError, deployment: &str) -> ApiError {
        match error {
            UpstreamError::Connect(cause) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "upstream_unreachable",
                format!("Deployment `{deployment}` could not be reached: {cause}."),
            ),
            UpstreamError::Timeout { phase } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "api_error",
                "upstream_timeout",
                match phase {
                    TimeoutPhase::Connect => {
                        format!("Deployment `{deployment}` did not accept a connection in time.")
                    }
                    TimeoutPhase::Request => {
                        format!("Deployment `{deployment}` did not answer in time.")
                    }
                    TimeoutPhase::StreamIdle => format!(
                        "Deployment `{deployment}` stopped sending in the middle of the stream."
                    ),
                    TimeoutPhase::FirstToken => format!(
                        "Deployment `{deployment}` sent no content within the first-token limit."
                    ),
                },
            ),
            UpstreamError::Transport(cause) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "upstream_connection_failed",
                format!("The connection to deployment `{deployment}` failed: {cause}."),
            ),
            UpstreamError::InvalidResponse(why) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "api_error",
                "upstream_invalid_response",
                format!("Deployment `{deployment}` answered something unusable: {why}."),
            ),
            UpstreamError::Misconfigured(why) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "gateway_misconfigured",
                format!("Deployment `{deployment}` is misconfigured: {why}."),
            ),
            UpstreamError::Untranslatable { message, param } => ApiError {
                param: param.clone(),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "untranslatable_request",
                    message.clone(),
                )
            },
            UpstreamError::Unsupported { params, model } => ApiError {
                param: params.first().cloned(),
                ..ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "unsupported_parameter",
                    format!(
                        "The model `{}` (deployment `{deployment}`) cannot honour {}: remove {}, or set unsupported_params = \"drop\" on the deployment to send requests without {}.",
                        clip(model, 200),
                        clip(
                            &params
                                .iter()
                                .map(|param| format!("`{param}`"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            500
                        ),
                        if params.len() == 1 { "it" } else { "them" },
                        if params.len() == 1 { "it" } else { "them" },
                    ),
                )
            },
            UpstreamError::InStream { body } if crate::dispatch::is_rate_limit(body) => ApiError {
                upstream_code: body.code.clone(),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "upstream_rate_limited",
                    format!(
                        "Deployment `{deployment}` is rate limited{}",
                        body.message.as_deref().map_or_else(
                            || ".".to_owned(),
                            |message| format!(": {}", clip(message, 1000))
                        )
                    ),
                )
            },
            UpstreamError::InStream { body } => ApiError {
                upstream_code: body.code.clone(),
                ..ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    "upstream_error",
                    format!(
                        "Deployment `{deployment}` reported an error: {}",
                        body.message
                            .as_deref()
                            .map_or("no message".to_owned(), |message| clip(message, 1000)
                                .to_owned())
                    ),
                )
            },
            UpstreamError::Status {
                status,
                body,
                retry_after,
            } => {
                let upstream_message = body
                    .message
                    .as_deref()
                    .map(|message| clip(message, 2000).to_owned());
                match *status {
                    400 | 404 | 409 | 413 | 422 => ApiError {
                        param: body.param.clone(),
                        upstream_code: body.code.clone(),
                        ..ApiError::new(
                            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                            "invalid_request_error",
                            "upstream_rejected_request",
                            upstream_message.unwrap_or_else(|| {
                                format!(
                                    "Deployment `{deployment}` rejected the request ({status})."
                                )
                            }),
                        )
                    },
                    429 => ApiError {
                        retry_after: retry_after.clone(),
                        upstream_code: body.code.clone(),
                        ..ApiError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limit_error",
                            "upstream_rate_limited",
                            format!(
                                "Deployment `{deployment}` is rate limited{}",
                                upstream_message.map_or_else(
                                    || ".".to_owned(),
                                    |message| format!(": {message}")
                                )
                            ),
                        )
                    },
                    401 | 403 => ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "api_error",
                        "upstream_auth_failed",
                        format!(
                            "Deployment `{deployment}` refused the gateway's credentials ({status}); check its api_key in the gateway configuration."
                        ),
                    ),
                    408 => ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "api_error",
                        "upstream_timeout",
                        format!("Deployment `{deployment}` timed out (408)."),
                    ),
                    _ => ApiError {
                        upstream_code: body.code.clone(),
                        ..ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "api_error",
                            "upstream_error",
                            format!(
                                "Deployment `{deployment}` failed with status {status}{}",
                                upstream_message.map_or_else(
                                    || ".".to_owned(),
                                    |message| format!(": {message}")
                                )
                            ),
                        )
                    },
                }
            }
        }
    }

    /// How the request log classifies this error.
    pub fn outcome(&self) -> Outcome {
        match self.code {
            "gateway_shutting_down" => Outcome::Shutdown,
            "upstream_rate_limited" => Outcome::UpstreamError,
            _ if self.status.is_client_error() => Outcome::ClientError,
            _ => Outcome::UpstreamError,
        }
    }

    /// The OpenAI error object, as JSON bytes.
    pub fn body(&self) -> Bytes {
        self.body_in(Dialect::OpenAi)
    }

    /// The error object of the client's dialect, as JSON bytes.
    pub fn body_in(&self, dialect: Dialect) -> Bytes {
        match dialect {
            Dialect::OpenAi => Bytes::from(
                ErrorBody {
                    message: &self.message,
                    kind: self.kind,
                    param: self.param.as_deref(),
                    code: Some(self.upstream_code.as_deref().unwrap_or(self.code)),
                }
                .to_json(),
            ),
            Dialect::Anthropic => Bytes::from(anthropic::error_body(
                anthropic::error_kind(self.status.as_u16()),
                &self.message,
            )),
        }
    }

    /// The error as a stream's last event, in the client's dialect.
    pub fn stream_event(&self, dialect: Dialect) -> Bytes {
        let body = self.body_in(dialect);
        match dialect {
            Dialect::OpenAi => Bytes::from(frame_data(&body)),
            Dialect::Anthropic => {
                let mut frame = b"event: error\n".to_vec();
                frame.extend_from_slice(&frame_data(&body));
                Bytes::from(frame)
            }
        }
    }

    /// The response, in the client's dialect.
    pub fn render(self, dialect: Dialect) -> Response {
        let body = self.body_in(dialect);
        self.respond(body)
    }

    fn respond(self, body: Bytes) -> Response {
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(retry_after) = self
            .retry_after
            .as_deref()
            .and_then(|value| HeaderValue::from_str(value).ok())
        {
            headers.insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(Dialect::OpenAi)
    }
}

/// Cuts text at a character boundary, so error messages stay bounded.
fn clip(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}
