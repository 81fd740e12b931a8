//! Gemini's error body, `{"error": {"code", "message", "status", "details"}}`
//! (Google's `google.rpc.Status`), read leniently into an `ErrorReport`.

use serde_json::Value;

use crate::canon::ErrorReport;

/// Reads an upstream error body. The canonical gRPC status name
/// (`INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`...) is both the report's `kind`
/// and its `code`, since it is what tells cases apart; the offending field,
/// when a `google.rpc.BadRequest` detail names one, becomes `param`.
///
/// Anything else (not JSON, another shape) gives what could be read, and
/// at worst an empty report: the HTTP status still says what happened.
pub fn parse_error(body: &[u8]) -> ErrorReport {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => report_from_value(&value),
        Err(_) => ErrorReport::default(),
    }
}

/// Reads a parsed error body; also used for errors inside a stream.
pub(super) fn report_from_value(value: &Value) -> ErrorReport {
    // `streamGenerateContent` without `alt=sse` answers with a JSON array,
    // errors included.
    let value = match value {
        Value::Array(items) => match items.first() {
            Some(first) => first,
            None => return ErrorReport::default(),
        },
        other => other,
    };
    match value.get("error") {
        Some(Value::Object(error)) => {
            let status = error
                .get("status")
                .and_then(Value::as_str)
                .filter(|status| !status.is_empty())
                .map(str::to_owned);
            ErrorReport {
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                kind: status.clone(),
                param: violated_field(error.get("details")),
                code: status,
            }
        }
        Some(Value::String(message)) => ErrorReport {
            message: Some(message.clone()),
            ..ErrorReport::default()
        },
        _ => ErrorReport::default(),
    }
}

/// The first field a `google.rpc.BadRequest` detail names.
fn violated_field(details: Option<&Value>) -> Option<String> {
    details?
        .as_array()?
        .iter()
        .filter(|detail| {
            detail
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|kind| kind.ends_with("google.rpc.BadRequest"))
        })
        .filter_map(|detail| detail.get("fieldViolations")?.as_array())
        .flatten()
        .find_map(|violation| violation.get("field")?.as_str().map(str::to_owned))
}
