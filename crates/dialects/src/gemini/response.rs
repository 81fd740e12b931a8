//! `GenerateContentResponse`: the answer of `generateContent` and each
//! chunk of `streamGenerateContent`, read into `canon`.
//!
//! Only the first candidate is read: the gateway never asks for more
//! (`candidateCount` is not sent). Parts the gateway does not model
//! (`executableCode`, `codeExecutionResult`, server-side tool calls; none of
//! which it enables) are skipped.
//!
//! A `thoughtSignature` on a thought part is that reasoning's signature. On
//! any other part (Gemini 3 puts one on the first function call of each
//! step, or on the last part of an answer) it becomes a
//! `Part::Reasoning` with empty text just before the part it came with, so
//! that a client which keeps reasoning parts sends it back, and
//! `encode_request` puts it back on the same part.

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Map, Value};
use switchboard_core::Usage;
use switchboard_core::mix::splitmix64;

use crate::canon::{ChatResponse, FinishReason, ImageSource, InvalidResponse, Part};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireResponse {
    pub candidates: Option<Vec<WireCandidate>>,
    pub prompt_feedback: Option<WirePromptFeedback>,
    pub usage_metadata: Option<WireUsage>,
    pub model_version: Option<String>,
    pub response_id: Option<String>,
    /// Set on error chunks inside a stream; kept raw for `parse_error`.
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireCandidate {
    pub content: Option<WireContent>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireContent {
    pub parts: Option<Vec<WirePart>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WirePart {
    pub text: Option<String>,
    pub thought: Option<bool>,
    pub thought_signature: Option<String>,
    pub function_call: Option<WireFunctionCall>,
    pub inline_data: Option<WireBlob>,
    pub file_data: Option<WireFileData>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WireFunctionCall {
    pub name: String,
    pub args: Option<Map<String, Value>>,
}

impl WireFunctionCall {
    /// The arguments as compact JSON text; `{}` when the call has none.
    pub fn arguments(&self) -> String {
        match &self.args {
            Some(args) => Value::Object(args.clone()).to_string(),
            None => "{}".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireBlob {
    pub mime_type: String,
    pub data: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireFileData {
    pub mime_type: Option<String>,
    pub file_uri: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WirePromptFeedback {
    pub block_reason: Option<String>,
}

impl WirePromptFeedback {
    /// The prompt was refused. `BLOCKED_REASON_UNSPECIFIED` is the proto
    /// default, which means unset.
    pub fn blocked(&self) -> bool {
        self.block_reason
            .as_deref()
            .is_some_and(|reason| reason != "BLOCKED_REASON_UNSPECIFIED")
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireUsage {
    pub prompt_token_count: Option<u64>,
    pub candidates_token_count: Option<u64>,
    pub cached_content_token_count: Option<u64>,
    pub thoughts_token_count: Option<u64>,
    pub tool_use_prompt_token_count: Option<u64>,
}

impl From<&WireUsage> for Usage {
    /// Gemini counts thoughts apart from the answer and the results of its
    /// own server-side tools apart from the prompt; `canon` counts every
    /// output token in `output_tokens` and every input token in
    /// `input_tokens`, so both are added back. `cachedContentTokenCount`
    /// is already part of `promptTokenCount`.
    fn from(wire: &WireUsage) -> Usage {
        Usage {
            input_tokens: add(wire.prompt_token_count, wire.tool_use_prompt_token_count),
            output_tokens: add(wire.candidates_token_count, wire.thoughts_token_count),
            cached_input_tokens: wire.cached_content_token_count,
            reasoning_tokens: wire.thoughts_token_count,
            cache_write_tokens: None,
        }
    }
}

/// The sum of the counts present; `None` when neither is.
fn add(first: Option<u64>, second: Option<u64>) -> Option<u64> {
    match (first, second) {
        (None, None) => None,
        (first, second) => Some(first.unwrap_or(0).saturating_add(second.unwrap_or(0))),
    }
}

impl WireResponse {
    pub fn first_candidate(&self) -> Option<&WireCandidate> {
        self.candidates.as_ref()?.first()
    }

    pub fn blocked(&self) -> bool {
        self.prompt_feedback
            .as_ref()
            .is_some_and(WirePromptFeedback::blocked)
    }
}

impl WireCandidate {
    pub fn parts(&self) -> &[WirePart] {
        self.content
            .as_ref()
            .and_then(|content| content.parts.as_deref())
            .unwrap_or_default()
    }

    /// The finish reason, if the candidate has one. `has_tool_calls` turns
    /// `STOP` into `ToolCalls`, since Gemini ends a turn of function calls
    /// with a plain `STOP`.
    pub fn finish(&self, has_tool_calls: bool) -> Option<FinishReason> {
        let reason = map_finish_reason(self.finish_reason.as_deref()?)?;
        Some(if reason == FinishReason::Stop && has_tool_calls {
            FinishReason::ToolCalls
        } else {
            reason
        })
    }
}

/// Gemini's `FinishReason` in `canon`'s terms.
///
/// - `STOP` ends the turn (Gemini does not say whether a stop sequence was
///   hit, so it is never `StopSequence`).
/// - `MAX_TOKENS` is `Length`.
/// - Every reason naming a safety, policy or recitation system (`SAFETY`,
///   `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`,
///   `IMAGE_SAFETY`, `IMAGE_PROHIBITED_CONTENT`, `IMAGE_RECITATION`) and
///   `LANGUAGE` (an unsupported language, which Gemini also reports as a
///   refusal to answer) is `ContentFilter`.
/// - `MALFORMED_FUNCTION_CALL`, `UNEXPECTED_TOOL_CALL` and
///   `TOO_MANY_TOOL_CALLS` end the turn without a usable call, so they are
///   `Stop`, not `ToolCalls`: a client told to run tools would find none.
/// - `OTHER`, `NO_IMAGE`, `IMAGE_OTHER` and reasons added after this was
///   written are `Stop`: the model ended, for a reason `canon` cannot name.
/// - `FINISH_REASON_UNSPECIFIED` is the proto default, which means unset.
fn map_finish_reason(reason: &str) -> Option<FinishReason> {
    Some(match reason {
        "FINISH_REASON_UNSPECIFIED" => return None,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "LANGUAGE" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    })
}

/// An id for an answer Gemini gave none: `gemini-` and a hash of the bytes,
/// so the same answer always gets the same id.
pub(super) fn fallback_id(bytes: &[u8]) -> String {
    // FNV-1a, then SplitMix64 to spread short inputs over all 64 bits.
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("gemini-{:016x}", splitmix64(hash))
}

/// Describes a deserialisation error with the JSON path where it happened.
pub(super) fn describe(error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    if path == "." {
        error.inner().to_string()
    } else {
        format!("at `{path}`: {}", error.inner())
    }
}

/// Reads `bytes` as a JSON object of type `T`, or says precisely why not
/// (`what` names the expected object). An array is refused before serde
/// sees it, because serde would read a struct from one positionally.
pub(super) fn parse_object<T: DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, InvalidResponse> {
    let first = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
    if first != Some(&b'{') {
        let reason = match serde_json::from_slice::<IgnoredAny>(bytes) {
            Ok(_) => "it is JSON but not an object".to_owned(),
            Err(error) => format!("it is not valid JSON: {error}"),
        };
        return Err(InvalidResponse(format!(
            "the upstream's answer is not a Gemini {what}: {reason}"
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        InvalidResponse(format!(
            "the upstream's answer is not a Gemini {what}: {}",
            describe(&error)
        ))
    })?;
    deserializer.end().map_err(|error| {
        InvalidResponse(format!(
            "the upstream's answer is not a Gemini {what}: {error}"
        ))
    })?;
    Ok(value)
}

/// Reads a `generateContent` answer.
///
/// The first candidate's parts become text, reasoning, image and tool-call
/// parts, in order; tool calls are numbered `call_0`, `call_1`... since
/// Gemini gives them no id. A prompt Gemini refused (no candidates, a
/// `promptFeedback.blockReason`) is an empty answer that finished with
/// `ContentFilter`. An object with neither candidates nor a block reason,
/// or an error object, is not an answer.
pub fn decode_response(body: &[u8]) -> Result<ChatResponse, InvalidResponse> {
    let response: WireResponse = parse_object(body, "GenerateContentResponse")?;
    if let Some(error) = &response.error {
        let report = super::error::report_from_value(&serde_json::json!({ "error": error }));
        return Err(InvalidResponse(format!(
            "the upstream answered with an error object: {}",
            report.message.as_deref().unwrap_or("(no message)")
        )));
    }
    let candidate = response.first_candidate();
    if candidate.is_none() && !response.blocked() {
        return Err(InvalidResponse(
            "the upstream's answer is not a Gemini GenerateContentResponse: \
             it has no candidates and no promptFeedback.blockReason"
                .to_owned(),
        ));
    }
    let mut parts = Vec::new();
    let mut call_count = 0usize;
    for part in candidate.map(WireCandidate::parts).unwrap_or_default() {
        read_part(part, &mut call_count, &mut parts);
    }
    let finish = match candidate {
        Some(candidate) => candidate.finish(call_count > 0),
        None => Some(FinishReason::ContentFilter),
    };
    Ok(ChatResponse {
        id: response
            .response_id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| fallback_id(body)),
        model: response.model_version.unwrap_or_default(),
        parts,
        finish,
        stop_sequence: None,
        usage: response
            .usage_metadata
            .as_ref()
            .map(Usage::from)
            .unwrap_or_default(),
        cache_write_tokens: None,
        created: None,
    })
}

/// Appends the `canon` parts one Gemini part stands for.
fn read_part(part: &WirePart, call_count: &mut usize, out: &mut Vec<Part>) {
    let signature = part.thought_signature.clone().filter(|sig| !sig.is_empty());
    if part.thought == Some(true) {
        let text = part.text.clone().unwrap_or_default();
        if !text.is_empty() || signature.is_some() {
            out.push(Part::Reasoning { text, signature });
        }
        return;
    }
    if let Some(signature) = signature {
        out.push(Part::Reasoning {
            text: String::new(),
            signature: Some(signature),
        });
    }
    if let Some(call) = &part.function_call {
        out.push(Part::ToolCall {
            id: format!("call_{call_count}"),
            name: call.name.clone(),
            arguments: call.arguments(),
            cache: None,
        });
        *call_count += 1;
    } else if let Some(text) = part.text.as_ref().filter(|text| !text.is_empty()) {
        out.push(Part::text(text.clone()));
    } else if let Some(blob) = part
        .inline_data
        .as_ref()
        .filter(|blob| is_image(&blob.mime_type))
    {
        out.push(Part::Image {
            source: ImageSource::Base64 {
                media_type: blob.mime_type.clone(),
                data: blob.data.clone(),
            },
            detail: None,
            cache: None,
        });
    } else if let Some(file) = part
        .file_data
        .as_ref()
        .filter(|file| file.mime_type.as_deref().is_none_or(is_image))
    {
        out.push(Part::Image {
            source: ImageSource::Url(file.file_uri.clone()),
            detail: None,
            cache: None,
        });
    }
}

/// `canon` models images only; audio or video an answer carries is skipped.
fn is_image(mime_type: &str) -> bool {
    mime_type.starts_with("image/")
}
