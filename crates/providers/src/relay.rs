//! Relaying upstream streams: one driver (`relay`) reads the upstream's
//! body within the idle timeout and hands each read to a `Relay`, which
//! queues relay events in the client's dialect as soon as they are
//! complete. Three relays use it: OpenAI's event stream passed on to an
//! OpenAI client (here), Anthropic's passed on to an Anthropic client
//! (`anthropic.rs`), and any upstream's translated for another dialect's
//! client (`translate.rs`).
//!
//! The OpenAI relay passes each `data:` payload on unchanged once checked,
//! except that the usage the gateway asked for on the client's behalf is
//! taken out again (the final usage-only chunk, and the `"usage":null`
//! member of the other chunks), so a client that did not ask sees what the
//! upstream would have sent it. A stream that stops without its end marker,
//! goes silent for longer than the idle timeout, or reports an error, ends
//! with `Failed`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_core::ResponseInfo;
use switchboard_dialects::openai::inspect_chunk;
use switchboard_dialects::openai::response::{json_text, strip_null_usage};
use switchboard_dialects::sse::{SseDecoder, SseEvent, frame_data};

use crate::transport::ByteStream;
use crate::{RelayEvent, RelayStream, TimeoutPhase, UpstreamError};

/// The relay events a relay has completed and not yet handed on.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: VecDeque<RelayEvent>,
    finished: bool,
}

impl Outbox {
    pub(crate) fn push(&mut self, event: RelayEvent) {
        self.queue.push_back(event);
    }

    /// The stream ended well, having said this about itself; nothing
    /// follows.
    pub(crate) fn done_with(&mut self, info: ResponseInfo) {
        if !info.is_empty() {
            self.queue.push_back(RelayEvent::Info(info));
        }
        self.done();
    }

    /// The stream ended well; nothing follows.
    pub(crate) fn done(&mut self) {
        self.queue.push_back(RelayEvent::Done);
        self.finished = true;
    }

    /// The stream broke; nothing follows.
    pub(crate) fn fail(&mut self, error: UpstreamError) {
        self.queue.push_back(RelayEvent::Failed(error));
        self.finished = true;
    }

    pub(crate) fn finished(&self) -> bool {
        self.finished
    }
}

/// What one kind of relay does with the upstream's body.
pub(crate) trait Relay: Send + 'static {
    /// The next bytes read.
    fn bytes(&mut self, bytes: &[u8], out: &mut Outbox);
    /// The body ended; anything unfinished is a failure.
    fn end(&mut self, out: &mut Outbox);
    /// The stream's own end marker has been read, so a silence or a broken
    /// connection from now on ends the stream rather than fails it.
    fn complete(&self) -> bool {
        false
    }
    /// Nothing more is expected: end now rather than wait for the upstream
    /// to close its connection.
    fn is_final(&self) -> bool {
        false
    }
}

/// Drives `relay` over `body` until it finishes.
pub(crate) fn relay<R: Relay>(body: ByteStream, idle_timeout: Duration, relay: R) -> RelayStream {
    let state = (body, relay, Outbox::default());
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut body, mut relay, mut out)| async move {
            loop {
                if let Some(event) = out.queue.pop_front() {
                    return Some((event, (body, relay, out)));
                }
                if out.finished {
                    return None;
                }
                match tokio::time::timeout(idle_timeout, body.next()).await {
                    Ok(Some(Ok(bytes))) => {
                        relay.bytes(&bytes, &mut out);
                        if !out.finished && relay.is_final() {
                            relay.end(&mut out);
                        }
                    }
                    Ok(None) => relay.end(&mut out),
                    Err(_) | Ok(Some(Err(_))) if relay.complete() => relay.end(&mut out),
                    Err(_) => out.fail(UpstreamError::Timeout {
                        phase: TimeoutPhase::StreamIdle,
                    }),
                    Ok(Some(Err(error))) => out.fail(error),
                }
            }
        },
    ))
}

struct OpenAiRelay {
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    forward_usage: bool,
    strip_null_usage: bool,
    /// The id and model of the first chunk that names them, and every
    /// finish reason.
    info: ResponseInfo,
}

pub(crate) fn relay_openai_stream(
    body: ByteStream,
    idle_timeout: Duration,
    forward_usage: bool,
    strip_null_usage: bool,
) -> RelayStream {
    relay(
        body,
        idle_timeout,
        OpenAiRelay {
            decoder: SseDecoder::default(),
            events: Vec::new(),
            forward_usage,
            strip_null_usage,
            info: ResponseInfo::default(),
        },
    )
}

impl Relay for OpenAiRelay {
    fn bytes(&mut self, bytes: &[u8], out: &mut Outbox) {
        if let Err(error) = self.decoder.feed(bytes, &mut self.events) {
            out.fail(UpstreamError::InvalidResponse(format!(
                "broken event stream: {error}"
            )));
            return;
        }
        self.take_events(out);
    }

    fn end(&mut self, out: &mut Outbox) {
        let _ = self.decoder.finish(&mut self.events);
        self.take_events(out);
        if !out.finished() {
            out.fail(UpstreamError::InvalidResponse(
                "the upstream closed the stream before `data: [DONE]`".to_owned(),
            ));
        }
    }
}

impl OpenAiRelay {
    fn take_events(&mut self, out: &mut Outbox) {
        let events = std::mem::take(&mut self.events);
        for event in &events {
            if out.finished() {
                break;
            }
            self.take_event(event, out);
        }
        self.events = events;
        self.events.clear();
    }

    fn take_event(&mut self, event: &SseEvent, out: &mut Outbox) {
        let data = event.data.trim();
        if data == "[DONE]" {
            out.done_with(std::mem::take(&mut self.info));
            return;
        }
        if data.is_empty() {
            return;
        }
        let info = match inspect_chunk(data) {
            Ok(info) => info,
            Err(error) => {
                out.fail(UpstreamError::InvalidResponse(error.0));
                return;
            }
        };
        if let Some(body) = info.error {
            out.fail(UpstreamError::InStream { body });
            return;
        }
        if let Some(usage) = info.usage {
            out.push(RelayEvent::Usage(usage));
        }
        if self.info.id.is_none()
            && let Some(id) = info.id.and_then(json_text)
        {
            self.info.note_id(&id);
        }
        if self.info.model.is_none()
            && let Some(model) = info.model.and_then(json_text)
        {
            self.info.note_model(&model);
        }
        for reason in info.finish_reasons.iter().filter_map(|raw| json_text(raw)) {
            self.info.push_finish_reason(&reason);
        }
        if info.usage_only && !self.forward_usage {
            return;
        }
        let frame = match self
            .strip_null_usage
            .then(|| strip_null_usage(data))
            .flatten()
        {
            Some(stripped) => frame_data(stripped.as_bytes()),
            None => frame_data(data.as_bytes()),
        };
        out.push(RelayEvent::Data {
            frame: Bytes::from(frame),
            content: info.has_content,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::Usage;

    async fn relay(pieces: Vec<&'static str>, forward_usage: bool, strip: bool) -> Vec<RelayEvent> {
        let body: ByteStream = Box::pin(futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|piece| Ok(Bytes::from_static(piece.as_bytes()))),
        ));
        relay_openai_stream(body, Duration::from_secs(5), forward_usage, strip)
            .collect()
            .await
    }

    const CHUNK: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}"#;
    const USAGE: &str = r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":1}}}"#;

    /// What `CHUNK` and `USAGE` say about the answer: its id (no model, no
    /// finish reason).
    fn info() -> ResponseInfo {
        ResponseInfo {
            id: Some("c".to_owned()),
            ..ResponseInfo::default()
        }
    }

    fn usage() -> Usage {
        Usage {
            input_tokens: Some(5),
            output_tokens: Some(2),
            cached_input_tokens: Some(1),
            reasoning_tokens: None,
            cache_write_tokens: None,
        }
    }

    #[tokio::test]
    async fn usage_requested_by_the_gateway_is_hidden_from_the_client() {
        let stream = format!("data: {CHUNK}\n\ndata: {USAGE}\n\ndata: [DONE]\n\n").leak();
        let events = relay(vec![&stream[..20], &stream[20..]], false, true).await;
        assert_eq!(
            events,
            vec![
                RelayEvent::Data {
                    frame: Bytes::from(
                        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"
                    ),
                    content: true
                },
                RelayEvent::Usage(usage()),
                RelayEvent::Info(info()),
                RelayEvent::Done,
            ]
        );
    }

    #[tokio::test]
    async fn usage_requested_by_the_client_is_relayed_unchanged() {
        let stream = format!("data: {CHUNK}\n\ndata: {USAGE}\n\ndata: [DONE]\n\n").leak();
        let events = relay(vec![stream], true, false).await;
        assert_eq!(
            events,
            vec![
                RelayEvent::Data {
                    frame: Bytes::from(format!("data: {CHUNK}\n\n")),
                    content: true
                },
                RelayEvent::Usage(usage()),
                RelayEvent::Data {
                    frame: Bytes::from(format!("data: {USAGE}\n\n")),
                    content: false
                },
                RelayEvent::Info(info()),
                RelayEvent::Done,
            ]
        );
    }

    #[tokio::test]
    async fn a_stream_cut_before_done_fails() {
        let stream = format!("data: {CHUNK}\n\n").leak();
        let events = relay(vec![stream], false, false).await;
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[1], RelayEvent::Failed(UpstreamError::InvalidResponse(message)) if message.contains("[DONE]"))
        );
    }

    #[tokio::test]
    async fn an_error_inside_the_stream_fails_it() {
        let events = relay(
            vec!["data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n"],
            false,
            false,
        )
        .await;
        match &events[..] {
            [RelayEvent::Failed(UpstreamError::InStream { body })] => {
                assert_eq!(body.message.as_deref(), Some("overloaded"));
            }
            other => panic!("unexpected events {other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_in_the_stream_fails_it() {
        let events = relay(vec!["data: not json\n\n"], false, false).await;
        assert!(matches!(
            &events[..],
            [RelayEvent::Failed(UpstreamError::InvalidResponse(_))]
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_times_out() {
        let body: ByteStream = Box::pin(futures_util::stream::pending());
        let events: Vec<RelayEvent> =
            relay_openai_stream(body, Duration::from_secs(3), false, false)
                .collect()
                .await;
        assert_eq!(
            events,
            vec![RelayEvent::Failed(UpstreamError::Timeout {
                phase: TimeoutPhase::StreamIdle
            })]
        );
    }
}
