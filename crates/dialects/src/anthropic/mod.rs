//! Anthropic's Messages API (`POST /v1/messages`), as the official SDKs send
//! and expect it: the request view the gateway checks and passes through,
//! conversion to and from the internal model (`canon`), the event stream in
//! both directions, and the error object.

mod convert;
mod stream;
#[cfg(test)]
mod tests;

use serde::Serialize;

use crate::openai::{RequestError, RequestFields};

pub use convert::{
    DEFAULT_MAX_TOKENS, decode_response, encode_request, encode_response, request_to_canonical,
};
pub use stream::{EventDecoder, EventEncoder};

/// The `anthropic-version` the gateway sends upstream when the client did
/// not say (the only version the API has published).
pub const API_VERSION: &str = "2023-06-01";

/// A checked `POST /v1/messages` body.
#[derive(Debug)]
pub struct MessagesRequest<'a> {
    pub fields: RequestFields<'a>,
    pub model: String,
    pub stream: bool,
    pub max_tokens: Option<u32>,
}

impl<'a> MessagesRequest<'a> {
    /// Checks the fields the gateway relies on, as Anthropic's API does:
    /// `model`, `max_tokens` and `messages` are required.
    pub fn parse(body: &'a [u8]) -> Result<MessagesRequest<'a>, RequestError> {
        let fields = RequestFields::parse(body)?;
        let model = match fields.get::<String>("model", "a string naming a model")? {
            Some(model) if !model.is_empty() => model,
            _ => return Err(RequestError::new("model: Field required", Some("model"))),
        };
        let Some(max_tokens) = fields.get::<u32>("max_tokens", "a non-negative integer")? else {
            return Err(RequestError::new(
                "max_tokens: Field required",
                Some("max_tokens"),
            ));
        };
        match fields.raw("messages") {
            None => {
                return Err(RequestError::new(
                    "messages: Field required",
                    Some("messages"),
                ));
            }
            Some(raw) if !raw.get().starts_with('[') => {
                return Err(RequestError::new(
                    "messages: Input should be a valid list",
                    Some("messages"),
                ));
            }
            Some(_) => {}
        }
        let stream = fields.get::<bool>("stream", "a boolean")?.unwrap_or(false);
        for name in ["temperature", "top_p"] {
            fields.get::<f64>(name, "a number")?;
        }
        fields.get::<u32>("top_k", "a non-negative integer")?;
        fields.get::<Vec<String>>("stop_sequences", "an array of strings")?;
        Ok(MessagesRequest {
            fields,
            model,
            stream,
            max_tokens: Some(max_tokens),
        })
    }

    /// The body for an Anthropic upstream: the client's own fields with the
    /// upstream model id; the body as it came when the client named that
    /// model (`RequestFields::with_model`).
    pub fn encode(&self, upstream_model: &str) -> Vec<u8> {
        let model = serde_json::to_vec(upstream_model).unwrap_or_default();
        self.fields.with_model(&model)
    }
}

/// Checks a `message` relayed unchanged to an Anthropic client and reads
/// its usage (input counting cache reads and writes), id, model and stop
/// reason. Blocks the internal model cannot hold (server tools and their
/// results) are the client's to read, so they are not examined.
pub fn check_message(
    body: &[u8],
) -> Result<(switchboard_core::Usage, switchboard_core::ResponseInfo), crate::canon::InvalidResponse>
{
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|error| {
        crate::canon::InvalidResponse(format!("the upstream's answer is not valid JSON: {error}"))
    })?;
    if value.get("type").and_then(serde_json::Value::as_str) != Some("message")
        || !value
            .get("content")
            .is_some_and(serde_json::Value::is_array)
    {
        return Err(crate::canon::InvalidResponse(
            "the upstream's answer is not a Messages `message` object".to_owned(),
        ));
    }
    let mut info = switchboard_core::ResponseInfo::default();
    let text = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    if let Some(id) = text("id") {
        info.note_id(id);
    }
    if let Some(model) = text("model") {
        info.note_model(model);
    }
    if let Some(reason) = text("stop_reason") {
        info.push_finish_reason(reason);
    }
    let usage = value
        .get("usage")
        .map(|usage| convert::usage_from_anthropic(usage).0)
        .unwrap_or_default();
    Ok((usage, info))
}

/// Anthropic's name for a finish reason (`end_turn`, `max_tokens`...).
pub fn finish_reason_name(reason: crate::canon::FinishReason) -> &'static str {
    convert::finish_to_anthropic(reason)
}

/// Anthropic's error object, `{"type":"error","error":{"type","message"}}`.
/// The SDKs choose their exception class from the HTTP status.
pub fn error_body(kind: &str, message: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Inner<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: Inner<'a>,
    }
    serde_json::to_vec(&Envelope {
        kind: "error",
        error: Inner { kind, message },
    })
    .unwrap_or_default()
}

/// Anthropic's error `type` for an HTTP status.
pub fn error_kind(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        408 | 504 => "timeout_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}
