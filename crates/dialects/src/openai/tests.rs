//! Tests of the OpenAI dialect: what is accepted, what is refused with
//! which parameter named, and that pass-through keeps the client's bytes.

use super::*;

fn chat(body: &str) -> Result<ChatRequest<'_>, RequestError> {
    ChatRequest::parse(body.as_bytes())
}

fn refused(body: &str) -> RequestError {
    chat(body).expect_err("the request should be refused")
}

#[test]
fn a_minimal_request_is_accepted() {
    let request = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
    assert_eq!(request.model, "m");
    assert!(!request.stream);
    assert!(!request.client_wants_usage);
    assert_eq!(request.max_tokens, None);
}

#[test]
fn encode_replaces_the_model_and_keeps_everything_else_byte_for_byte() {
    let body = r#"{"messages":[{"role":"user","content":"h\u00e9"}],"model":"public","x_vendor":{"a":[1, 2.50]},"temperature":0.7}"#;
    let request = chat(body).unwrap();
    let encoded = String::from_utf8(request.encode("upstream-id", true)).unwrap();
    assert_eq!(
        encoded,
        r#"{"messages":[{"role":"user","content":"h\u00e9"}],"model":"upstream-id","x_vendor":{"a":[1, 2.50]},"temperature":0.7}"#
    );
}

#[test]
fn a_request_that_needs_no_change_goes_as_it_came() {
    // Spacing and key order the gateway would not write.
    let body =
        "{ \"messages\" : [{\"role\":\"user\",\"content\":\"x\"}],\n  \"model\": \"gpt-4o\" }";
    let request = chat(body).unwrap();
    assert_eq!(request.encode("gpt-4o", true), body.as_bytes());
    // Another upstream model, or the same written with an escape: written
    // again, with the model as the gateway writes it.
    assert_eq!(
        String::from_utf8(request.encode("gpt-4o-mini", true)).unwrap(),
        r#"{"messages":[{"role":"user","content":"x"}],"model":"gpt-4o-mini"}"#
    );
    let escaped =
        chat(r#"{"model":"gpt\u002d4o","messages":[{"role":"user","content":"x"}]}"#).unwrap();
    assert_eq!(
        String::from_utf8(escaped.encode("gpt-4o", true)).unwrap(),
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#
    );
    // A stream whose usage the gateway asks for is written again even
    // under the same model; one whose client asked already is not.
    let stream = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#;
    assert_ne!(chat(stream).unwrap().encode("m", true), stream.as_bytes());
    assert_eq!(chat(stream).unwrap().encode("m", false), stream.as_bytes());
    let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
    assert_eq!(chat(asked).unwrap().encode("m", true), asked.as_bytes());
}

#[test]
fn fields_whose_names_differ_only_in_case_are_refused() {
    for (body, named) in [
        (
            r#"{"model":"cheap","Model":"dear","messages":[{"role":"user","content":"x"}]}"#,
            "Model",
        ),
        (
            r#"{"MODEL":"dear","messages":[{"role":"user","content":"x"}],"model":"cheap"}"#,
            "MODEL",
        ),
        // Twins among the client's own fields.
        (
            r#"{"model":"m","x_vendor":1,"X_Vendor":2,"messages":[{"role":"user","content":"x"}]}"#,
            "X_Vendor",
        ),
        // As Go folds them: ſ is s, the Kelvin sign is k.
        (
            "{\"model\":\"m\",\"stream\":false,\"\u{17f}tream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            "\u{17f}tream",
        ),
        (
            "{\"model\":\"m\",\"max_tokens\":1,\"max_to\u{212a}ens\":99999,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
            "max_to\u{212a}ens",
        ),
        // Written with escapes, read by serde_json: the same check.
        (
            r#"{"model":"cheap","\u004dodel":"dear","messages":[{"role":"user","content":"x"}]}"#,
            "Model",
        ),
    ] {
        let error = refused(body);
        assert_eq!(error.param.as_deref(), Some(named), "{body}");
        assert!(error.message.contains("letter case"), "{}", error.message);
    }
    // A capital alone is the client's own field, passed on...
    let request =
        chat(r#"{"model":"m","X_Vendor":1,"messages":[{"role":"user","content":"x"}]}"#).unwrap();
    assert_eq!(request.model, "m");
    // ...unless a server folding case would read it as a field the
    // gateway steers by, which the gateway would not have read.
    for (body, named, read) in [
        (
            r#"{"model":"m","N":10,"messages":[{"role":"user","content":"x"}]}"#,
            "N",
            "n",
        ),
        (
            r#"{"model":"m","Stream":true,"messages":[{"role":"user","content":"x"}]}"#,
            "Stream",
            "stream",
        ),
        (
            r#"{"model":"m","MAX_TOKENS":99999,"messages":[{"role":"user","content":"x"}]}"#,
            "MAX_TOKENS",
            "max_tokens",
        ),
    ] {
        let error = refused(body);
        assert_eq!(error.param.as_deref(), Some(named), "{body}");
        assert!(
            error.message.contains(&format!("write it `{read}`")),
            "{}",
            error.message
        );
    }
}

#[test]
fn a_body_with_escaped_names_is_written_again_not_passed_on() {
    let body = r#"{"mod\u0065l":"m","messages":[{"role":"user","content":"x"}]}"#;
    let request = chat(body).unwrap();
    assert_eq!(request.model, "m");
    assert_eq!(
        String::from_utf8(request.encode("m", true)).unwrap(),
        r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#
    );
}

#[test]
fn streams_ask_for_usage_on_the_clients_behalf() {
    let request =
        chat(r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#).unwrap();
    assert_eq!(
        String::from_utf8(request.encode("u", true)).unwrap(),
        r#"{"model":"u","stream":true,"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#
    );
    assert_eq!(
        String::from_utf8(request.encode("u", false)).unwrap(),
        r#"{"model":"u","stream":true,"messages":[{"role":"user","content":"x"}]}"#
    );
    let merged = chat(r#"{"model":"m","stream":true,"stream_options":{"other":1},"messages":[{"role":"user","content":"x"}]}"#).unwrap();
    assert!(!merged.client_wants_usage);
    assert_eq!(
        String::from_utf8(merged.encode("u", true)).unwrap(),
        r#"{"model":"u","stream":true,"stream_options":{"other":1,"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#
    );
    let asked = chat(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#).unwrap();
    assert!(asked.client_wants_usage);
}

#[test]
fn roles_the_gateway_does_not_know_pass_through() {
    let request = chat(r#"{"model":"m","messages":[{"role":"ipython","content":"x"}]}"#).unwrap();
    assert_eq!(request.message_count, 1);
}

#[test]
fn malformed_bodies_are_refused_with_a_reason() {
    assert!(refused("").message.contains("empty"));
    assert!(refused("{").message.contains("not valid JSON"));
    assert!(refused("[1]").message.contains("not valid JSON"));
    assert!(
        refused(r#"{"model":"a","model":"b"}"#)
            .message
            .contains("duplicate field `model`")
    );
    let invalid_utf8 = ChatRequest::parse(b"{\"model\":\"\xff\"}").unwrap_err();
    assert!(
        invalid_utf8.message.contains("not valid UTF-8"),
        "{invalid_utf8:?}"
    );
}

#[test]
fn wrong_types_name_the_parameter() {
    let cases = [
        (r#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
        (
            r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#,
            "model",
        ),
        (r#"{"model":"m"}"#, "messages"),
        (r#"{"model":"m","messages":"hi"}"#, "messages"),
        (r#"{"model":"m","messages":[]}"#, "messages"),
        (
            r#"{"model":"m","messages":[{"role":7,"content":"x"}]}"#,
            "messages[0].role",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"},{"content":"y"}]}"#,
            "messages[1]",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
            "messages[0].content",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":[{"text":"x"}]}]}"#,
            "messages[0].content",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
            "temperature",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
            "max_tokens",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            "stream",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
            "stop",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
            "stream_options",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":7}"#,
            "stream_options",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"c"}]}"#,
            "messages[1].content",
        ),
        (
            r#"{"model":"m","messages":[{"role":"tool","tool_call_id":"c","content":null}]}"#,
            "messages[0].content",
        ),
        // A message that is not one is named before an earlier message's
        // content, and the first faulty content before a later one.
        (
            r#"{"model":"m","messages":[{"role":"user","content":5},{"content":"y"}]}"#,
            "messages[1]",
        ),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"},{"role":"user","content":5},{"role":"tool","content":null}]}"#,
            "messages[1].content",
        ),
    ];
    for (body, param) in cases {
        let error = refused(body);
        assert_eq!(error.param.as_deref(), Some(param), "{body} -> {error:?}");
        assert!(!error.message.contains(" at line "), "{error:?}");
    }
    // Every field whose type the gateway checks, each with a wrong one.
    let wrong = [
        ("top_p", r#""x""#),
        ("presence_penalty", "[]"),
        ("frequency_penalty", "{}"),
        ("n", "-2"),
        ("top_logprobs", "1.5"),
        ("max_completion_tokens", r#""8""#),
        ("seed", "1.5"),
        ("user", "5"),
    ];
    for (field, value) in wrong {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"{field}":{value}}}"#
        );
        let error = refused(&body);
        assert_eq!(error.param.as_deref(), Some(field), "{body} -> {error:?}");
    }
}

#[test]
fn the_fields_the_gateway_uses_are_read_in_the_same_pass() {
    let request = chat(
        r#"{"model":"m","temperature":0.7,"n":2,"max_tokens":9,"max_completion_tokens":12,"seed":-4,"user":"u","stop":["a"],"messages":[{"role":"user","content":"x"}]}"#,
    )
    .unwrap();
    assert_eq!(request.temperature, Some(0.7));
    assert_eq!(request.choices, Some(2));
    assert_eq!(request.max_tokens, Some(12), "max_completion_tokens wins");
    let older = chat(
        r#"{"model":"m","max_tokens":9,"temperature":null,"messages":[{"role":"user","content":"x"}]}"#,
    )
    .unwrap();
    assert_eq!(older.max_tokens, Some(9));
    assert_eq!(older.temperature, None);
    assert_eq!(older.choices, None);
}

#[test]
fn error_messages_do_not_echo_values() {
    let error = refused(
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"user":{"secret":"sk-abc"}}"#,
    );
    assert_eq!(error.param.as_deref(), Some("user"));
    assert!(!error.message.contains("sk-abc"));
}

#[test]
fn embeddings_inputs_are_checked() {
    let request =
        EmbeddingsRequest::parse(br#"{"model":"e","input":["a","b"],"encoding_format":"base64"}"#)
            .unwrap();
    assert_eq!(request.input.items().len(), 2);
    assert!(request.base64);
    assert_eq!(
        String::from_utf8(request.encode("up")).unwrap(),
        r#"{"model":"up","input":["a","b"],"encoding_format":"base64"}"#
    );
    // Named as the upstream names it: as it came.
    let body = br#"{"input": "a", "model": "e"}"#;
    assert_eq!(
        EmbeddingsRequest::parse(body).unwrap().encode("e"),
        body.to_vec()
    );
    for (body, param) in [
        (r#"{"model":"e"}"#, "input"),
        (r#"{"model":"e","input":[]}"#, "input"),
        (r#"{"model":"e","input":{"a":1}}"#, "input"),
        (
            r#"{"model":"e","input":"x","encoding_format":"hex"}"#,
            "encoding_format",
        ),
        (r#"{"model":"e","input":"x","dimensions":0}"#, "dimensions"),
    ] {
        let error = EmbeddingsRequest::parse(body.as_bytes()).unwrap_err();
        assert_eq!(error.param.as_deref(), Some(param), "{body}");
    }
    let tokens = EmbeddingsRequest::parse(br#"{"model":"e","input":[[1,2],[3]]}"#).unwrap();
    assert_eq!(
        tokens.input,
        EmbeddingInput::TokenLists(vec![vec![1, 2], vec![3]])
    );
}

#[test]
fn completions_are_checked_and_their_usage_read() {
    let (usage, info) = check_completion(
        br#"{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":2}}}"#,
    )
    .unwrap();
    assert_eq!(info.id.as_deref(), Some("x"));
    assert_eq!(info.model, None);
    assert!(info.finish_reasons.is_empty());
    assert_eq!(
        usage,
        switchboard_core::Usage {
            input_tokens: Some(3),
            output_tokens: Some(4),
            cached_input_tokens: Some(1),
            reasoning_tokens: Some(2),
            cache_write_tokens: None,
        }
    );
    // Id, model and each choice's finish reason are read in the same pass;
    // an id that is not a string is left out, not refused.
    let (_, info) = check_completion(
        br#"{"id":7,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"finish_reason":"stop"},{"index":1,"finish_reason":"len\u0067th"},{"index":2,"finish_reason":null}]}"#,
    )
    .unwrap();
    assert_eq!(info.id, None);
    assert_eq!(info.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(info.finish_reasons, ["stop", "length"]);
    assert!(check_completion(b"<html>bad gateway</html>").is_err());
    assert!(check_completion(br#"{"object":"chat.completion"}"#).is_err());
    assert!(check_embeddings(br#"{"object":"list","data":[]}"#).is_ok());
    assert!(check_embeddings(br#"{"object":"list"}"#).is_err());
}

#[test]
fn upstream_errors_are_read_in_every_common_shape() {
    let openai = UpstreamErrorBody::parse(
        br#"{"error":{"message":"bad","type":"invalid_request_error","param":"temperature","code":"x"}}"#,
    );
    assert_eq!(openai.message.as_deref(), Some("bad"));
    assert_eq!(openai.param.as_deref(), Some("temperature"));
    assert_eq!(
        UpstreamErrorBody::parse(br#"{"error":"plain"}"#)
            .message
            .as_deref(),
        Some("plain")
    );
    assert_eq!(
        UpstreamErrorBody::parse(br#"{"detail":"fastapi"}"#)
            .message
            .as_deref(),
        Some("fastapi")
    );
    assert_eq!(
        UpstreamErrorBody::parse(br#"{"error":{"message":"n","code":429}}"#)
            .code
            .as_deref(),
        Some("429")
    );
    assert_eq!(
        UpstreamErrorBody::parse(b"garbage"),
        UpstreamErrorBody::default()
    );
}

#[test]
fn chunks_report_usage_and_errors() {
    let info = inspect_chunk(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#)
        .unwrap();
    assert!(info.usage_only);
    assert_eq!(info.usage.unwrap().output_tokens, Some(2));
    let normal = inspect_chunk(r#"{"choices":[{"delta":{}}],"usage":null}"#).unwrap();
    assert!(!normal.usage_only && normal.usage.is_none());
    assert!(normal.finish_reasons.is_empty() && normal.id.is_none());
    let last = inspect_chunk(
        r#"{"id":"chatcmpl-1","model":"m-1","choices":[{"delta":{},"finish_reason":"tool_calls"},{"delta":{},"finish_reason":null}]}"#,
    )
    .unwrap();
    assert_eq!(
        last.id.and_then(response::json_text).as_deref(),
        Some("chatcmpl-1")
    );
    assert_eq!(
        last.model.and_then(response::json_text).as_deref(),
        Some("m-1")
    );
    let reasons: Vec<_> = last
        .finish_reasons
        .iter()
        .filter_map(|reason| response::json_text(reason))
        .collect();
    assert_eq!(reasons, ["tool_calls"]);
    let error = inspect_chunk(r#"{"error":{"message":"boom"}}"#).unwrap();
    assert_eq!(error.error.unwrap().message.as_deref(), Some("boom"));
    assert!(inspect_chunk("nope").is_err());
    assert_eq!(
        response::strip_null_usage(r#"{"a":1,"usage":null}"#).as_deref(),
        Some(r#"{"a":1}"#)
    );
    assert_eq!(
        response::strip_null_usage(r#"{"usage":null,"a":1}"#).as_deref(),
        Some(r#"{"a":1}"#)
    );
    assert_eq!(
        response::strip_null_usage(r#"{"a":"\"usage\":null"}"#),
        None
    );
    assert_eq!(
        response::strip_null_usage(r#"{"a": 1, "usage" : null, "b": 2}"#).as_deref(),
        Some(r#"{"a": 1, "b": 2}"#)
    );
    assert_eq!(
        response::strip_null_usage(r#"{ "usage": null , "b": {"usage": null}}"#).as_deref(),
        Some(r#"{"b": {"usage": null}}"#)
    );
    assert_eq!(response::strip_null_usage(r#"{"b":{"usage":null}}"#), None);
    assert_eq!(
        response::strip_null_usage(r#"{"usage":{"prompt_tokens":1}}"#),
        None
    );
    assert_eq!(
        response::strip_null_usage(r#"{"usage":null}"#).as_deref(),
        Some("{}")
    );
}

#[test]
fn chunks_tell_content_from_the_opening_role() {
    let content = |data: &str| inspect_chunk(data).unwrap().has_content;
    assert!(!content(
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#
    ));
    assert!(!content(
        r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}"#
    ));
    assert!(content(
        r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#
    ));
    assert!(content(
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c"}]}}]}"#
    ));
    assert!(content(
        r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#
    ));
    assert!(!content(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#));
}

#[test]
fn error_bodies_have_openais_shape() {
    let body = ErrorBody {
        message: "m",
        kind: "invalid_request_error",
        param: None,
        code: Some("c"),
    }
    .to_json();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"error":{"message":"m","type":"invalid_request_error","param":null,"code":"c"}}"#
    );
}
