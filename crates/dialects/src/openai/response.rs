//! OpenAI response bodies: checked, and their token usage read, without
//! re-encoding them. The gateway relays the upstream's bytes; it only needs
//! to know that they are what they claim to be and what they cost, and,
//! read in the same pass, their id, model and finish reasons.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use switchboard_core::{ResponseInfo, Usage};

use super::UpstreamErrorBody;

/// An upstream answer that is not the OpenAI object it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidResponse(pub String);

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(wire: WireUsage) -> Usage {
        Usage {
            input_tokens: wire.prompt_tokens,
            output_tokens: wire.completion_tokens,
            cached_input_tokens: wire
                .prompt_tokens_details
                .and_then(|details| details.cached_tokens),
            reasoning_tokens: wire
                .completion_tokens_details
                .and_then(|details| details.reasoning_tokens),
            cache_write_tokens: None,
        }
    }
}

#[derive(Deserialize)]
struct CompletionCheck<'a> {
    /// Kept raw, and read only if it is a string: an odd id must not make
    /// an answer invalid.
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    choices: Vec<FinishCheck<'a>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct FinishCheck<'a> {
    #[serde(borrow)]
    finish_reason: Option<&'a RawValue>,
}

/// The text of a JSON string, or `None` for any other value.
pub fn json_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(plain) => Some(Cow::Borrowed(plain)),
        // Escapes inside: only an owned copy can hold it.
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

#[derive(Deserialize)]
struct EmbeddingsCheck {
    data: Vec<IgnoredAny>,
    usage: Option<WireUsage>,
}

/// The body as text, checked as UTF-8 once and whole: parsed from bytes,
/// serde_json checks each string it reads on its own (a sixth of the
/// check's cost) and not the strings it skips.
fn body_text<'b>(body: &'b [u8], what: &str) -> Result<&'b str, InvalidResponse> {
    std::str::from_utf8(body).map_err(|error| {
        InvalidResponse(format!(
            "the upstream's answer is not {what}: it is not UTF-8 (invalid byte at offset {})",
            error.valid_up_to()
        ))
    })
}

/// Checks a `chat.completion` body and reads its usage, id, model and
/// finish reasons.
pub fn check_completion(body: &[u8]) -> Result<(Usage, ResponseInfo), InvalidResponse> {
    let what = "a chat completion";
    let check: CompletionCheck = serde_json::from_str(body_text(body, what)?).map_err(|error| {
        InvalidResponse(format!("the upstream's answer is not {what}: {error}"))
    })?;
    let mut info = ResponseInfo::default();
    if let Some(id) = check.id.and_then(json_text) {
        info.note_id(&id);
    }
    if let Some(model) = check.model.and_then(json_text) {
        info.note_model(&model);
    }
    for choice in &check.choices {
        if let Some(reason) = choice.finish_reason.and_then(json_text) {
            info.push_finish_reason(&reason);
        }
    }
    Ok((check.usage.map(Usage::from).unwrap_or_default(), info))
}

/// Checks an embeddings `list` body and reads its usage.
pub fn check_embeddings(body: &[u8]) -> Result<Usage, InvalidResponse> {
    let what = "an embeddings list";
    let check: EmbeddingsCheck = serde_json::from_str(body_text(body, what)?).map_err(|error| {
        InvalidResponse(format!("the upstream's answer is not {what}: {error}"))
    })?;
    let _ = check.data;
    Ok(check.usage.map(Usage::from).unwrap_or_default())
}

#[derive(Deserialize)]
struct ChunkCheck<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    choices: Option<Vec<ChoiceCheck<'a>>>,
    usage: Option<WireUsage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceCheck<'a> {
    #[serde(borrow)]
    delta: Option<DeltaCheck<'a>>,
    #[serde(borrow)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DeltaCheck<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
}

/// A raw value that carries something: not null, not an empty string or array.
fn carries(value: Option<&RawValue>) -> bool {
    value.is_some_and(|value| !matches!(value.get(), "null" | "\"\"" | "[]"))
}

impl ChoiceCheck<'_> {
    fn has_content(&self) -> bool {
        carries(self.finish_reason)
            || self.delta.as_ref().is_some_and(|delta| {
                carries(delta.content)
                    || carries(delta.tool_calls)
                    || carries(delta.function_call)
                    || carries(delta.refusal)
            })
    }
}

/// What one streamed `chat.completion.chunk` holds.
#[derive(Debug, Default)]
pub struct ChunkInfo<'a> {
    /// The chunk's id and model, raw (read them with `json_text`, once per
    /// stream rather than once per chunk).
    pub id: Option<&'a RawValue>,
    pub model: Option<&'a RawValue>,
    /// The finish reasons this chunk carries (one per choice that ended).
    pub finish_reasons: Vec<&'a RawValue>,
    pub usage: Option<Usage>,
    /// The chunk carries usage and no choices: the final usage report.
    pub usage_only: bool,
    /// The upstream reported an error inside the stream.
    pub error: Option<UpstreamErrorBody>,
    /// The chunk carries part of the answer (text, a tool call, a refusal
    /// or a finish reason), not just the opening role.
    pub has_content: bool,
}

/// Reads one chunk's `data:` payload.
pub fn inspect_chunk(data: &str) -> Result<ChunkInfo<'_>, InvalidResponse> {
    let check: ChunkCheck = serde_json::from_str(data).map_err(|error| {
        InvalidResponse(format!(
            "the upstream sent a stream chunk that is not valid JSON: {error}"
        ))
    })?;
    if let Some(error) = check.error.filter(|error| !error.is_null()) {
        let wrapped = serde_json::json!({ "error": error });
        return Ok(ChunkInfo {
            error: Some(UpstreamErrorBody::from_value(&wrapped)),
            ..ChunkInfo::default()
        });
    }
    let choice_count = check.choices.as_ref().map_or(0, Vec::len);
    let has_content = check
        .choices
        .as_ref()
        .is_some_and(|choices| choices.iter().any(ChoiceCheck::has_content));
    let usage = check.usage.map(Usage::from);
    let finish_reasons = check
        .choices
        .iter()
        .flatten()
        .filter_map(|choice| choice.finish_reason.filter(|reason| carries(Some(*reason))))
        .collect();
    Ok(ChunkInfo {
        id: check.id,
        model: check.model,
        finish_reasons,
        usage_only: usage.is_some() && choice_count == 0,
        usage,
        error: None,
        has_content,
    })
}

/// Removes the top-level `"usage": null` member that OpenAI adds to every
/// chunk once usage was requested, so a client that did not ask receives
/// the chunk it would have received without the gateway. Returns `None`
/// when there is nothing to remove. Works on the text, so the rest of the
/// chunk keeps its bytes and order.
pub fn strip_null_usage(data: &str) -> Option<String> {
    let bytes = data.as_bytes();
    let skip_space = |mut index: usize| {
        while bytes.get(index).is_some_and(u8::is_ascii_whitespace) {
            index += 1;
        }
        index
    };
    let mut depth = 0usize;
    let mut in_string = false;
    // The `{` or `,` before the current top-level member.
    let mut member_start = 0usize;
    let mut index = 0usize;
    while index < bytes.len() {
        let byte = bytes[index];
        if in_string {
            match byte {
                b'\\' => index += 1,
                b'"' => in_string = false,
                _ => {}
            }
            index += 1;
            continue;
        }
        match byte {
            b'"' if depth == 1 && bytes[index..].starts_with(b"\"usage\"") => {
                let colon = skip_space(index + 7);
                if bytes.get(colon) == Some(&b':') {
                    let value = skip_space(colon + 1);
                    if bytes[value..].starts_with(b"null") {
                        let end = value + 4;
                        let mut stripped = String::with_capacity(data.len());
                        if bytes[member_start] == b',' {
                            stripped.push_str(&data[..member_start]);
                            stripped.push_str(&data[end..]);
                        } else {
                            // First member: take the comma that follows instead.
                            let mut after = skip_space(end);
                            if bytes.get(after) == Some(&b',') {
                                after = skip_space(after + 1);
                            }
                            stripped.push_str(&data[..=member_start]);
                            stripped.push_str(&data[after..]);
                        }
                        return Some(stripped);
                    }
                }
                in_string = true;
            }
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    member_start = index;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => member_start = index,
            _ => {}
        }
        index += 1;
    }
    None
}

/// Writes an embeddings `list` for an OpenAI client: the vectors as float
/// arrays, or, when the client asked for `encoding_format: "base64"`, as
/// base64 of their little-endian `f32` bytes.
pub fn embeddings_list(
    model: &str,
    vectors: &[Vec<f32>],
    base64: bool,
    prompt_tokens: Option<u64>,
) -> Vec<u8> {
    let data: Vec<serde_json::Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|value| value.to_le_bytes())
                    .collect();
                serde_json::json!(base64_encode(&bytes))
            } else {
                serde_json::json!(vector)
            };
            serde_json::json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens = prompt_tokens.unwrap_or(0);
    let body = serde_json::json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let triple = (group[0] as u32) << 16
            | (*group.get(1).unwrap_or(&0) as u32) << 8
            | *group.get(2).unwrap_or(&0) as u32;
        for position in 0..4 {
            if position <= group.len() {
                out.push(ALPHABET[(triple >> (18 - 6 * position) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod embeddings_tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn embeddings_lists_carry_every_vector_in_order() {
        let body = embeddings_list("m", &[vec![1.0, 0.5], vec![0.25]], false, Some(7));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["data"][1]["index"], 1);
        assert_eq!(value["data"][0]["embedding"], serde_json::json!([1.0, 0.5]));
        assert_eq!(value["usage"]["prompt_tokens"], 7);
        let encoded = embeddings_list("m", &[vec![1.0]], true, None);
        let value: serde_json::Value = serde_json::from_slice(&encoded).unwrap();
        assert_eq!(value["data"][0]["embedding"], "AACAPw==");
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    /// A body that is not UTF-8 is refused, wherever the bad byte is (in
    /// a string the check reads, or one it skips).
    #[test]
    fn answers_that_are_not_utf8_are_refused() {
        let good = br#"{"id":"x","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}"#;
        assert!(check_completion(good).is_ok());
        for (from, to) in [
            (b"\"x\"".as_slice(), b"\"\xff\"".as_slice()),
            (b"hi", b"h\xc3"),
        ] {
            let at = good.windows(from.len()).position(|w| w == from).unwrap();
            let mut bad = good[..at].to_vec();
            bad.extend_from_slice(to);
            bad.extend_from_slice(&good[at + from.len()..]);
            let error = check_completion(&bad).unwrap_err();
            assert!(error.0.contains("not UTF-8"), "{}", error.0);
        }
        let error = check_embeddings(b"{\"data\":[\"\xff\"]}").unwrap_err();
        assert!(error.0.contains("not an embeddings list"), "{}", error.0);
    }
}
