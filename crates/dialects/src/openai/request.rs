//! OpenAI request bodies, read as checked views over the client's bytes.
//!
//! A view keeps every top-level field as the raw JSON text the client sent,
//! in the client's order, and checks the fields the gateway relies on. When
//! the request goes to an OpenAI-compatible upstream, `encode` writes the
//! same fields back with only the model (and, for streams, the usage
//! option) replaced: fields the gateway does not model pass through
//! byte-for-byte, and nothing is decoded twice. The fields, and each
//! message's role and content, are read by `scan`, or, where it hands the
//! text over, by serde_json, whose verdict and error message stand.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::scan::{Refused, Scan, is_plain, once};

/// A request the gateway refuses, in terms the client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub message: String,
    /// The offending parameter, as OpenAI's `error.param` names it.
    pub param: Option<String>,
}

impl RequestError {
    pub fn new(message: impl Into<String>, param: Option<&str>) -> RequestError {
        RequestError {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }
}

/// A JSON value's text as the client sent it, checked well formed: what
/// serde_json's `RawValue` holds, borrowed from the request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    pub fn get(&self) -> &'a str {
        self.0
    }
}

impl<'a> From<&'a RawValue> for RawJson<'a> {
    fn from(raw: &'a RawValue) -> RawJson<'a> {
        RawJson(raw.get())
    }
}

/// The top-level fields of a JSON object, in order, each as raw JSON, and
/// the object's text as it came.
#[derive(Debug)]
pub struct RequestFields<'a> {
    fields: Vec<(Cow<'a, str>, RawJson<'a>)>,
    text: &'a str,
    /// Whether `text` may go upstream as it is (`with_model`): read by
    /// `scan`, so no key is written with escapes, which a server that does
    /// not decode them in keys would read otherwise than the gateway.
    verbatim: bool,
}

impl<'a> RequestFields<'a> {
    /// Parses a body that must be one JSON object with unique keys.
    pub fn parse(body: &'a [u8]) -> Result<RequestFields<'a>, RequestError> {
        let text = crate::utf8(body).map_err(|error| {
            RequestError::new(
                format!(
                    "the request body is not valid UTF-8 (invalid byte at offset {})",
                    error.valid_up_to()
                ),
                None,
            )
        })?;
        if text.trim().is_empty() {
            return Err(RequestError::new(
                "the request body is empty; send a JSON object",
                None,
            ));
        }
        let (fields, verbatim) = match scan_fields(text) {
            Ok(fields) => (fields, true),
            Err(_) => {
                let fields: Fields<'a> = serde_json::from_str(text).map_err(|error| {
                    RequestError::new(format!("the request body is not valid JSON: {error}"), None)
                })?;
                (fields.0, false)
            }
        };
        match case_variant(&fields) {
            None => {}
            Some((key, None)) => {
                return Err(RequestError::new(
                    format!(
                        "the request body has the field `{key}` beside another whose name \
                         differs from it only in letter case; servers that compare names without \
                         regard to case would read the two as one: send each field once"
                    ),
                    Some(key),
                ));
            }
            Some((key, Some(read))) => {
                return Err(RequestError::new(
                    format!(
                        "the request body has the field `{key}`, which differs from `{read}` \
                         only in letter case; servers that compare names without regard to case \
                         would read it as `{read}`, which the gateway reads for routing, limits \
                         and budgets: write it `{read}`"
                    ),
                    Some(key),
                ));
            }
        }
        Ok(RequestFields {
            fields,
            text,
            verbatim,
        })
    }

    /// The field names, in the client's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(key, _)| key.as_ref())
    }

    pub fn raw(&self, name: &str) -> Option<RawJson<'a>> {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    }

    /// Reads one field as `T`, treating JSON `null` as absent.
    pub fn get<T: FieldValue>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<Option<T>, RequestError> {
        match self.raw(name) {
            Some(raw) => read_field(name, raw, expected),
            None => Ok(None),
        }
    }

    /// The object with `model` (JSON text) as its model: as it came when
    /// its model is written so already and its keys without escapes (which
    /// saves writing it again, about 1,000 instructions for a short chat
    /// request; its keys are known unique, even without regard to case, so
    /// the upstream reads the fields the gateway read), else written again
    /// with that model.
    pub fn with_model(&self, model: &[u8]) -> Vec<u8> {
        match self.raw("model") {
            Some(raw) if self.verbatim && raw.get().as_bytes() == model => {
                self.text.as_bytes().to_vec()
            }
            _ => self.encode(&[("model", model)]),
        }
    }

    /// Writes the object back, replacing the values of the named fields
    /// and appending any replacement whose field was absent.
    pub fn encode(&self, replacements: &[(&str, &[u8])]) -> Vec<u8> {
        let size = self
            .fields
            .iter()
            .map(|(key, value)| key.len() + value.get().len() + 4)
            .sum::<usize>()
            + replacements
                .iter()
                .map(|(key, value)| key.len() + value.len() + 4)
                .sum::<usize>()
            + 2;
        let mut out = Vec::with_capacity(size);
        out.push(b'{');
        let mut first = true;
        let mut used = vec![false; replacements.len()];
        for (key, value) in &self.fields {
            let bytes = match replacements
                .iter()
                .position(|(name, _)| *name == key.as_ref())
            {
                Some(index) => {
                    used[index] = true;
                    replacements[index].1
                }
                None => value.get().as_bytes(),
            };
            write_member(&mut out, &mut first, key, bytes);
        }
        for ((key, value), used) in replacements.iter().zip(used) {
            if !used {
                write_member(&mut out, &mut first, key, value);
            }
        }
        out.push(b'}');
        out
    }
}

fn write_member(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &[u8]) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    // Keys are re-escaped rather than copied, which also normalises any
    // escape sequences the client used in them. A key with nothing to
    // escape is written as it is, as serde_json would write it.
    if is_plain(key) {
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, key).expect("writing a string to a Vec cannot fail");
    }
    out.push(b':');
    out.extend_from_slice(value);
}

/// What kind of JSON value a raw value is, for error messages that must not
/// echo large or sensitive contents back.
fn describe(raw: RawJson<'_>) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

struct Fields<'a>(Vec<(Cow<'a, str>, RawJson<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor(std::marker::PhantomData))
    }
}

struct FieldsVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
    type Value = Fields<'a>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
        let mut fields: Vec<(Cow<'a, str>, RawJson<'a>)> = Vec::with_capacity(16);
        let mut names = HashSet::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if given_before(&fields, &mut names, &key.0) {
                return Err(de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    key.0
                )));
            }
            let value: &'de RawValue = map.next_value()?;
            fields.push((key.0, value.into()));
        }
        Ok(Fields(fields))
    }
}

/// A key borrowed from the input when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(value.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Roles a chat message may have. Roles the gateway does not know (some
/// OpenAI-compatible servers add their own, such as `ipython`) are passed
/// through as `Other`; only the type (a string) is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
    #[serde(other)]
    Other,
}

impl Role {
    /// The role a (decoded) name stands for, as serde reads it: lowercase
    /// names exactly, anything else `Other`.
    fn named(name: &str) -> Role {
        match name {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            _ => Role::Other,
        }
    }
}

/// Reads one field's raw value as `T`, treating JSON `null` as absent.
fn read_field<T: FieldValue>(
    name: &str,
    raw: RawJson<'_>,
    expected: &str,
) -> Result<Option<T>, RequestError> {
    if raw.get() == "null" {
        return Ok(None);
    }
    if let Some(value) = T::quick(raw.get()) {
        return Ok(Some(value));
    }
    serde_json::from_str(raw.get()).map(Some).map_err(|_| {
        RequestError::new(
            format!("`{name}` must be {expected}, got {}", describe(raw)),
            Some(name),
        )
    })
}

/// The type of a field the gateway reads. `quick` reads the plainest
/// texts of the type without serde_json (a string without escapes, `true`
/// or `false`, a number of few digits and no exponent or sign), giving
/// exactly what serde_json would; for any other text it gives `None`, and
/// serde_json reads it and gives its verdict.
pub trait FieldValue: DeserializeOwned {
    fn quick(_text: &str) -> Option<Self> {
        None
    }
}

impl FieldValue for bool {
    fn quick(text: &str) -> Option<bool> {
        match text {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }
}

impl FieldValue for String {
    fn quick(text: &str) -> Option<String> {
        let inner = text.strip_prefix('"')?.strip_suffix('"')?;
        is_plain(inner).then(|| inner.to_owned())
    }
}

impl FieldValue for u32 {
    fn quick(text: &str) -> Option<u32> {
        u32::try_from(plain_digits(text)?).ok()
    }
}

impl FieldValue for i64 {
    fn quick(text: &str) -> Option<i64> {
        i64::try_from(plain_digits(text)?).ok()
    }
}

impl FieldValue for f64 {
    fn quick(text: &str) -> Option<f64> {
        // Powers of ten a double holds exactly.
        const POWERS: [f64; 16] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
        ];
        let (whole, fraction) = match text.split_once('.') {
            Some((whole, fraction)) => (whole, Some(fraction)),
            None => (text, None),
        };
        let whole = plain_digits(whole)?;
        let Some(fraction) = fraction else {
            // serde_json reads an integer as one and converts it so.
            return Some(whole as f64);
        };
        if fraction.is_empty()
            || text.len() > 16
            || !fraction.bytes().all(|byte| byte.is_ascii_digit())
        {
            return None;
        }
        // At most 15 digits in all: the significand is below 2^53 and the
        // divisor a power of ten held exactly, so the one division rounds
        // once, to the double nearest the decimal, as serde_json's reading
        // (float_roundtrip) does.
        let significand = fraction
            .bytes()
            .fold(whole, |value, digit| value * 10 + u64::from(digit - b'0'));
        Some(significand as f64 / POWERS[fraction.len()])
    }
}

impl FieldValue for Vec<String> {}
impl FieldValue for serde_json::Value {}
impl FieldValue for EmbeddingInput {}
impl FieldValue for StreamOptions {}

/// The value of a JSON number written as at most 18 digits, without sign,
/// fraction, exponent or leading zero.
fn plain_digits(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let plain = !bytes.is_empty()
        && bytes.len() <= 18
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes[0] != b'0' || bytes.len() == 1);
    plain.then(|| {
        bytes
            .iter()
            .fold(0, |value, digit| value * 10 + u64::from(digit - b'0'))
    })
}

/// What the gateway checks of each message: its role, and that its
/// content (if any) is a string or an array of typed parts.
#[derive(Deserialize)]
struct MessageCheck<'a> {
    role: Role,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartCheck<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
}

/// Whether, and how, the client asked for streamed usage.
#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// A checked `POST /v1/chat/completions` body.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    pub fields: RequestFields<'a>,
    pub model: String,
    pub stream: bool,
    /// The client itself asked for a usage chunk at the end of the stream.
    pub client_wants_usage: bool,
    /// `max_completion_tokens`, or the older `max_tokens`.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    /// `n`, the number of choices asked for.
    pub choices: Option<u32>,
    pub message_count: usize,
}

impl<'a> ChatRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<ChatRequest<'a>, RequestError> {
        let fields = RequestFields::parse(body)?;
        let model = required_model(&fields)?;
        let Some(messages) = fields.raw("messages") else {
            return Err(RequestError::new(
                "you must provide a `messages` parameter",
                Some("messages"),
            ));
        };
        let message_count = check_messages(messages)?;
        // One pass over the fields the client sent. The numeric and boolean
        // ones the gateway relies on are checked by name, so a wrong type is
        // refused with the parameter's name rather than passed upstream.
        let mut stream = false;
        let mut stream_options: Option<StreamOptions> = None;
        let mut max_completion_tokens = None;
        let mut max_tokens = None;
        let mut temperature = None;
        let mut choices = None;
        for (name, raw) in &fields.fields {
            let (name, raw) = (name.as_ref(), *raw);
            match name {
                "stream" => {
                    stream = read_field::<bool>(name, raw, "a boolean")?.unwrap_or(false);
                }
                "stream_options" => {
                    stream_options =
                        read_field(name, raw, "an object such as {\"include_usage\": true}")?;
                }
                "temperature" => temperature = read_field::<f64>(name, raw, "a number")?,
                "top_p" | "presence_penalty" | "frequency_penalty" => {
                    read_field::<f64>(name, raw, "a number")?;
                }
                "n" => choices = read_field::<u32>(name, raw, "a non-negative integer")?,
                "top_logprobs" => {
                    read_field::<u32>(name, raw, "a non-negative integer")?;
                }
                "max_tokens" => max_tokens = read_field(name, raw, "a non-negative integer")?,
                "max_completion_tokens" => {
                    max_completion_tokens = read_field(name, raw, "a non-negative integer")?;
                }
                "seed" => {
                    read_field::<i64>(name, raw, "an integer")?;
                }
                "user" => {
                    read_field::<String>(name, raw, "a string")?;
                }
                "stop" => check_stop(raw)?,
                _ => {}
            }
        }
        if stream_options.is_some() && !stream {
            return Err(RequestError::new(
                "`stream_options` is only allowed when `stream` is true",
                Some("stream_options"),
            ));
        }
        let max_tokens = max_completion_tokens.or(max_tokens);
        Ok(ChatRequest {
            client_wants_usage: stream_options.and_then(|options| options.include_usage)
                == Some(true),
            fields,
            model,
            stream,
            max_tokens,
            temperature,
            choices,
            message_count,
        })
    }

    /// The body for an OpenAI-compatible upstream: the client's own fields
    /// with the upstream model id, and, for a stream whose usage the gateway
    /// wants, `stream_options.include_usage` set. When neither changes
    /// anything (the client named the upstream's model, written as the
    /// gateway would write it), the client's body as it came
    /// (`RequestFields::with_model`).
    pub fn encode(&self, upstream_model: &str, request_stream_usage: bool) -> Vec<u8> {
        let model = json_string(upstream_model);
        if self.stream && request_stream_usage && !self.client_wants_usage {
            let options = self.stream_options_with_usage();
            self.fields
                .encode(&[("model", &model), ("stream_options", &options)])
        } else {
            self.fields.with_model(&model)
        }
    }

    /// The client's `stream_options` with `include_usage: true` added,
    /// keeping any other option it set.
    fn stream_options_with_usage(&self) -> Vec<u8> {
        match self.fields.raw("stream_options") {
            Some(raw) if raw.get().starts_with('{') => {
                match RequestFields::parse(raw.get().as_bytes()) {
                    Ok(options) => options.encode(&[("include_usage", b"true")]),
                    Err(_) => br#"{"include_usage":true}"#.to_vec(),
                }
            }
            _ => br#"{"include_usage":true}"#.to_vec(),
        }
    }
}

/// A checked `POST /v1/embeddings` body.
#[derive(Debug)]
pub struct EmbeddingsRequest<'a> {
    pub fields: RequestFields<'a>,
    pub model: String,
    pub input: EmbeddingInput,
    /// `base64` when the client asked for packed little-endian floats.
    pub base64: bool,
    pub dimensions: Option<u32>,
}

/// The `input` of an embeddings request: texts, or pre-tokenised arrays.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// The inputs, each as text (token arrays rendered as their numbers).
    pub fn items(&self) -> Vec<Cow<'_, str>> {
        match self {
            EmbeddingInput::Text(text) => vec![Cow::Borrowed(text.as_str())],
            EmbeddingInput::Texts(texts) => texts
                .iter()
                .map(|text| Cow::Borrowed(text.as_str()))
                .collect(),
            EmbeddingInput::Tokens(tokens) => vec![Cow::Owned(join_tokens(tokens))],
            EmbeddingInput::TokenLists(lists) => lists
                .iter()
                .map(|tokens| Cow::Owned(join_tokens(tokens)))
                .collect(),
        }
    }
}

fn join_tokens(tokens: &[u32]) -> String {
    tokens
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

impl<'a> EmbeddingsRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<EmbeddingsRequest<'a>, RequestError> {
        let fields = RequestFields::parse(body)?;
        let model = required_model(&fields)?;
        let input = fields
            .get::<EmbeddingInput>(
                "input",
                "a string, an array of strings, or an array of token arrays",
            )?
            .ok_or_else(|| {
                RequestError::new("you must provide an `input` parameter", Some("input"))
            })?;
        let empty = match &input {
            EmbeddingInput::Texts(texts) => texts.is_empty(),
            EmbeddingInput::Tokens(tokens) => tokens.is_empty(),
            EmbeddingInput::TokenLists(lists) => {
                lists.is_empty() || lists.iter().any(Vec::is_empty)
            }
            EmbeddingInput::Text(_) => false,
        };
        if empty {
            return Err(RequestError::new(
                "`input` must not be empty",
                Some("input"),
            ));
        }
        let base64 = match fields
            .get::<String>("encoding_format", "\"float\" or \"base64\"")?
            .as_deref()
        {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(RequestError::new(
                    format!(
                        "`encoding_format` must be \"float\" or \"base64\", got \"{}\"",
                        truncate(other, 40)
                    ),
                    Some("encoding_format"),
                ));
            }
        };
        let dimensions = fields.get::<u32>("dimensions", "a positive integer")?;
        if dimensions == Some(0) {
            return Err(RequestError::new(
                "`dimensions` must be at least 1",
                Some("dimensions"),
            ));
        }
        fields.get::<String>("user", "a string")?;
        Ok(EmbeddingsRequest {
            fields,
            model,
            input,
            base64,
            dimensions,
        })
    }

    pub fn encode(&self, upstream_model: &str) -> Vec<u8> {
        self.fields.with_model(&json_string(upstream_model))
    }
}

fn required_model(fields: &RequestFields<'_>) -> Result<String, RequestError> {
    match fields.get::<String>("model", "a string naming a model")? {
        Some(model) if !model.is_empty() => Ok(model),
        _ => Err(RequestError::new(
            "you must provide a model parameter",
            Some("model"),
        )),
    }
}

/// Names of fields that steer what the gateway does with a request (its
/// route, its reservation of tokens and cost, whether it streams, whose
/// end user it is), in every dialect `RequestFields` reads.
const STEERING_FIELDS: [&str; 8] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "user",
    "metadata",
];

/// A field whose name differs only in letter case from another field's
/// (`model` and `Model`: the name, and `None`), or, alone, from a field
/// the gateway steers by (`N` for `n`: the name, and the field's),
/// compared as Go's `encoding/json` compares names (ASCII case, and `ſ`
/// as `s`, the Kelvin sign as `k`). A server written so would read it
/// where the gateway reads the other, or nothing: a model smuggled past
/// routing, pricing and limits, or more choices or tokens than were
/// reserved. Only a body with a name holding a capital or a non-ASCII
/// character pays for more than a glance at each name.
fn case_variant<'f>(
    fields: &'f [(Cow<'_, str>, RawJson<'_>)],
) -> Option<(&'f str, Option<&'static str>)> {
    if fields.iter().all(|(key, _)| plain_name(key.as_bytes())) {
        return None;
    }
    let fold = |key: &str| -> String {
        key.chars()
            .map(|character| match character {
                '\u{17f}' => 's',
                '\u{212a}' => 'k',
                other => other.to_ascii_lowercase(),
            })
            .collect()
    };
    let mut seen = HashSet::with_capacity(fields.len());
    for (key, _) in fields {
        let folded = fold(key);
        if folded != key.as_ref()
            && let Some(read) = STEERING_FIELDS.iter().find(|read| **read == folded)
        {
            return Some((key.as_ref(), Some(*read)));
        }
        if !seen.insert(folded) {
            return Some((key.as_ref(), None));
        }
    }
    None
}

/// Whether `name` has no capital and no byte past ASCII: eight bytes at a
/// time (one by one it was about 400 instructions for a chat request's
/// four names).
fn plain_name(name: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Per byte below 0x80: its high bit set once it is at least `A`
    // (0x41), and once it is past `Z` (0x5a). No carry crosses a byte
    // then; a byte of 0x80 or more marks the word odd by itself.
    let odd = |word: u64| {
        let at_least_a = word.wrapping_add(0x3f3f_3f3f_3f3f_3f3f);
        let past_z = word.wrapping_add(0x2525_2525_2525_2525);
        (word | (at_least_a & !past_z)) & HIGH != 0
    };
    let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap_or_default());
    if name.len() < 8 {
        // Most names: gathered into a word a byte at a time (a copy of
        // unknown length is a call to `memcpy`).
        return !odd(name
            .iter()
            .fold(0, |word, &byte| (word << 8) | u64::from(byte)));
    }
    // Whole words, then the last eight bytes (which may overlap them).
    name.chunks_exact(8).all(|chunk| !odd(word(chunk))) && !odd(word(&name[name.len() - 8..]))
}

/// Fields compared one by one before a name is looked up in a set.
const FEW_FIELDS: usize = 16;

/// Whether `key` names one of `fields` already: looked for among them
/// while they are few, then in `names`, a set of them all made when they
/// reach `FEW_FIELDS` (a body of many thousands of fields must not cost
/// the square of their number). `names` must be empty at first, and kept
/// between the calls for one object, each field pushed after its call.
// The set keeps the key as it is, borrowed or owned: a `&str` could not.
#[allow(clippy::ptr_arg)]
fn given_before<'a>(
    fields: &[(Cow<'a, str>, RawJson<'a>)],
    names: &mut HashSet<Cow<'a, str>>,
    key: &Cow<'a, str>,
) -> bool {
    if fields.len() < FEW_FIELDS {
        return fields.iter().any(|(name, _)| name == key);
    }
    if names.is_empty() {
        names.extend(fields.iter().map(|(name, _)| name.clone()));
    }
    !names.insert(key.clone())
}

/// The top-level fields of a JSON object, read by `scan`, or
/// `Refused` for text it does not read (malformed, or a key with escapes),
/// which serde_json reads again and judges.
fn scan_fields(text: &str) -> Result<Vec<(Cow<'_, str>, RawJson<'_>)>, Refused> {
    let mut scan = Scan::new(text);
    let mut fields: Vec<(Cow<'_, str>, RawJson<'_>)> = Vec::with_capacity(16);
    let mut names = HashSet::new();
    scan.object(|scan, key| {
        let key = Cow::Borrowed(key);
        // serde_json's reading refuses a key given twice (`Fields`).
        if given_before(&fields, &mut names, &key) {
            return Err(Refused);
        }
        fields.push((key, RawJson(scan.raw()?)));
        Ok(())
    })?;
    scan.end()?;
    Ok(fields)
}

/// Each message's role and content (`None` when absent or `null`) in one
/// pass of `scan`, handed to `each` in order as `MessageCheck` reads them,
/// and their number; or `Refused` for text it does not read (a role with
/// escapes, a field given twice, a message written as an array...), which
/// serde_json reads again and judges.
fn scan_each_message<'t>(
    text: &'t str,
    mut each: impl FnMut(usize, Role, Option<RawJson<'t>>),
) -> Result<usize, Refused> {
    let mut scan = Scan::new(text);
    let mut count = 0;
    scan.array(|scan| {
        let (mut role, mut content, mut content_seen) = (None, None, false);
        scan.object(|scan, key| match key {
            "role" => match scan.string_or_skip()? {
                Some((name, false)) if role.is_none() => {
                    role = Some(Role::named(name));
                    Ok(())
                }
                _ => Err(Refused),
            },
            "content" => {
                once(&mut content_seen)?;
                if !scan.null()? {
                    content = Some(RawJson(scan.raw()?));
                }
                Ok(())
            }
            _ => scan.skip(),
        })?;
        each(count, role.ok_or(Refused)?, content);
        count += 1;
        Ok(())
    })?;
    scan.end()?;
    Ok(count)
}

/// The messages `scan_each_message` reads, gathered.
#[cfg(test)]
fn scan_messages(text: &str) -> Result<Vec<(Role, Option<RawJson<'_>>)>, Refused> {
    let mut messages = Vec::new();
    scan_each_message(text, |_, role, content| messages.push((role, content)))?;
    Ok(messages)
}

fn check_messages(raw: RawJson<'_>) -> Result<usize, RequestError> {
    if !raw.get().starts_with('[') {
        return Err(RequestError::new(
            format!(
                "`messages` must be an array of message objects, got {}",
                describe(raw)
            ),
            Some("messages"),
        ));
    }
    // Read plainly, each message checked as it is read (the first fault
    // kept, and given only if the whole list was read); only a list that
    // the scan hands over is read again, tracking the path to say where
    // (tracking every value cost 2% of a proxied request).
    let mut fault = None;
    let count = match scan_each_message(raw.get(), |index, role, content| {
        if fault.is_none() {
            fault = check_message(index, role, content).err();
        }
    }) {
        Ok(count) => count,
        Err(Refused) => {
            let messages = serde_json::from_str::<Vec<MessageCheck<'_>>>(raw.get())
                .map_err(|_| messages_error(raw))?;
            fault = None;
            for (index, message) in messages.iter().enumerate() {
                if let Err(error) =
                    check_message(index, message.role, message.content.map(RawJson::from))
                {
                    fault = Some(error);
                    break;
                }
            }
            messages.len()
        }
    };
    if count == 0 {
        return Err(RequestError::new(
            "`messages` must contain at least one message",
            Some("messages"),
        ));
    }
    fault.map_or(Ok(count), Err)
}

/// One message's content, checked for its role: required for a tool
/// message; a string or an array of parts, each with a `type`.
fn check_message(
    index: usize,
    role: Role,
    content: Option<RawJson<'_>>,
) -> Result<(), RequestError> {
    // Named only when something is wrong with it.
    let param = || format!("messages[{index}].content");
    // serde reads a JSON `null` as `None`: absent and null alike.
    let content = match content {
        Some(content) => content,
        None if role == Role::Tool => {
            let param = param();
            return Err(RequestError::new(
                format!("`{param}` is required for tool messages"),
                Some(&param),
            ));
        }
        None => return Ok(()),
    };
    let text = content.get();
    match text.as_bytes().first() {
        Some(b'"') => {}
        Some(b'[') => {
            let parts: Vec<PartCheck<'_>> = serde_json::from_str(text).map_err(|_| {
                let param = param();
                RequestError::new(
                    format!("`{param}` must be a string or an array of parts, each an object with a `type`"),
                    Some(&param),
                )
            })?;
            if parts.iter().any(|part| part.kind.is_empty()) {
                let param = param();
                return Err(RequestError::new(
                    format!("every part of `{param}` needs a `type`"),
                    Some(&param),
                ));
            }
        }
        _ => {
            let param = param();
            return Err(RequestError::new(
                format!(
                    "`{param}` must be a string or an array of parts, got {}",
                    describe(content)
                ),
                Some(&param),
            ));
        }
    }
    Ok(())
}

/// Why `messages` is not a list of messages, and where in it.
fn messages_error(raw: RawJson<'_>) -> RequestError {
    let deserializer = &mut serde_json::Deserializer::from_str(raw.get());
    let error = match serde_path_to_error::deserialize::<_, Vec<MessageCheck<'_>>>(deserializer) {
        Err(error) => error,
        Ok(_) => return RequestError::new("invalid `messages`", Some("messages")),
    };
    let path = error.path().to_string();
    let param = format!(
        "messages{}",
        if path == "." {
            String::new()
        } else {
            bracket_path(&path)
        }
    );
    RequestError::new(
        format!(
            "invalid `{param}`: {}",
            without_position(&error.inner().to_string())
        ),
        Some(&param),
    )
}

/// serde_path_to_error writes `[2].role`; OpenAI writes `messages[2].role`.
fn bracket_path(path: &str) -> String {
    path.split('.')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            if segment.starts_with('[') {
                segment.to_owned()
            } else {
                format!(".{segment}")
            }
        })
        .collect()
}

/// serde_json ends its messages with a position inside the fragment it
/// was given, which would mislead about the client's whole body.
fn without_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(index) => &message[..index],
        None => message,
    }
}

fn check_stop(raw: RawJson<'_>) -> Result<(), RequestError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stop {
        One(#[allow(dead_code)] String),
        Many(#[allow(dead_code)] Vec<String>),
    }
    impl FieldValue for Stop {}
    read_field::<Stop>("stop", raw, "a string or an array of strings")?;
    Ok(())
}

fn json_string(text: &str) -> Vec<u8> {
    serde_json::to_vec(text).expect("serialising a string cannot fail")
}

fn truncate(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

#[cfg(test)]
mod scan_tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn a_plain_name_has_no_capital_and_nothing_past_ascii() {
        for length in [1, 7, 8, 9, 16, 21] {
            for at in 0..length {
                for byte in 0..=u8::MAX {
                    let mut name = vec![b'a'; length];
                    name[at] = byte;
                    assert_eq!(
                        plain_name(&name),
                        !byte.is_ascii_uppercase() && byte.is_ascii(),
                        "byte {byte:#04x} at {at} of {length}"
                    );
                }
            }
        }
        assert!(plain_name(b""));
        assert!(plain_name(b"max_completion_tokens"));
    }
    use crate::scan::edits::{apply, edits, json_text};

    /// The fields as serde_json reads them (`Fields`), apart from the code
    /// under test.
    fn serde_fields(text: &str) -> Option<Vec<(String, String)>> {
        let fields: Fields<'_> = serde_json::from_str(text).ok()?;
        Some(owned_fields(fields.0))
    }

    fn owned_fields(fields: Vec<(Cow<'_, str>, RawJson<'_>)>) -> Vec<(String, String)> {
        fields
            .into_iter()
            .map(|(key, value)| (key.into_owned(), value.get().to_owned()))
            .collect()
    }

    /// The messages as serde reads them (`MessageCheck`).
    fn serde_messages(text: &str) -> Option<Vec<(Role, Option<String>)>> {
        let messages: Vec<MessageCheck<'_>> = serde_json::from_str(text).ok()?;
        Some(
            messages
                .into_iter()
                .map(|message| {
                    (
                        message.role,
                        message.content.map(|raw| raw.get().to_owned()),
                    )
                })
                .collect(),
        )
    }

    fn owned_messages(messages: Vec<(Role, Option<RawJson<'_>>)>) -> Vec<(Role, Option<String>)> {
        messages
            .into_iter()
            .map(|(role, content)| (role, content.map(|raw| raw.get().to_owned())))
            .collect()
    }

    /// What the scanner read, if it read the text, serde_json reads alike;
    /// whether it read it.
    fn agrees(text: &str) -> Result<bool, TestCaseError> {
        let mut read = false;
        if let Ok(fields) = scan_fields(text) {
            prop_assert_eq!(Some(owned_fields(fields)), serde_fields(text), "{}", text);
            read = true;
        }
        if let Ok(messages) = scan_messages(text) {
            prop_assert_eq!(
                Some(owned_messages(messages)),
                serde_messages(text),
                "{}",
                text
            );
            read = true;
        }
        Ok(read)
    }

    const BODIES: &[&str] = &[
        r#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"Say something short."}],"max_tokens":16}"#,
        r#" { "model" : "m" , "stream" : true , "stream_options" : { "include_usage" : true } ,
            "messages" : [ { "role" : "system" , "content" : "Be brief. \"Quoted\" \u00e9" } ,
            { "role" : "user" , "name" : "ann" , "content" : [ { "type" : "text" , "text" : "hi" } ] } ] } "#,
        r#"{"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"42"},{"role":"ipython","content":"x"}],"model":"m","stop":["a","b"],"n":2}"#,
    ];

    #[test]
    fn requests_take_the_one_pass_and_read_as_serde_reads_them() {
        for body in BODIES {
            let fields = scan_fields(body).expect(body);
            assert_eq!(Some(owned_fields(fields)), serde_fields(body), "{body}");
            let messages = RequestFields::parse(body.as_bytes())
                .unwrap()
                .raw("messages")
                .unwrap()
                .get();
            let scanned = scan_messages(messages).expect(messages);
            assert_eq!(
                Some(owned_messages(scanned)),
                serde_messages(messages),
                "{messages}"
            );
        }
        let messages = r#"[{"role":"developer","content":"a"},{"role":"function","content":{"x":1}},{"content":"c","role":"User"}]"#;
        assert_eq!(
            owned_messages(scan_messages(messages).unwrap()),
            [
                (Role::Developer, Some("\"a\"".to_owned())),
                (Role::Function, Some("{\"x\":1}".to_owned())),
                (Role::Other, Some("\"c\"".to_owned())),
            ]
        );
        // Handed over to serde_json, whose verdict stands: a key with an
        // escape (read alike), a key given twice (refused).
        let escaped = r#"{"mod\u0065l":"m","messages":[]}"#;
        assert_eq!(scan_fields(escaped), Err(Refused));
        assert_eq!(
            RequestFields::parse(escaped.as_bytes())
                .unwrap()
                .raw("model")
                .unwrap()
                .get(),
            "\"m\""
        );
        let twice = r#"{"model":"a","model":"b"}"#;
        assert_eq!(scan_fields(twice), Err(Refused));
        let error = RequestFields::parse(twice.as_bytes()).unwrap_err();
        assert!(
            error.message.contains("duplicate field `model`"),
            "{}",
            error.message
        );
        for messages in [
            r#"[{"role":"us\u0065r","content":"a"}]"#,
            r#"[{"role":"user","role":"user","content":"a"}]"#,
            r#"[{"role":"user","content":"a","content":null}]"#,
            r#"[{"content":"a"}]"#,
            r#"[{"role":null,"content":"a"}]"#,
            r#"[["user","a"]]"#,
            r#"[{"role":"user","content":"a"},]"#,
        ] {
            assert_eq!(scan_messages(messages), Err(Refused), "{messages}");
        }
        // serde reads an escaped role and a message written as an array;
        // the rest it refuses, with the path to the fault.
        assert!(check_messages(RawJson(r#"[{"role":"us\u0065r","content":"a"}]"#)).is_ok());
        assert!(check_messages(RawJson(r#"[["user","a"]]"#)).is_ok());
        for refused in [
            r#"[{"role":"user","role":"user","content":"a"}]"#,
            r#"[{"role":"user","content":"a","content":null}]"#,
            r#"[{"content":"a"}]"#,
            r#"[{"role":null,"content":"a"}]"#,
            r#"[{"role":"user","content":"a"},]"#,
        ] {
            assert!(check_messages(RawJson(refused)).is_err(), "{refused}");
        }
        let error = check_messages(RawJson(
            r#"[{"role":"user","content":"a"},{"content":"b"}]"#,
        ))
        .unwrap_err();
        assert_eq!(
            error.param.as_deref(),
            Some("messages[1]"),
            "{}",
            error.message
        );
    }

    /// A name given twice is refused however many fields come before it,
    /// by the scanner (which hands the body over) and by serde_json (which
    /// names it), past the fields compared one by one as well as among
    /// them; as many distinct names are all kept.
    #[test]
    fn a_field_given_twice_is_refused_among_many() {
        for count in [3, FEW_FIELDS - 1, FEW_FIELDS, FEW_FIELDS + 1, 40, 1_000] {
            let names: Vec<String> = (0..count).map(|n| format!("f{n}")).collect();
            let members = |names: &[String]| {
                names
                    .iter()
                    .map(|name| format!("\"{name}\":1"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let distinct = format!("{{{}}}", members(&names));
            assert_eq!(scan_fields(&distinct).map(|fields| fields.len()), Ok(count));
            // The same through serde_json: an escaped key (`\u0066` is
            // `f`) hands it over.
            let escaped = distinct.replacen(r#""f0""#, r#""\u00660""#, 1);
            assert_eq!(scan_fields(&escaped), Err(Refused));
            assert_eq!(
                RequestFields::parse(escaped.as_bytes())
                    .unwrap()
                    .names()
                    .count(),
                count
            );
            for (first, again) in [(0, count - 1), (count - 1, count - 1), (count / 2, 0)] {
                let mut twice = names.clone();
                twice.insert(again + 1, names[first].clone());
                let text = format!("{{{}}}", members(&twice));
                assert_eq!(scan_fields(&text), Err(Refused), "{count} {first}");
                let error = RequestFields::parse(text.as_bytes()).unwrap_err();
                assert!(
                    error
                        .message
                        .contains(&format!("duplicate field `{}`", names[first])),
                    "{count} {first}: {}",
                    error.message
                );
            }
        }
    }

    fn role() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec![
                "system",
                "developer",
                "user",
                "assistant",
                "tool",
                "function",
                "User",
                "ipython",
                "",
            ])
            .prop_map(|name| json!(name)),
            "[a-z\"\\\\é]{0,6}".prop_map(Value::String),
            Just(Value::Null),
            Just(json!(1)),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let scalar = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (-1e6f64..1e6).prop_map(|n| json!(n)),
            "[a-z\\\\\"é\u{1}\u{1F600} ]{0,20}".prop_map(Value::String),
        ];
        scalar.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-z_\"]{1,6}", inner), 0..4)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    fn message() -> impl Strategy<Value = Value> {
        (
            prop::option::of(role()),
            prop::option::of(value()),
            prop::collection::vec(("[a-z_]{1,8}", value()), 0..3),
        )
            .prop_map(|(role, content, other)| {
                let mut object: serde_json::Map<String, Value> = other.into_iter().collect();
                if let Some(role) = role {
                    object.insert("role".to_owned(), role);
                }
                if let Some(content) = content {
                    object.insert("content".to_owned(), content);
                }
                Value::Object(object)
            })
    }

    fn body() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(message(), 0..4),
            prop::collection::vec(("[a-z_\\\\]{1,10}", value()), 0..5),
        )
            .prop_map(|(messages, other)| {
                let mut object: serde_json::Map<String, Value> = other.into_iter().collect();
                object.insert("messages".to_owned(), Value::Array(messages));
                Value::Object(object)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Generated bodies, all valid JSON: the scanner reads the fields
        /// of every one whose keys have no escapes, and the messages of
        /// every list of objects with a plain string role, and reads them
        /// as serde_json does.
        #[test]
        fn generated_requests_read_alike(body in body(), pretty in any::<bool>()) {
            let text = json_text(&body, pretty);
            agrees(&text)?;
            let keys_plain = body.as_object().unwrap().keys().all(|key| !key.contains(['"', '\\']));
            prop_assert_eq!(scan_fields(&text).is_ok(), keys_plain, "{}", text);
            let messages = serde_json::to_string(&body["messages"]).unwrap();
            agrees(&messages)?;
            let roles_plain = body["messages"].as_array().unwrap().iter().all(|message| {
                message.as_object().is_some_and(|message| {
                    message.keys().all(|key| !key.contains(['"', '\\']))
                        && message.get("role").and_then(Value::as_str).is_some_and(|role| !role.contains(['"', '\\']))
                })
            });
            prop_assert_eq!(scan_messages(&messages).is_ok(), roles_plain, "{}", messages);
        }

        /// Bodies with bytes changed, inserted or removed, or ranges
        /// copied (fields and messages given twice): whatever the scanner
        /// reads, serde_json reads alike.
        #[test]
        fn mutated_requests_read_alike_or_are_handed_over(
            seed in 0..BODIES.len(),
            messages_only in any::<bool>(),
            edits in edits(),
        ) {
            let body = BODIES[seed];
            let text = if messages_only {
                RequestFields::parse(body.as_bytes()).unwrap().raw("messages").unwrap().get()
            } else {
                body
            };
            let bytes = apply(text, edits);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                agrees(text)?;
            }
        }
    }
}

#[cfg(test)]
mod quick_tests {
    use proptest::prelude::*;

    use super::*;

    /// What `quick` reads it reads as serde_json does (to the bit, for a
    /// double), and it reads only what serde_json reads; `Some` when it
    /// read the text.
    fn agrees<T: FieldValue + PartialEq + fmt::Debug>(
        text: &str,
        same: impl Fn(&T, &T) -> bool,
    ) -> Result<bool, TestCaseError> {
        let Some(quick) = T::quick(text) else {
            return Ok(false);
        };
        match serde_json::from_str::<T>(text) {
            Ok(serde) => prop_assert!(same(&quick, &serde), "{text}: {quick:?} against {serde:?}"),
            Err(error) => {
                prop_assert!(false, "{text}: read {quick:?}, serde_json refused: {error}")
            }
        }
        Ok(true)
    }

    fn all_agree(text: &str) -> Result<u32, TestCaseError> {
        let read = [
            agrees::<f64>(text, |a, b| a.to_bits() == b.to_bits())?,
            agrees::<u32>(text, PartialEq::eq)?,
            agrees::<i64>(text, PartialEq::eq)?,
            agrees::<bool>(text, PartialEq::eq)?,
            agrees::<String>(text, PartialEq::eq)?,
        ];
        Ok(read.into_iter().map(u32::from).sum())
    }

    #[test]
    fn plain_values_are_read_quickly_and_others_handed_over() {
        assert_eq!(f64::quick("0"), Some(0.0));
        assert_eq!(f64::quick("0.7"), Some(0.7));
        assert_eq!(f64::quick("12.5"), Some(12.5));
        assert_eq!(f64::quick("123456789012345678"), Some(123456789012345678.0));
        assert_eq!(u32::quick("16"), Some(16));
        assert_eq!(u32::quick("4294967295"), Some(u32::MAX));
        assert_eq!(String::quick(r#""gpt-4o""#), Some("gpt-4o".to_owned()));
        assert_eq!(bool::quick("false"), Some(false));
        // Handed to serde_json: a sign, an exponent, too many digits, a
        // leading zero, an escape, an overflow, another type.
        for text in [
            "-1",
            "1e3",
            "0.1234567890123456",
            "01",
            "1.",
            ".5",
            "4294967296",
            "16.0",
        ] {
            assert_eq!(u32::quick(text), None, "{text}");
        }
        for text in ["-0.5", "1e-3", "0.1234567890123456", "1.", "\"1\"", "true"] {
            assert_eq!(f64::quick(text), None, "{text}");
        }
        for text in [
            r#""a\"b""#,
            r#""\u0041""#,
            "\"a",
            "a\"",
            "\"",
            "7",
            "\"a\tb\"",
            "\"a\u{1}\"",
        ] {
            assert_eq!(String::quick(text), None, "{text}");
        }
        assert_eq!(bool::quick("True"), None);
    }

    #[test]
    fn a_field_read_quickly_keeps_serde_jsons_verdict_on_the_rest() {
        let fields = RequestFields::parse(br#"{"model":"m","n":-1,"temperature":"hot"}"#).unwrap();
        let error = fields
            .get::<u32>("n", "a non-negative integer")
            .unwrap_err();
        assert_eq!(error.param.as_deref(), Some("n"));
        assert!(fields.get::<f64>("temperature", "a number").is_err());
        assert_eq!(
            fields
                .get::<String>("model", "a string")
                .unwrap()
                .as_deref(),
            Some("m")
        );
    }

    #[test]
    fn keys_without_escapes_are_written_as_serde_json_writes_them() {
        for key in [
            "model",
            "",
            "ключ",
            "a b",
            "tab\there",
            "quote\"d",
            "back\\slash",
            "\u{7f}",
            "\u{1f}",
        ] {
            let (mut ours, mut first) = (Vec::new(), true);
            write_member(&mut ours, &mut first, key, b"1");
            let mut expected = serde_json::to_vec(key).unwrap();
            expected.extend_from_slice(b":1");
            assert_eq!(ours, expected, "{key:?}");
        }
    }

    fn numbers() -> impl Strategy<Value = String> {
        prop_oneof![
            "-?(0|[1-9][0-9]{0,19})(\\.[0-9]{1,18})?([eE][+-]?[0-9]{1,3})?",
            any::<f64>().prop_map(|value| value.to_string()),
            any::<u64>().prop_map(|value| value.to_string()),
            (0u32..1_000_000, 0u32..100).prop_map(|(whole, cents)| format!("{whole}.{cents:02}")),
        ]
    }

    proptest! {
        #[test]
        fn quick_numbers_agree_with_serde_json(text in numbers()) {
            all_agree(&text)?;
        }

        #[test]
        fn quick_strings_agree_with_serde_json(inner in "[\\x00-\\x1f -~\u{80}-\u{10ffff}\\\\\"]{0,12}") {
            for text in [format!("\"{inner}\""), inner.clone(), serde_json::to_string(&inner).unwrap()] {
                all_agree(&text)?;
            }
        }
    }

    #[test]
    fn every_short_decimal_agrees_with_serde_json() {
        // Each decimal of up to three digits on either side of the point.
        let mut read = 0;
        for whole in (0..1000).chain([9_999, 123_456, 999_999_999]) {
            for fraction in [
                "", ".0", ".1", ".5", ".7", ".05", ".33", ".999", ".001", ".123",
            ] {
                read += all_agree(&format!("{whole}{fraction}")).unwrap();
            }
        }
        // Every one was read quickly as a double, the integers as integers too.
        assert!(read >= 1003 * 10, "{read}");
    }
}
