//! `GenerateContentRequest`: the body of `generateContent` and
//! `streamGenerateContent`, written from a `canon::ChatRequest`.
//!
//! System messages become `systemInstruction`; the rest become `contents`
//! with Gemini's two roles, `user` (users and tool results) and `model`,
//! consecutive messages of the same role merged into one `Content`, as
//! Gemini expects turns to alternate. Fields are written in a fixed order
//! and left out when empty, never sent as `null`.
//!
//! Thought signatures go back on the part they came with: a
//! `Part::Reasoning` with text is a thought part carrying its own
//! signature, while one with only a signature (see `response.rs`) puts it
//! on the next part of the same turn, or, if none follows, on an empty
//! text part.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::canon::{
    ChatRequest, Encoded, ImageSource, Part, Reasoning, ResponseFormat, Role, ToolChoice,
    Unsupported,
};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<WirePart<'a>>,
}

/// `systemInstruction` is a `Content` without a role.
#[derive(Serialize)]
struct SystemInstruction<'a> {
    parts: Vec<WirePart<'a>>,
}

/// One `Part`: exactly one of its data fields is set.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct WirePart<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inline_data: Option<Blob<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_data: Option<FileData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_response: Option<FunctionResponse<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: &'a str,
    data: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'static str>,
    file_uri: &'a str,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct FunctionResponse<'a> {
    name: &'a str,
    response: Map<String, Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireTool<'a> {
    function_declarations: Vec<FunctionDeclaration<'a>>,
}

/// The arguments' schema goes in `parametersJsonSchema`, which takes JSON
/// Schema as it is, rather than `parameters`, which takes Google's
/// OpenAPI-3.0 subset (`Schema`, upper-case `type` enums, no
/// `additionalProperties`, `$ref` or `$defs`) and would refuse many of the
/// schemas OpenAI and Anthropic clients send. The two are mutually
/// exclusive (Gemini API reference, `FunctionDeclaration`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionDeclaration<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: FunctionCallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FunctionCallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[&'a str; 1]>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    /// `responseJsonSchema` takes JSON Schema as it is; `responseSchema`
    /// takes the OpenAPI subset, as for tools above.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.stop_sequences.is_empty()
            && self.response_mime_type.is_none()
            && self.response_json_schema.is_none()
            && self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.top_k.is_none()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_budget: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    include_thoughts: Option<bool>,
}

/// The body for `POST .../models/{model}:generateContent` (and
/// `:streamGenerateContent?alt=sse`, which takes the same body), and the
/// parameters Gemini cannot honour, named as the client sent them:
///
/// - `parallel_tool_calls: false` (Gemini may always call several
///   functions at once; `true` is what it does anyway),
/// - `user` (Gemini has no end-user identifier),
/// - a reasoning effort without a token budget (`reasoning_effort`:
///   Gemini's `thinkingLevel` is for Gemini 3 models only, while every
///   thinking model takes `thinkingBudget`),
/// - a message's participant `name`,
/// - tool-call arguments that are not a JSON object
///   (`tool_calls.function.arguments`: Gemini's `args` is an object),
/// - a tool result whose call cannot be found (`tool_call_id`: Gemini
///   matches results to calls by function name),
/// - redacted reasoning (`redacted_thinking`), non-text system content
///   (`system`), and every field of `request.unmapped`.
///
/// Hints are dropped silently: prompt-cache markers (Gemini caches
/// implicitly), an image's `detail`, and a tool's or schema's `strict`.
pub fn encode_request(request: &ChatRequest) -> Encoded {
    let mut encoder = Encoder::default();
    for message in &request.messages {
        if message.name.is_some() {
            encoder.unsupported("name");
        }
        let role = match message.role {
            Role::System => {
                encoder.system(&message.parts);
                continue;
            }
            Role::Assistant => "model",
            Role::User | Role::Tool => "user",
        };
        for part in &message.parts {
            encoder.part(role, part);
        }
    }
    encoder.flush_signature();

    let mut generation_config = GenerationConfig {
        stop_sequences: &request.stop,
        max_output_tokens: request.max_tokens,
        temperature: request.temperature.filter(|value| value.is_finite()),
        top_p: request.top_p.filter(|value| value.is_finite()),
        top_k: request.top_k,
        seed: request.seed,
        presence_penalty: request.presence_penalty.filter(|value| value.is_finite()),
        frequency_penalty: request.frequency_penalty.filter(|value| value.is_finite()),
        thinking_config: request
            .reasoning
            .as_ref()
            .map(|reasoning| encoder.thinking(reasoning)),
        ..GenerationConfig::default()
    };
    match &request.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => {
            generation_config.response_mime_type = Some("application/json");
        }
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            generation_config.response_mime_type = Some("application/json");
            generation_config.response_json_schema = Some(schema);
        }
    }

    if request.parallel_tool_calls == Some(false) {
        encoder.unsupported("parallel_tool_calls");
    }
    if request.user.is_some() {
        encoder.unsupported("user");
    }
    for (name, _) in &request.unmapped {
        encoder.unsupported(name);
    }

    let tools = if request.tools.is_empty() {
        Vec::new()
    } else {
        vec![WireTool {
            function_declarations: request
                .tools
                .iter()
                .map(|tool| FunctionDeclaration {
                    name: &tool.name,
                    description: tool.description.as_deref(),
                    parameters_json_schema: Some(&tool.parameters)
                        .filter(|schema| !schema.is_null()),
                })
                .collect(),
        }]
    };
    let tool_config = request.tool_choice.as_ref().map(|choice| {
        let (mode, allowed) = match choice {
            ToolChoice::Auto => ("AUTO", None),
            ToolChoice::None => ("NONE", None),
            ToolChoice::Required => ("ANY", None),
            ToolChoice::Tool(name) => ("ANY", Some([name.as_str()])),
        };
        ToolConfig {
            function_calling_config: FunctionCallingConfig {
                mode,
                allowed_function_names: allowed,
            },
        }
    });

    let wire = WireRequest {
        contents: encoder.contents,
        system_instruction: (!encoder.system_parts.is_empty()).then_some(SystemInstruction {
            parts: encoder.system_parts,
        }),
        tools,
        tool_config,
        generation_config,
    };
    Encoded {
        body: serde_json::to_vec(&wire)
            .expect("serialising strings, numbers and JSON values cannot fail"),
        unsupported: encoder.unsupported,
    }
}

#[derive(Default)]
struct Encoder<'a> {
    contents: Vec<Content<'a>>,
    system_parts: Vec<WirePart<'a>>,
    /// Function names by call id, from the calls seen so far.
    call_names: HashMap<&'a str, &'a str>,
    /// A signature waiting for the next part of the current content.
    pending_signature: Option<&'a str>,
    unsupported: Vec<Unsupported>,
}

impl<'a> Encoder<'a> {
    fn unsupported(&mut self, name: &str) {
        if !self.unsupported.iter().any(|known| known.0 == name) {
            self.unsupported.push(Unsupported(name.to_owned()));
        }
    }

    fn system(&mut self, parts: &'a [Part]) {
        for part in parts {
            match part {
                Part::Text { text, .. } if text.is_empty() => {}
                Part::Text { text, .. } => self.system_parts.push(WirePart {
                    text: Some(text),
                    ..WirePart::default()
                }),
                _ => self.unsupported("system"),
            }
        }
    }

    fn part(&mut self, role: &'static str, part: &'a Part) {
        match part {
            Part::Text { text, .. } => {
                if !text.is_empty() {
                    self.push(
                        role,
                        WirePart {
                            text: Some(text),
                            ..WirePart::default()
                        },
                    );
                }
            }
            Part::Image { source, .. } => self.push(role, image(source)),
            Part::ToolCall {
                id,
                name,
                arguments,
                ..
            } => {
                self.call_names.insert(id, name);
                let args = match parse_object(arguments) {
                    Some(args) => Some(args),
                    None if arguments.trim().is_empty() => None,
                    None => {
                        self.unsupported("tool_calls.function.arguments");
                        None
                    }
                };
                self.push(
                    role,
                    WirePart {
                        function_call: Some(FunctionCall { name, args }),
                        ..WirePart::default()
                    },
                );
            }
            Part::ToolResult {
                call_id,
                name,
                content,
                is_error,
                ..
            } => self.tool_result(role, call_id, name.as_deref(), content, *is_error),
            Part::Reasoning { text, signature } => {
                if !text.is_empty() {
                    self.push(
                        role,
                        WirePart {
                            text: Some(text),
                            thought: Some(true),
                            thought_signature: signature.as_deref().filter(|sig| !sig.is_empty()),
                            ..WirePart::default()
                        },
                    );
                } else if let Some(signature) = signature.as_deref().filter(|sig| !sig.is_empty()) {
                    self.enter(role);
                    self.flush_signature();
                    self.pending_signature = Some(signature);
                }
            }
            Part::RedactedReasoning { .. } => self.unsupported("redacted_thinking"),
        }
    }

    /// A `functionResponse` part, then the result's images as parts of
    /// their own in the same turn: images inside `functionResponse.parts`
    /// are only understood by Gemini 3, plain parts by every model.
    fn tool_result(
        &mut self,
        role: &'static str,
        call_id: &'a str,
        name: Option<&'a str>,
        content: &'a [Part],
        is_error: bool,
    ) {
        let name = match name.or_else(|| self.call_names.get(call_id).copied()) {
            Some(name) => name,
            None => {
                // Gemini needs the function's name; the id is the best
                // guess left, and the caller is told.
                self.unsupported("tool_call_id");
                call_id
            }
        };
        let mut text = String::new();
        for part in content {
            if let Part::Text { text: piece, .. } = part {
                text.push_str(piece);
            }
        }
        // A result that is a JSON object is sent as that object. Other text
        // is wrapped: Gemini's `response` must be an object, and its
        // reference names `error` as the key for a failure's details.
        let response = parse_object(&text).unwrap_or_else(|| {
            let key = if is_error { "error" } else { "content" };
            Map::from_iter([(key.to_owned(), Value::String(text))])
        });
        self.push(
            role,
            WirePart {
                function_response: Some(FunctionResponse { name, response }),
                ..WirePart::default()
            },
        );
        for part in content {
            if let Part::Image { source, .. } = part {
                self.push(role, image(source));
            }
        }
    }

    /// Makes sure the last content has `role`, starting a new one if not.
    fn enter(&mut self, role: &'static str) {
        if self.contents.last().is_some_and(|last| last.role == role) {
            return;
        }
        self.flush_signature();
        self.contents.push(Content {
            role,
            parts: Vec::new(),
        });
    }

    fn push(&mut self, role: &'static str, mut part: WirePart<'a>) {
        self.enter(role);
        if part.thought_signature.is_none() {
            part.thought_signature = self.pending_signature.take();
        } else {
            self.flush_signature();
        }
        if let Some(content) = self.contents.last_mut() {
            content.parts.push(part);
        }
    }

    /// A signature nothing came after goes on an empty text part, which
    /// is how Gemini itself sends one at the end of an answer.
    fn flush_signature(&mut self) {
        if let Some(signature) = self.pending_signature.take()
            && let Some(content) = self.contents.last_mut()
        {
            content.parts.push(WirePart {
                text: Some(""),
                thought_signature: Some(signature),
                ..WirePart::default()
            });
        }
    }

    /// `thinkingBudget: 0` turns thinking off; otherwise thoughts are
    /// asked for, within the budget if there is one.
    fn thinking(&mut self, reasoning: &Reasoning) -> ThinkingConfig {
        if !reasoning.enabled {
            return ThinkingConfig {
                thinking_budget: Some(0),
                include_thoughts: None,
            };
        }
        if reasoning.budget_tokens.is_none() && reasoning.effort.is_some() {
            self.unsupported("reasoning_effort");
        }
        ThinkingConfig {
            thinking_budget: reasoning.budget_tokens,
            include_thoughts: Some(true),
        }
    }
}

fn image(source: &ImageSource) -> WirePart<'_> {
    match source {
        ImageSource::Base64 { media_type, data } => WirePart {
            inline_data: Some(Blob {
                mime_type: media_type,
                data,
            }),
            ..WirePart::default()
        },
        ImageSource::Url(url) => WirePart {
            file_data: Some(FileData {
                mime_type: guess_image_type(url),
                file_uri: url,
            }),
            ..WirePart::default()
        },
    }
}

/// Parses text that must be one JSON object.
fn parse_object(text: &str) -> Option<Map<String, Value>> {
    serde_json::from_str(text).ok()
}

/// The MIME type an image URL's extension names, when it is one of the
/// usual image formats.
fn guess_image_type(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let (_, extension) = file.rsplit_once('.')?;
    Some(match extension.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => return None,
    })
}
