//! Every inbound API (OpenAI's chat completions, Anthropic's messages) in
//! front of every provider (OpenAI-compatible, Anthropic, Gemini, Bedrock),
//! over real HTTP against testkit's mock, which answers in each vendor's
//! wire format: text, streams, tool calls, images, structured output and
//! errors, with the same assertions whichever provider serves. Also the
//! unsupported-parameter policy, cross-protocol fallback, bad upstream
//! output and the wire details of each upstream (auth, signing, paths).

mod support;

use serde_json::{Value, json};
use support::*;
use switchboard_testkit::vendors::{REPLY, TOOL_ARGUMENTS};
use switchboard_testkit::{MockUpstream, Script, at_once};

const PROVIDERS: [&str; 4] = ["openai", "anthropic", "gemini", "bedrock"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    OpenAi,
    Anthropic,
}

const CLIENTS: [Client; 2] = [Client::OpenAi, Client::Anthropic];

/// One model per provider, all served by `mock`.
fn models(mock: &MockUpstream, extra: &str) -> String {
    let root = mock.root_url();
    format!(
        r#"
[[models]]
name = "via-openai"
[[models.deployments]]
provider = "openai-compatible"
api_base = "{root}/v1"
model = "gpt-mock"
api_key = "${{UPSTREAM_KEY}}"
{extra}
[models.routing]
max_attempts = 1
circuit_breaker_failures = 1000

[[models]]
name = "via-anthropic"
[[models.deployments]]
provider = "anthropic"
api_base = "{root}"
model = "claude-mock"
api_key = "${{UPSTREAM_KEY}}"
{extra}
[models.routing]
max_attempts = 1
circuit_breaker_failures = 1000

[[models]]
name = "via-gemini"
[[models.deployments]]
provider = "gemini"
api_base = "{root}"
model = "gemini-mock"
api_key = "${{UPSTREAM_KEY}}"
{extra}
[models.routing]
max_attempts = 1
circuit_breaker_failures = 1000

[[models]]
name = "via-bedrock"
[[models.deployments]]
provider = "bedrock"
api_base = "{root}"
region = "us-east-1"
model = "anthropic.claude-mock-v1:0"
aws_access_key_id = "AKIDEXAMPLE"
aws_secret_access_key = "${{UPSTREAM_KEY}}"
{extra}
[models.routing]
max_attempts = 1
circuit_breaker_failures = 1000
"#
    )
}

async fn gateway(mock: &MockUpstream, extra: &str) -> TestGateway {
    TestGateway::start(config_with(&models(mock, extra), "")).await
}

const WEATHER_SCHEMA: &str =
    r#"{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}"#;
const PIXEL: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

/// What a request asks for.
#[derive(Clone, Copy)]
enum Ask {
    Text,
    Tools,
    Image,
    Json,
    Fail(u16),
}

fn request(client: Client, model: &str, ask: Ask, stream: bool) -> (String, String) {
    let text = match ask {
        Ask::Fail(status) => format!("please fail TRIGGER_{status}"),
        _ => "What is the weather in Paris?".to_owned(),
    };
    match client {
        Client::OpenAi => {
            let content = match ask {
                Ask::Image => json!([
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PIXEL}")}},
                ]),
                _ => json!(text),
            };
            let mut body = json!({
                "model": model,
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": content},
                ],
                "max_tokens": 64,
            });
            if stream {
                body["stream"] = json!(true);
                body["stream_options"] = json!({"include_usage": true});
            }
            match ask {
                Ask::Tools => {
                    body["tools"] = json!([{"type": "function", "function": {
                        "name": "get_weather", "description": "Weather for a place",
                        "parameters": serde_json::from_str::<Value>(WEATHER_SCHEMA).unwrap()}}]);
                }
                Ask::Json => {
                    body["response_format"] = json!({"type": "json_schema", "json_schema": {
                        "name": "answer", "schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}});
                }
                _ => {}
            }
            ("/v1/chat/completions".to_owned(), body.to_string())
        }
        Client::Anthropic => {
            let content = match ask {
                Ask::Image => json!([
                    {"type": "text", "text": text},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                ]),
                _ => json!(text),
            };
            let mut body = json!({
                "model": model,
                "max_tokens": 64,
                "system": "You are terse.",
                "messages": [{"role": "user", "content": content}],
            });
            if stream {
                body["stream"] = json!(true);
            }
            match ask {
                Ask::Tools => {
                    body["tools"] = json!([{"name": "get_weather", "description": "Weather for a place",
                        "input_schema": serde_json::from_str::<Value>(WEATHER_SCHEMA).unwrap()}]);
                }
                Ask::Json => {
                    body["output_config"] = json!({"format": {"type": "json_schema",
                        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}}}});
                }
                _ => {}
            }
            ("/v1/messages".to_owned(), body.to_string())
        }
    }
}

/// An answer read back in the client's dialect.
#[derive(Debug, Default, PartialEq)]
struct Answer {
    text: String,
    /// Tool name and parsed arguments.
    tool: Option<(String, Value)>,
    finish: String,
    input_tokens: u64,
    output_tokens: u64,
}

fn read_whole(client: Client, body: &Value) -> Answer {
    match client {
        Client::OpenAi => {
            assert_eq!(body["object"], "chat.completion", "{body}");
            let message = &body["choices"][0]["message"];
            Answer {
                text: message["content"].as_str().unwrap_or_default().to_owned(),
                tool: message["tool_calls"][0]["function"]["name"]
                    .as_str()
                    .map(|name| {
                        let arguments = message["tool_calls"][0]["function"]["arguments"]
                            .as_str()
                            .unwrap();
                        assert!(
                            !message["tool_calls"][0]["id"].as_str().unwrap().is_empty(),
                            "tool calls carry an id: {body}"
                        );
                        (name.to_owned(), serde_json::from_str(arguments).unwrap())
                    }),
                finish: body["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                input_tokens: body["usage"]["prompt_tokens"].as_u64().unwrap(),
                output_tokens: body["usage"]["completion_tokens"].as_u64().unwrap(),
            }
        }
        Client::Anthropic => {
            assert_eq!(body["type"], "message", "{body}");
            let mut answer = Answer {
                finish: body["stop_reason"].as_str().unwrap().to_owned(),
                input_tokens: body["usage"]["input_tokens"].as_u64().unwrap()
                    + body["usage"]["cache_read_input_tokens"]
                        .as_u64()
                        .unwrap_or(0)
                    + body["usage"]["cache_creation_input_tokens"]
                        .as_u64()
                        .unwrap_or(0),
                output_tokens: body["usage"]["output_tokens"].as_u64().unwrap(),
                ..Answer::default()
            };
            for block in body["content"].as_array().unwrap() {
                match block["type"].as_str().unwrap() {
                    "text" => answer.text.push_str(block["text"].as_str().unwrap()),
                    "tool_use" => {
                        assert!(!block["id"].as_str().unwrap().is_empty());
                        answer.tool = Some((
                            block["name"].as_str().unwrap().to_owned(),
                            block["input"].clone(),
                        ));
                    }
                    other => panic!("unexpected block {other}"),
                }
            }
            answer
        }
    }
}

/// The `(event name, data)` pairs of an SSE body.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    assert!(
        body.ends_with("\n\n"),
        "the stream ends with a whole event: {body:?}"
    );
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            let mut name = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_owned());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
            (name, data)
        })
        .collect()
}

fn read_stream(client: Client, body: &str) -> Answer {
    let events = sse_events(body);
    let mut answer = Answer::default();
    let mut arguments = String::new();
    match client {
        Client::OpenAi => {
            assert_eq!(events.last().unwrap().1, "[DONE]", "{body}");
            for (_, data) in &events[..events.len() - 1] {
                let chunk: Value = serde_json::from_str(data).unwrap();
                assert_eq!(chunk["object"], "chat.completion.chunk");
                assert!(chunk.get("error").is_none(), "{body}");
                if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
                    answer.input_tokens = usage["prompt_tokens"].as_u64().unwrap();
                    answer.output_tokens = usage["completion_tokens"].as_u64().unwrap();
                }
                let Some(choice) = chunk["choices"].get(0) else {
                    continue;
                };
                if let Some(text) = choice["delta"]["content"].as_str() {
                    answer.text.push_str(text);
                }
                if let Some(call) = choice["delta"]["tool_calls"].get(0) {
                    if let Some(name) = call["function"]["name"].as_str() {
                        answer.tool = Some((name.to_owned(), Value::Null));
                    }
                    arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
                }
                if let Some(finish) = choice["finish_reason"].as_str() {
                    answer.finish = finish.to_owned();
                }
            }
        }
        Client::Anthropic => {
            assert_eq!(events[0].0.as_deref(), Some("message_start"), "{body}");
            assert_eq!(
                events.last().unwrap().0.as_deref(),
                Some("message_stop"),
                "{body}"
            );
            for (name, data) in &events {
                let event: Value = serde_json::from_str(data).unwrap();
                assert_eq!(name.as_deref(), event["type"].as_str(), "{body}");
                match event["type"].as_str().unwrap() {
                    "content_block_start" if event["content_block"]["type"] == "tool_use" => {
                        answer.tool = Some((
                            event["content_block"]["name"].as_str().unwrap().to_owned(),
                            Value::Null,
                        ));
                    }
                    "content_block_delta" => match event["delta"]["type"].as_str().unwrap() {
                        "text_delta" => answer
                            .text
                            .push_str(event["delta"]["text"].as_str().unwrap()),
                        "input_json_delta" => {
                            arguments.push_str(event["delta"]["partial_json"].as_str().unwrap());
                        }
                        other => panic!("unexpected delta {other}"),
                    },
                    "message_start" => {
                        let usage = &event["message"]["usage"];
                        answer.input_tokens = usage["input_tokens"].as_u64().unwrap()
                            + usage["cache_read_input_tokens"].as_u64().unwrap_or(0)
                            + usage["cache_creation_input_tokens"].as_u64().unwrap_or(0);
                    }
                    "message_delta" => {
                        answer.finish = event["delta"]["stop_reason"].as_str().unwrap().to_owned();
                        let usage = &event["usage"];
                        answer.output_tokens = usage["output_tokens"].as_u64().unwrap();
                        if let Some(input) = usage["input_tokens"].as_u64() {
                            answer.input_tokens = input
                                + usage["cache_read_input_tokens"].as_u64().unwrap_or(0)
                                + usage["cache_creation_input_tokens"].as_u64().unwrap_or(0);
                        }
                    }
                    "error" => panic!("error event: {body}"),
                    _ => {}
                }
            }
        }
    }
    if let Some((_, value)) = &mut answer.tool {
        *value = serde_json::from_str(&arguments).unwrap();
    }
    answer
}

async fn ask(
    gateway: &TestGateway,
    client: Client,
    provider: &str,
    ask: Ask,
    stream: bool,
) -> (u16, Answer) {
    let (path, body) = request(client, &format!("via-{provider}"), ask, stream);
    let response = gateway.send(&path, &body).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    if status != 200 {
        panic!("{provider} via {client:?}: status {status}: {text}");
    }
    let answer = if stream {
        read_stream(client, &text)
    } else {
        read_whole(client, &serde_json::from_str(&text).unwrap())
    };
    (status, answer)
}

fn stop_word(client: Client) -> &'static str {
    match client {
        Client::OpenAi => "stop",
        Client::Anthropic => "end_turn",
    }
}

#[tokio::test]
async fn text_whole_and_streamed_reads_the_same_through_every_provider() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    for client in CLIENTS {
        for provider in PROVIDERS {
            for stream in [false, true] {
                let (_, answer) = ask(&gateway, client, provider, Ask::Text, stream).await;
                let context = format!("{provider} via {client:?}, stream {stream}");
                assert_eq!(answer.text, REPLY, "{context}");
                assert_eq!(answer.finish, stop_word(client), "{context}");
                assert_eq!(answer.output_tokens, 4, "{context}");
                assert_eq!(answer.input_tokens, 9, "{context}");
            }
        }
    }
    // Each upstream received the system prompt in its own place.
    let received = mock.received();
    let anthropic = received
        .iter()
        .find(|request| request.uri == "/v1/messages")
        .unwrap();
    let gemini = received
        .iter()
        .find(|request| request.uri.contains(":generateContent"))
        .unwrap();
    let bedrock = received
        .iter()
        .find(|request| request.uri.ends_with("/converse"))
        .unwrap();
    assert_eq!(anthropic.json()["system"], "You are terse.");
    assert_eq!(
        gemini.json()["systemInstruction"]["parts"][0]["text"],
        "You are terse."
    );
    assert_eq!(bedrock.json()["system"][0]["text"], "You are terse.");
    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 16);
    assert!(records.iter().all(|record| record.status == 200
        && record.usage.input_tokens == Some(9)
        && record.usage.output_tokens == Some(4)));
}

#[tokio::test]
async fn tool_calls_whole_and_streamed_reach_every_client_intact() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    let expected: Value = serde_json::from_str(TOOL_ARGUMENTS).unwrap();
    for client in CLIENTS {
        for provider in PROVIDERS {
            for stream in [false, true] {
                let (_, answer) = ask(&gateway, client, provider, Ask::Tools, stream).await;
                let context = format!("{provider} via {client:?}, stream {stream}");
                assert_eq!(
                    answer.tool,
                    Some(("get_weather".to_owned(), expected.clone())),
                    "{context}"
                );
                let finish = match client {
                    Client::OpenAi => "tool_calls",
                    Client::Anthropic => "tool_use",
                };
                assert_eq!(answer.finish, finish, "{context}");
            }
        }
    }
    // The tool definition reached each upstream in its own shape.
    let received = mock.received();
    let find = |needle: &str| {
        received
            .iter()
            .find(|request| request.uri.contains(needle))
            .unwrap()
            .json()
    };
    assert_eq!(find("/v1/messages")["tools"][0]["name"], "get_weather");
    assert_eq!(
        find(":generateContent")["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    assert_eq!(
        find("/converse")["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"],
        json!(["location"])
    );
}

#[tokio::test]
async fn images_reach_every_provider_in_its_own_shape() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    for client in CLIENTS {
        for provider in PROVIDERS {
            for stream in [false, true] {
                let (_, answer) = ask(&gateway, client, provider, Ask::Image, stream).await;
                assert_eq!(
                    answer.text, "I see 1 image(s)",
                    "{provider} via {client:?}, stream {stream}"
                );
            }
        }
    }
    let received = mock.received();
    let find = |needle: &str| {
        received
            .iter()
            .find(|request| request.uri.contains(needle))
            .unwrap()
            .json()
    };
    assert_eq!(
        find("/v1/messages")["messages"][0]["content"][1]["source"]["data"],
        PIXEL
    );
    assert_eq!(
        find(":generateContent")["contents"][0]["parts"][1]["inlineData"]["mimeType"],
        "image/png"
    );
    assert_eq!(
        find("/converse")["messages"][0]["content"][1]["image"]["format"],
        "png"
    );
}

#[tokio::test]
async fn structured_output_is_translated_or_refused_by_name() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    for client in CLIENTS {
        for provider in ["openai", "anthropic", "gemini"] {
            for stream in [false, true] {
                let (_, answer) = ask(&gateway, client, provider, Ask::Json, stream).await;
                assert_eq!(
                    serde_json::from_str::<Value>(&answer.text).unwrap(),
                    json!({"answer": "Paris"}),
                    "{provider} via {client:?}, stream {stream}"
                );
            }
        }
        // Bedrock's Converse has no JSON-schema output here: the default
        // policy refuses, naming the parameter and the model.
        let (path, body) = request(client, "via-bedrock", Ask::Json, false);
        let response = gateway.send(&path, &body).await;
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        let message = match client {
            Client::OpenAi => {
                assert_eq!(body["error"]["code"], "unsupported_parameter");
                assert_eq!(body["error"]["param"], "response_format");
                body["error"]["message"].as_str().unwrap().to_owned()
            }
            Client::Anthropic => {
                assert_eq!(body["type"], "error");
                assert_eq!(body["error"]["type"], "invalid_request_error");
                body["error"]["message"].as_str().unwrap().to_owned()
            }
        };
        // Named as the client's own API names it.
        let name = match client {
            Client::OpenAi => "`response_format`",
            Client::Anthropic => "`output_config.format`",
        };
        assert!(
            message.contains("anthropic.claude-mock-v1:0")
                && message.contains(name)
                && message.contains("unsupported_params = \"drop\""),
            "{message}"
        );
    }
    let converse = mock
        .received()
        .iter()
        .filter(|request| request.uri.contains("/converse"))
        .count();
    assert_eq!(converse, 0, "a refused request never goes upstream");
    let gemini = mock
        .received()
        .into_iter()
        .find(|request| request.uri.contains(":generateContent"))
        .unwrap()
        .json();
    assert_eq!(
        gemini["generationConfig"]["responseJsonSchema"]["properties"]["answer"]["type"],
        "string"
    );
}

#[tokio::test]
async fn an_image_url_for_bedrock_is_refused_by_name() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    let body = json!({
        "model": "via-bedrock",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}],
    });
    let response = gateway
        .send("/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "image_url", "{error}");
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn the_drop_policy_sends_without_the_parameter_and_says_so() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "unsupported_params = \"drop\"").await;
    let body = json!({
        "model": "via-anthropic",
        "messages": [{"role": "user", "content": "hi"}],
        "seed": 7,
        "logprobs": true,
    });
    let response = gateway
        .send("/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-switchboard-dropped-params"],
        "logprobs, seed"
    );
    let sent = mock.last().json();
    assert!(
        sent.get("seed").is_none() && sent.get("logprobs").is_none(),
        "{sent}"
    );
    assert_eq!(sent["max_tokens"], 4096, "Anthropic's default max_tokens");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], REPLY);
}

#[tokio::test]
async fn upstream_errors_reach_each_client_in_its_own_shape() {
    let mock = MockUpstream::start().await;
    for client in CLIENTS {
        // A 429 rests the deployment (its account is rate limited), so each
        // client gets a gateway of its own and the 429 comes last.
        let gateway = gateway(&mock, "").await;
        for provider in PROVIDERS {
            for (upstream, expected) in [(400u16, 400u16), (500, 502), (429, 429)] {
                let (path, body) = request(
                    client,
                    &format!("via-{provider}"),
                    Ask::Fail(upstream),
                    false,
                );
                let response = gateway.send(&path, &body).await;
                let context = format!("{provider} via {client:?}, upstream {upstream}");
                assert_eq!(response.status().as_u16(), expected, "{context}");
                let body: Value = response.json().await.unwrap();
                let message = match client {
                    Client::OpenAi => {
                        assert!(body["error"]["type"].is_string(), "{context}: {body}");
                        body["error"]["message"].as_str().unwrap().to_owned()
                    }
                    Client::Anthropic => {
                        assert_eq!(body["type"], "error", "{context}");
                        let kind = match expected {
                            400 => "invalid_request_error",
                            429 => "rate_limit_error",
                            _ => "api_error",
                        };
                        assert_eq!(body["error"]["type"], kind, "{context}");
                        body["error"]["message"].as_str().unwrap().to_owned()
                    }
                };
                if upstream == 400 {
                    // A refusal of the client's own request explains itself.
                    assert!(
                        message.contains("mock refused with 400"),
                        "{context}: {message}"
                    );
                }
                assert!(!message.contains(UPSTREAM_KEY), "{context}");
            }
        }
    }
}

#[tokio::test]
async fn each_upstream_gets_its_own_credentials_and_paths() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    for provider in ["anthropic", "gemini", "bedrock"] {
        for stream in [false, true] {
            ask(&gateway, Client::OpenAi, provider, Ask::Text, stream).await;
        }
    }
    let received = mock.received();
    let anthropic: Vec<_> = received
        .iter()
        .filter(|request| request.uri == "/v1/messages")
        .collect();
    assert_eq!(anthropic.len(), 2);
    for request in anthropic {
        assert_eq!(request.header("x-api-key"), Some(UPSTREAM_KEY));
        assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(request.header("authorization"), None);
        assert_eq!(request.json()["model"], "claude-mock");
    }
    let gemini: Vec<_> = received
        .iter()
        .filter(|request| request.uri.starts_with("/v1beta/models/gemini-mock:"))
        .collect();
    assert_eq!(gemini.len(), 2);
    assert!(
        gemini
            .iter()
            .any(|request| request.uri == "/v1beta/models/gemini-mock:generateContent")
    );
    assert!(
        gemini.iter().any(
            |request| request.uri == "/v1beta/models/gemini-mock:streamGenerateContent?alt=sse"
        )
    );
    for request in &gemini {
        assert_eq!(request.header("x-goog-api-key"), Some(UPSTREAM_KEY));
        assert!(
            !request.uri.contains("key="),
            "the key stays out of the URL"
        );
    }
    let bedrock: Vec<_> = received
        .iter()
        .filter(|request| request.uri.starts_with("/model/"))
        .collect();
    assert_eq!(bedrock.len(), 2);
    assert!(
        bedrock
            .iter()
            .any(|request| request.uri == "/model/anthropic.claude-mock-v1%3A0/converse")
    );
    assert!(
        bedrock
            .iter()
            .any(|request| request.uri == "/model/anthropic.claude-mock-v1%3A0/converse-stream")
    );
    for request in bedrock {
        let authorization = request.header("authorization").unwrap();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                && authorization.contains("/us-east-1/bedrock/aws4_request")
                && authorization.contains("SignedHeaders=")
                && authorization.contains("Signature="),
            "{authorization}"
        );
        assert!(request.header("x-amz-date").is_some());
        assert!(request.header("x-amz-content-sha256").is_some());
        assert!(
            !format!("{:?}", request.headers).contains(UPSTREAM_KEY),
            "the secret key is never sent"
        );
    }
}

#[tokio::test]
async fn an_anthropic_client_talking_to_claude_passes_through_unchanged() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    let body = r#"{"model":"via-anthropic","max_tokens":10,"messages":[{"role":"user","content":"hi"}],"x_future_field":{"kept":true},"metadata":{"user_id":"u-1"}}"#;
    let response = gateway
        .post("/v1/messages", body)
        .header("anthropic-beta", "some-beta-2025-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent = mock.last();
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        body.replace("\"via-anthropic\"", "\"claude-mock\""),
        "the body passes byte for byte, model replaced"
    );
    assert_eq!(sent.header("anthropic-beta"), Some("some-beta-2025-01-01"));

    // Streams are relayed event for event.
    let stream_body = r#"{"model":"via-anthropic","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let text = gateway
        .send("/v1/messages", stream_body)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    assert_eq!(events[1].0.as_deref(), Some("ping"), "even pings pass");
    assert_eq!(read_stream(Client::Anthropic, &text).text, REPLY);
}

#[tokio::test]
async fn anthropic_clients_authenticate_with_x_api_key() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    let body =
        r#"{"model":"via-openai","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let ok = gateway
        .http
        .post(gateway.url("/v1/messages"))
        .header("x-api-key", MASTER_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // A compatible server gets the limit under the name they all know.
    let sent = mock.last().json();
    assert_eq!(sent["max_tokens"], 10, "{sent}");
    assert!(sent.get("max_completion_tokens").is_none(), "{sent}");
    let wrong = gateway
        .http
        .post(gateway.url("/v1/messages"))
        .header("x-api-key", "nope")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let error: Value = wrong.json().await.unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "authentication_error");
    // Anthropic's own required fields are enforced.
    let missing = gateway
        .send(
            "/v1/messages",
            r#"{"model":"via-openai","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(missing.status(), 400);
    let error: Value = missing.json().await.unwrap();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
}

#[tokio::test]
async fn an_openai_model_falls_back_to_claude_across_protocols() {
    let primary = MockUpstream::start().await;
    let claude = MockUpstream::start().await;
    let config = config_with(
        &format!(
            r#"
[[models]]
name = "gpt"
fallbacks = ["claude"]
[[models.deployments]]
provider = "openai-compatible"
api_base = "{primary}"
model = "gpt-upstream"
[models.routing]
max_attempts = 1
circuit_breaker_failures = 1000

[[models]]
name = "claude"
[[models.deployments]]
provider = "anthropic"
api_base = "{claude}"
model = "claude-upstream"
api_key = "${{UPSTREAM_KEY}}"
"#,
            primary = primary.base_url(),
            claude = claude.root_url(),
        ),
        "",
    );
    let gateway = TestGateway::start(config).await;
    for stream in [false, true] {
        primary.push(Script::json(
            503,
            json!({"error": {"message": "down", "type": "server_error"}}),
        ));
        let (path, body) = request(Client::OpenAi, "gpt", Ask::Tools, stream);
        let response = gateway.send(&path, &body).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-switchboard-model"], "claude");
        let text = response.text().await.unwrap();
        let answer = if stream {
            read_stream(Client::OpenAi, &text)
        } else {
            read_whole(Client::OpenAi, &serde_json::from_str(&text).unwrap())
        };
        assert_eq!(
            answer.tool,
            Some((
                "get_weather".to_owned(),
                serde_json::from_str(TOOL_ARGUMENTS).unwrap()
            ))
        );
        let sent = claude.last().json();
        assert_eq!(sent["model"], "claude-upstream");
        assert_eq!(sent["system"], "You are terse.");
        assert_eq!(
            sent["tools"][0]["input_schema"]["required"],
            json!(["location"])
        );
    }
}

/// A stream that breaks in the upstream's dialect ends with an error event
/// in the client's, and is recorded as an upstream failure.
#[tokio::test]
async fn bad_upstream_streams_end_with_a_well_formed_error_in_the_clients_dialect() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    let start = r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}

"#
    .to_owned();
    let block = "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n".to_owned();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("truncated", vec![start.clone(), block.clone()]),
        (
            "invalid json",
            vec![start.clone(), block.clone(), "event: content_block_delta\ndata: {not json\n\n".to_owned()],
        ),
        (
            "unknown event",
            vec![start.clone(), block.clone(), "event: surprise\ndata: {\"type\":\"surprise\"}\n\n".to_owned()],
        ),
        (
            "error event",
            vec![start.clone(), block.clone(), "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n".to_owned()],
        ),
    ];
    for client in CLIENTS {
        for (name, pieces) in &cases {
            mock.push(Script::Stream {
                pieces: at_once(pieces),
                close: true,
            });
            let (path, body) = request(client, "via-anthropic", Ask::Text, true);
            let response = gateway.send(&path, &body).await;
            assert_eq!(response.status(), 200, "{name}: the stream had opened");
            let text = response.text().await.unwrap();
            let events = sse_events(&text);
            let (last_name, last_data) = events.last().unwrap();
            let error: Value = serde_json::from_str(last_data).unwrap();
            match client {
                Client::OpenAi => {
                    assert!(error["error"]["message"].is_string(), "{name}: {text}");
                    assert!(
                        !text.contains("[DONE]"),
                        "{name}: a failed stream never ends as a success"
                    );
                }
                Client::Anthropic => {
                    assert_eq!(last_name.as_deref(), Some("error"), "{name}: {text}");
                    assert_eq!(error["type"], "error");
                    assert!(
                        events
                            .iter()
                            .all(|(event, _)| event.as_deref() != Some("message_stop")),
                        "{name}: a failed stream never ends as a success"
                    );
                }
            }
        }
    }
    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 8);
    assert!(
        records
            .iter()
            .all(|record| record.status == 502 && record.error_code.is_some()),
        "{records:?}"
    );
}

#[tokio::test]
async fn embeddings_through_gemini_and_bedrock_answer_as_openai_lists() {
    let mock = MockUpstream::start().await;
    let root = mock.root_url();
    let config = config_with(
        &format!(
            r#"
[[models]]
name = "gemini-embed"
[[models.deployments]]
provider = "gemini"
api_base = "{root}"
model = "text-embedding-004"
api_key = "${{UPSTREAM_KEY}}"

[[models]]
name = "titan"
[[models.deployments]]
provider = "bedrock"
api_base = "{root}"
region = "eu-west-1"
model = "amazon.titan-embed-text-v2:0"
aws_access_key_id = "AKIDEXAMPLE"
aws_secret_access_key = "${{UPSTREAM_KEY}}"
"#
        ),
        "",
    );
    let gateway = TestGateway::start(config).await;
    for model in ["gemini-embed", "titan"] {
        let response = gateway
            .send(
                "/v1/embeddings",
                &json!({"model": model, "input": ["one", "two"]}).to_string(),
            )
            .await;
        assert_eq!(response.status(), 200, "{model}");
        let list: Value = response.json().await.unwrap();
        assert_eq!(list["object"], "list");
        assert_eq!(list["data"].as_array().unwrap().len(), 2, "{model}");
        assert_eq!(list["data"][1]["index"], 1);
        assert_eq!(list["data"][0]["embedding"][0], 0.25);
    }
    let received = mock.received();
    let gemini = received
        .iter()
        .find(|request| request.uri.contains(":batchEmbedContents"))
        .unwrap()
        .json();
    assert_eq!(gemini["requests"][1]["content"]["parts"][0]["text"], "two");
    let titan = received
        .iter()
        .filter(|request| request.uri.ends_with("/invoke"))
        .count();
    assert_eq!(titan, 2, "Titan takes one input per call");
}

/// Server tools (web search...) exist only in Anthropic's API: an Anthropic
/// client receives their blocks unchanged, a client of another API gets a
/// clear error rather than an answer with a hole in it.
#[tokio::test]
async fn server_tool_blocks_reach_anthropic_clients_and_stop_translation() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    let events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"server_tool_use\",\"id\":\"srvtoolu_1\",\"name\":\"web_search\",\"input\":{}}}\n\n".to_owned(),
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"query\\\":\\\"x\\\"}\"}}\n\n".to_owned(),
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".to_owned(),
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n".to_owned(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
    ];
    mock.push(Script::Stream {
        pieces: at_once(&events),
        close: true,
    });
    let (path, body) = request(Client::Anthropic, "via-anthropic", Ask::Text, true);
    let text = gateway.send(&path, &body).await.text().await.unwrap();
    assert_eq!(text, events.concat(), "relayed event for event");

    mock.push(Script::Stream {
        pieces: at_once(&events),
        close: true,
    });
    let (path, body) = request(Client::OpenAi, "via-anthropic", Ask::Text, true);
    let response = gateway.send(&path, &body).await;
    let text = response.text().await.unwrap();
    assert!(
        text.contains("server_tool_use") && text.contains("cannot be translated"),
        "{text}"
    );
    assert!(!text.contains("[DONE]"));
}

/// Gemini refuses a function call sent back without the thought signature
/// it came with; an OpenAI client has no field for it, so it travels in the
/// tool call's id and is put back on the call when the conversation returns.
#[tokio::test]
async fn gemini_thought_signatures_survive_a_round_trip_through_an_openai_client() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    let answer = json!({
        "candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"}
        ]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8},
        "modelVersion": "gemini-mock"
    });
    for stream in [false, true] {
        if stream {
            mock.push(Script::Stream {
                pieces: at_once(&[format!("data: {answer}\r\n\r\n")]),
                close: true,
            });
        } else {
            mock.push(Script::json(200, answer.clone()));
        }
        let (path, body) = request(Client::OpenAi, "via-gemini", Ask::Tools, stream);
        let text = gateway.send(&path, &body).await.text().await.unwrap();
        let id = if stream {
            sse_events(&text)
                .iter()
                .find_map(|(_, data)| {
                    serde_json::from_str::<Value>(data).ok()?["choices"][0]["delta"]["tool_calls"]
                        [0]["id"]
                        .as_str()
                        .map(str::to_owned)
                })
                .unwrap()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["message"]["tool_calls"][0]
                ["id"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert!(id.ends_with("__thought__c2lnbmF0dXJl"), "{id}");
        let follow_up = json!({
            "model": "via-gemini",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}]},
                {"role": "tool", "tool_call_id": id, "content": "{\"sky\":\"clear\"}"},
            ],
        });
        let response = gateway
            .send("/v1/chat/completions", &follow_up.to_string())
            .await;
        assert_eq!(response.status(), 200);
        let sent = mock.last().json();
        let model_turn = &sent["contents"][1];
        assert_eq!(model_turn["role"], "model");
        assert_eq!(
            model_turn["parts"][0]["functionCall"]["name"],
            "get_weather"
        );
        assert_eq!(
            model_turn["parts"][0]["thoughtSignature"], "c2lnbmF0dXJl",
            "{sent}"
        );
        assert_eq!(
            sent["contents"][2]["parts"][0]["functionResponse"]["name"], "get_weather",
            "the result still finds its call: {sent}"
        );
    }
}

/// In a group whose deployments speak different APIs, a request one of
/// them cannot carry goes to another, never failing by the luck of the
/// draw; only when none can carry it is it refused.
#[tokio::test]
async fn a_deployment_that_cannot_carry_a_request_passes_it_to_one_that_can() {
    let mock = MockUpstream::start().await;
    let root = mock.root_url();
    let config = config_with(
        &format!(
            r#"
[[models]]
name = "mixed"
[[models.deployments]]
name = "claude"
provider = "anthropic"
api_base = "{root}"
model = "claude-mock"
api_key = "${{UPSTREAM_KEY}}"
[[models.deployments]]
name = "gpt"
provider = "openai-compatible"
api_base = "{root}/v1"
model = "gpt-mock"
[models.routing]
strategy = "round-robin"
max_attempts = 1

[[models]]
name = "claude-only"
fallbacks = ["gpt-only"]
[[models.deployments]]
provider = "anthropic"
api_base = "{root}"
model = "claude-mock"
api_key = "${{UPSTREAM_KEY}}"

[[models]]
name = "gpt-only"
[[models.deployments]]
provider = "openai-compatible"
api_base = "{root}/v1"
model = "gpt-mock"
"#
        ),
        "",
    );
    let gateway = TestGateway::start(config).await;
    for _ in 0..6 {
        let body =
            json!({"model": "mixed", "messages": [{"role": "user", "content": "hi"}], "seed": 7});
        let response = gateway
            .send("/v1/chat/completions", &body.to_string())
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-switchboard-deployment"], "gpt");
        assert_eq!(response.headers()["x-switchboard-attempts"], "1");
    }
    // A fallback model of another API serves what the first cannot carry.
    let body =
        json!({"model": "claude-only", "messages": [{"role": "user", "content": "hi"}], "seed": 7});
    let response = gateway
        .send("/v1/chat/completions", &body.to_string())
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-switchboard-model"], "gpt-only");
    // Nothing can carry it: the refusal names the parameter.
    let body = json!({"model": "claude-only", "messages": [{"role": "user", "content": "hi"}], "logprobs": true});
    let only_claude = config_with(
        &format!(
            "[[models]]\nname = \"claude-only\"\n[[models.deployments]]\nprovider = \"anthropic\"\napi_base = \"{root}\"\nmodel = \"claude-mock\"\napi_key = \"${{UPSTREAM_KEY}}\"\n"
        ),
        "",
    );
    let alone = TestGateway::start(only_claude).await;
    let response = alone.send("/v1/chat/completions", &body.to_string()).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "logprobs");
    assert!(
        mock.received()
            .iter()
            .all(|request| request.uri != "/v1/messages"),
        "nothing the deployment could not carry was sent to it"
    );
}

/// A translated stream ends at the upstream's own end marker, even when
/// the upstream keeps its connection open afterwards.
#[tokio::test]
async fn a_translated_stream_ends_at_the_upstreams_end_marker() {
    let mock = MockUpstream::start().await;
    let gateway = gateway(&mock, "").await;
    let events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n".to_owned(),
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n".to_owned(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
    ];
    mock.push(Script::Stream {
        pieces: at_once(&events),
        close: false,
    });
    let (path, body) = request(Client::OpenAi, "via-anthropic", Ask::Text, true);
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        gateway.send(&path, &body).await.text().await.unwrap()
    })
    .await
    .expect("the stream ended without waiting for the upstream to hang up");
    assert_eq!(read_stream(Client::OpenAi, &text).text, "Hi");
}

/// A rate limit reported inside a stream, before any content, is a rate
/// limit for the client too (its SDK raises its rate-limit error).
#[tokio::test]
async fn a_rate_limit_inside_a_stream_reaches_the_client_as_a_429() {
    let mock = MockUpstream::start().await;
    for client in CLIENTS {
        // The rate limit rests the deployment, as a 429 would.
        let gateway = gateway(&mock, "").await;
        mock.push(Script::Stream {
            pieces: at_once(&[
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1,\"output_tokens\":0}}}\n\n".to_owned(),
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow down\"}}\n\n".to_owned(),
            ]),
            close: true,
        });
        let (path, body) = request(client, "via-anthropic", Ask::Text, true);
        let response = gateway.send(&path, &body).await;
        assert_eq!(response.status(), 429, "{client:?}");
        let error: Value = response.json().await.unwrap();
        let kind = match client {
            Client::OpenAi => &error["error"]["type"],
            Client::Anthropic => &error["error"]["type"],
        };
        assert_eq!(kind, "rate_limit_error", "{error}");
    }
}

/// A whole answer the model refused (Gemini's safety block, read as a
/// content-filter finish) moves on to the fallback model when the group's
/// `fallback_on` names `content_policy`; without it, the refusal is the
/// answer.
#[tokio::test]
async fn a_refused_answer_falls_back_when_content_policy_is_a_trigger() {
    let mock = MockUpstream::start().await;
    let root = mock.root_url();
    let models = |triggers: &str| {
        format!(
            r#"
[[models]]
name = "guarded"
fallbacks = ["backup"]
[[models.deployments]]
provider = "gemini"
api_base = "{root}"
model = "gemini-mock"
api_key = "${{UPSTREAM_KEY}}"
[models.routing]
fallback_on = [{triggers}]

[[models]]
name = "backup"
[[models.deployments]]
provider = "openai-compatible"
api_base = "{root}/v1"
model = "gpt-mock"
"#
        )
    };
    let blocked = json!({
        "candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "SAFETY", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5}
    });
    for (triggers, falls_back) in [(r#""5xx", "content_policy""#, true), (r#""5xx""#, false)] {
        let gateway = TestGateway::start(config_with(&models(triggers), "")).await;
        mock.push(Script::json(200, blocked.clone()));
        let body = json!({"model": "guarded", "messages": [{"role": "user", "content": "hi"}]});
        let response = gateway
            .send("/v1/chat/completions", &body.to_string())
            .await;
        assert_eq!(response.status(), 200);
        let served_by = response
            .headers()
            .get("x-switchboard-model")
            .map(|value| value.to_str().unwrap().to_owned());
        let answer: Value = response.json().await.unwrap();
        if falls_back {
            assert_eq!(served_by.as_deref(), Some("backup"));
            assert_eq!(answer["choices"][0]["message"]["content"], REPLY);
        } else {
            assert_eq!(served_by, None);
            assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");
        }
    }
}

#[tokio::test]
async fn anthropic_cache_writes_are_recorded_and_billed_at_the_write_price() {
    let mock = MockUpstream::start().await;
    let price =
        "price = { input_per_mtok = 3.0, output_per_mtok = 15.0, cache_write_per_mtok = 3.75 }";
    let gateway = gateway(&mock, price).await;
    let message = json!({
        "id": "msg_cache", "type": "message", "role": "assistant", "model": "claude-mock",
        "content": [{"type": "text", "text": "Cached."}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 1000, "cache_creation_input_tokens": 4000,
                  "cache_read_input_tokens": 0, "output_tokens": 100}
    });
    // Passed through to an Anthropic client, and translated for an OpenAI one.
    mock.push(Script::json(200, message.clone()));
    let passed = gateway
        .send(
            "/v1/messages",
            r#"{"model":"via-anthropic","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(passed.status(), 200);
    mock.push(Script::json(200, message));
    let translated = gateway
        .send(
            "/v1/chat/completions",
            r#"{"model":"via-anthropic","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(translated.status(), 200);
    let records = gateway.stop_and_records().await;
    assert_eq!(records.len(), 2);
    for record in &records {
        assert_eq!(record.usage.input_tokens, Some(5000), "{record:?}");
        assert_eq!(record.usage.cache_write_tokens, Some(4000), "{record:?}");
        // 1,000 × $3 + 4,000 × $3.75 + 100 × $15, not 5,000 × $3 + 100 × $15.
        assert_eq!(record.cost_nanos, Some(19_500_000), "{record:?}");
    }
}
