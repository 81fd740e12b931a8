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
use crate::scan::{Refused, Scan, once};

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
    text_of(raw.get())
}

/// The text of a JSON value known to be well formed, if it is a string.
fn text_of(text: &str) -> Option<Cow<'_, str>> {
    if !text.starts_with('"') {
        return None;
    }
    // Without escapes, the text between the quotes is the string.
    if !text.contains('\\') {
        return text.get(1..text.len() - 1).map(Cow::Borrowed);
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
    crate::utf8(body).map_err(|error| {
        InvalidResponse(format!(
            "the upstream's answer is not {what}: it is not UTF-8 (invalid byte at offset {})",
            error.valid_up_to()
        ))
    })
}

/// Checks a `chat.completion` body and reads its usage, id, model and
/// finish reasons: in one pass of `scan`, or, for a body it does not read
/// (malformed, or unusual), with serde_json, whose verdict stands.
pub fn check_completion(body: &[u8]) -> Result<(Usage, ResponseInfo), InvalidResponse> {
    let what = "a chat completion";
    let text = body_text(body, what)?;
    if let Ok(read) = scan_completion(text) {
        return Ok(read);
    }
    check_completion_with_serde(text)
}

/// A field that may appear once, of any kind: passed to `note` when it is
/// a string (`null` is not).
fn text_once(scan: &mut Scan<'_>, seen: &mut bool, note: impl FnOnce(&str)) -> Result<(), Refused> {
    once(seen)?;
    match scan.string_or_skip()? {
        Some((text, false)) => note(text),
        // Escaped: decoded as serde_json decodes it.
        Some((text, true)) => {
            if let Ok(decoded) = serde_json::from_str::<String>(&format!("\"{text}\"")) {
                note(&decoded);
            }
        }
        None => {}
    }
    Ok(())
}

/// `check_completion` in one pass of `scan`: the same fields, read as the
/// serde types below read them (a known field given twice refused, token
/// counts `null` or integers that fit a `u64`, `choices` required).
fn scan_completion(text: &str) -> Result<(Usage, ResponseInfo), Refused> {
    let mut scan = Scan::new(text);
    let mut info = ResponseInfo::default();
    let mut usage = Usage::default();
    let (mut id, mut model, mut choices, mut usage_seen) = (false, false, false, false);
    scan.object(|scan, key| match key {
        "id" => text_once(scan, &mut id, |value| info.note_id(value)),
        "model" => text_once(scan, &mut model, |value| info.note_model(value)),
        "choices" => {
            once(&mut choices)?;
            scan.array(|scan| {
                let mut finish = false;
                scan.object(|scan, key| {
                    if key != "finish_reason" {
                        return scan.skip();
                    }
                    text_once(scan, &mut finish, |reason| info.push_finish_reason(reason))
                })
            })
        }
        "usage" => {
            once(&mut usage_seen)?;
            if scan.null()? {
                return Ok(());
            }
            usage = scan_usage(scan)?;
            Ok(())
        }
        _ => scan.skip(),
    })?;
    if !choices {
        return Err(Refused);
    }
    scan.end()?;
    Ok((usage, info))
}

/// OpenAI's `usage` object, as `WireUsage` reads it.
fn scan_usage(scan: &mut Scan<'_>) -> Result<Usage, Refused> {
    let mut usage = Usage::default();
    let mut seen = [false; 4];
    scan.object(|scan, key| match key {
        "prompt_tokens" => {
            once(&mut seen[0])?;
            usage.input_tokens = scan.optional_u64()?;
            Ok(())
        }
        "completion_tokens" => {
            once(&mut seen[1])?;
            usage.output_tokens = scan.optional_u64()?;
            Ok(())
        }
        "prompt_tokens_details" => {
            once(&mut seen[2])?;
            usage.cached_input_tokens = scan_detail(scan, "cached_tokens")?;
            Ok(())
        }
        "completion_tokens_details" => {
            once(&mut seen[3])?;
            usage.reasoning_tokens = scan_detail(scan, "reasoning_tokens")?;
            Ok(())
        }
        _ => scan.skip(),
    })?;
    Ok(usage)
}

/// A details object of `usage` (or `null`), and its one count read.
fn scan_detail(scan: &mut Scan<'_>, field: &str) -> Result<Option<u64>, Refused> {
    if scan.null()? {
        return Ok(None);
    }
    let mut count = None;
    let mut seen = false;
    scan.object(|scan, key| {
        if key != field {
            return scan.skip();
        }
        once(&mut seen)?;
        count = scan.optional_u64()?;
        Ok(())
    })?;
    Ok(count)
}

/// `check_completion` with serde_json: the judge of what `scan_completion`
/// does not read, and the source of its error messages.
fn check_completion_with_serde(text: &str) -> Result<(Usage, ResponseInfo), InvalidResponse> {
    let what = "a chat completion";
    let check: CompletionCheck = serde_json::from_str(text).map_err(|error| {
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

/// The one-pass reading of completions against serde_json's: whatever
/// `scan_completion` accepts, serde_json accepts and reads alike, on
/// realistic answers, generated ones and mutated ones; and the answers
/// upstreams send take the one pass.
#[cfg(test)]
mod scan_tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::scan::edits::{apply, edits, json_text};

    const ANSWERS: [&str; 4] = [
        r#"{"id":"chatcmpl-mock0000000000000000","object":"chat.completion","created":1796011634,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! I am a mock assistant.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":27,"completion_tokens":28,"total_tokens":55,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_mock0001"}"#,
        r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": null,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris \\u00e9\"}"}}],
        "refusal": null,
        "annotations": []
      },
      "logprobs": {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": []}], "refusal": null},
      "finish_reason": "tool_calls"
    },
    {"index": 1, "message": {"role": "assistant", "content": "Ça va \ud83d\ude00"}, "finish_reason": "length"}
  ],
  "usage": {"prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 0}},
  "service_tier": "default"
}"#,
        r#"{"id":null,"model":7,"choices":[],"usage":null}"#,
        r#"{"choices":[{"finish_reason":null},{}],"usage":{"prompt_tokens":null,"prompt_tokens_details":null,"completion_tokens_details":{}}}"#,
    ];

    /// The reading to match, made apart from the code under test: serde's
    /// types, each string decoded by serde_json itself.
    fn serde(text: &str) -> Option<(Usage, ResponseInfo)> {
        let check: CompletionCheck = serde_json::from_str(text).ok()?;
        let decode = |raw: Option<&RawValue>| {
            raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        };
        let mut info = ResponseInfo::default();
        if let Some(id) = decode(check.id) {
            info.note_id(&id);
        }
        if let Some(model) = decode(check.model) {
            info.note_model(&model);
        }
        for choice in &check.choices {
            if let Some(reason) = decode(choice.finish_reason) {
                info.push_finish_reason(&reason);
            }
        }
        Some((check.usage.map(Usage::from).unwrap_or_default(), info))
    }

    /// What the one pass read, if it read the text, agrees with serde_json.
    fn agrees(text: &str) -> Result<bool, TestCaseError> {
        match scan_completion(text) {
            Ok(read) => {
                prop_assert_eq!(Some(read), serde(text), "{}", text);
                Ok(true)
            }
            Err(Refused) => Ok(false),
        }
    }

    #[test]
    fn answers_take_the_one_pass_and_read_as_serde_reads_them() {
        for answer in ANSWERS {
            assert!(agrees(answer).unwrap(), "{answer}");
        }
        let (usage, info) = scan_completion(ANSWERS[1]).unwrap();
        assert_eq!(usage.input_tokens, Some(1117));
        assert_eq!(usage.cached_input_tokens, Some(1024));
        assert_eq!(usage.reasoning_tokens, Some(12));
        assert_eq!(info.finish_reasons, ["tool_calls", "length"]);
        assert_eq!(info.model.as_deref(), Some("gpt-4o-2024-08-06"));
        // Refused by both: the one pass hands each over, and serde_json's
        // error stands.
        for bad in [
            r#"{"id":"a","id":"b","choices":[]}"#,
            r#"{"choices":[{"finish_reason":"stop","finish_reason":"x"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1.5}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":-1}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":18446744073709551616}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens_details":{"cached_tokens":"1"}}}"#,
            r#"{"choices":null}"#,
            r#"{"choices":[1]}"#,
            r#"{"id":"x"}"#,
            r#"{"choices":[]} x"#,
            r#"{"choices":[],"other":[1,]}"#,
            r#"{"model":"a","choices":[],"model":"b"}"#,
            r#"{"choices":[],"choices":[]}"#,
            r#"{"choices":[],"usage":null,"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            r#"{"choices":[],"usage":{"completion_tokens":1,"completion_tokens":null}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens_details":null,"prompt_tokens_details":{}}}"#,
            r#"{"choices":[],"usage":{"completion_tokens_details":{},"completion_tokens_details":{}}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":1}}}"#,
            r#"{"choices":[],"usage":{"completion_tokens_details":{"reasoning_tokens":0,"reasoning_tokens":0}}}"#,
        ] {
            assert_eq!(scan_completion(bad), Err(Refused), "{bad}");
            assert!(check_completion(bad.as_bytes()).is_err(), "{bad}");
        }
        // Read by serde_json, handed over by the one pass: a key with an
        // escape, a struct written as an array.
        for unusual in [
            r#"{"\u0069d":"x","choices":[]}"#,
            r#"{"choices":[["stop"]]}"#,
        ] {
            assert_eq!(scan_completion(unusual), Err(Refused), "{unusual}");
            assert!(check_completion(unusual.as_bytes()).is_ok(), "{unusual}");
        }
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(|n| json!(n)),
            (0u64..100).prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|n| json!(n)),
            "[a-z\\\\\"é\u{1}\u{1F600} ]{0,12}".prop_map(Value::String),
        ]
    }

    fn any_value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z_]{1,6}", inner), 0..4)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    /// Where the serde types read a struct: an object (of the keys they
    /// know, and others), `null`, or a scalar; never an array, which serde
    /// reads as a struct's fields in order and the one pass hands over.
    fn object_of(keys: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
        let members: Vec<BoxedStrategy<Option<(String, Value)>>> = keys
            .into_iter()
            .map(|(key, value)| {
                prop::option::of(value.prop_map(move |value| (key.to_owned(), value))).boxed()
            })
            .collect();
        prop_oneof![
            8 => (members, prop::collection::vec(("[a-z_]{1,8}", any_value()), 0..3)).prop_map(
                |(known, other)| {
                    let mut object = serde_json::Map::new();
                    for (key, value) in other {
                        object.insert(key, value);
                    }
                    for (key, value) in known.into_iter().flatten() {
                        object.insert(key, value);
                    }
                    Value::Object(object)
                }
            ),
            1 => scalar(),
        ]
        .boxed()
    }

    fn count() -> BoxedStrategy<Value> {
        scalar().boxed()
    }

    fn completion() -> impl Strategy<Value = Value> {
        let details = |key| object_of(vec![(key, count())]);
        let usage = object_of(vec![
            ("prompt_tokens", count()),
            ("completion_tokens", count()),
            ("prompt_tokens_details", details("cached_tokens")),
            ("completion_tokens_details", details("reasoning_tokens")),
        ]);
        let choice = object_of(vec![
            ("finish_reason", scalar().boxed()),
            ("message", any_value().boxed()),
        ]);
        object_of(vec![
            ("id", scalar().boxed()),
            ("model", any_value().boxed()),
            (
                "choices",
                prop_oneof![
                    4 => prop::collection::vec(choice, 0..3).prop_map(Value::Array),
                    1 => scalar(),
                ]
                .boxed(),
            ),
            ("usage", usage),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// A string's text, read without serde_json where it has no
        /// escapes, is what serde_json reads.
        #[test]
        fn string_values_read_alike(text in "\\PC{0,24}", padded in any::<bool>()) {
            let text = if padded { format!(" {text} ") } else { text };
            let json = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(text_of(&json).map(Cow::into_owned), Some(text));
        }

        /// Generated answers, all valid JSON: the one pass reads exactly
        /// those serde_json reads, and reads them alike.
        #[test]
        fn generated_answers_read_alike(answer in completion(), pretty in any::<bool>()) {
            let text = json_text(&answer, pretty);
            let read = agrees(&text)?;
            prop_assert_eq!(read, serde(&text).is_some(), "{}", text);
        }

        /// Answers with bytes changed, inserted or removed, or ranges
        /// copied: whatever the one pass reads, serde_json reads alike.
        #[test]
        fn mutated_answers_read_alike_or_are_handed_over(
            seed in 0..ANSWERS.len(),
            edits in edits(),
        ) {
            let bytes = apply(ANSWERS[seed], edits);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                agrees(text)?;
                // The whole check: serde_json's verdict wherever the one
                // pass did not read.
                prop_assert_eq!(check_completion(text.as_bytes()).ok(), serde(text));
            }
        }
    }
}
