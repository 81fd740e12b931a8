//! OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`,
//! written for clients and read, leniently, from upstreams.

use serde::Serialize;

/// An error as OpenAI's SDKs parse it. The SDKs choose their exception
/// class from the HTTP status; `type` and `code` let callers tell cases apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

impl ErrorBody<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: &'a ErrorBody<'a>,
        }
        serde_json::to_vec(&Envelope { error: self }).expect("serialising an error cannot fail")
    }
}

/// What could be read of an upstream's error body. OpenAI-compatible
/// servers differ: `{"error": {...}}`, `{"error": "text"}`, `{"message": ...}`
/// and `{"detail": ...}` are all seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamErrorBody {
    pub message: Option<String>,
    pub kind: Option<String>,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl UpstreamErrorBody {
    pub fn parse(body: &[u8]) -> UpstreamErrorBody {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
            return UpstreamErrorBody::default();
        };
        Self::from_value(&value)
    }

    pub fn from_value(value: &serde_json::Value) -> UpstreamErrorBody {
        let text = |value: Option<&serde_json::Value>| -> Option<String> {
            match value? {
                serde_json::Value::String(text) => Some(text.clone()),
                serde_json::Value::Number(number) => Some(number.to_string()),
                _ => None,
            }
        };
        let object = match value.get("error") {
            Some(serde_json::Value::String(message)) => {
                return UpstreamErrorBody {
                    message: Some(message.clone()),
                    ..UpstreamErrorBody::default()
                };
            }
            Some(inner @ serde_json::Value::Object(_)) => inner,
            _ => value,
        };
        UpstreamErrorBody {
            message: text(object.get("message")).or_else(|| text(object.get("detail"))),
            kind: text(object.get("type")),
            param: text(object.get("param")),
            code: text(object.get("code")),
        }
    }
}
