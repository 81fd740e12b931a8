//! Relaying an OpenAI event stream: upstream bytes in, one `RelayEvent` per
//! upstream event out, as soon as each event is complete.
//!
//! Each `data:` payload is checked and passed on unchanged, except that the
//! usage the gateway asked for on the client's behalf is taken out again
//! (the final usage-only chunk, and the `"usage":null` member of the other
//! chunks), so a client that did not ask sees what the upstream would have
//! sent it. A stream that stops without `data: [DONE]`, goes silent for
//! longer than the idle timeout, or reports an error, ends with `Failed`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_dialects::openai::{inspect_chunk, response::strip_null_usage};
use switchboard_dialects::sse::{SseDecoder, SseEvent, frame_data};

use crate::{RelayEvent, RelayStream, TimeoutPhase, UpstreamError};

use crate::transport::ByteStream;

struct RelayState {
    body: ByteStream,
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    queue: VecDeque<RelayEvent>,
    idle_timeout: Duration,
    forward_usage: bool,
    strip_null_usage: bool,
    finished: bool,
}

pub(crate) fn relay_openai_stream(
    body: ByteStream,
    idle_timeout: Duration,
    forward_usage: bool,
    strip_null_usage: bool,
) -> RelayStream {
    let state = RelayState {
        body,
        decoder: SseDecoder::default(),
        events: Vec::new(),
        queue: VecDeque::new(),
        idle_timeout,
        forward_usage,
        strip_null_usage,
        finished: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        |mut state| async move {
            loop {
                if let Some(event) = state.queue.pop_front() {
                    return Some((event, state));
                }
                if state.finished {
                    return None;
                }
                state.pull().await;
            }
        },
    ))
}

impl RelayState {
    /// Reads the next piece of the body and queues what it completes.
    async fn pull(&mut self) {
        match tokio::time::timeout(self.idle_timeout, self.body.next()).await {
            Err(_) => self.fail(UpstreamError::Timeout {
                phase: TimeoutPhase::StreamIdle,
            }),
            Ok(Some(Err(error))) => self.fail(error),
            Ok(Some(Ok(bytes))) => {
                if let Err(error) = self.decoder.feed(&bytes, &mut self.events) {
                    self.fail(UpstreamError::InvalidResponse(format!(
                        "broken event stream: {error}"
                    )));
                    return;
                }
                self.take_events();
            }
            Ok(None) => {
                let _ = self.decoder.finish(&mut self.events);
                self.take_events();
                if !self.finished {
                    self.fail(UpstreamError::InvalidResponse(
                        "the upstream closed the stream before `data: [DONE]`".to_owned(),
                    ));
                }
            }
        }
    }

    fn take_events(&mut self) {
        let events = std::mem::take(&mut self.events);
        for event in &events {
            if self.finished {
                break;
            }
            self.take_event(event);
        }
        self.events = events;
        self.events.clear();
    }

    fn take_event(&mut self, event: &SseEvent) {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.queue.push_back(RelayEvent::Done);
            self.finished = true;
            return;
        }
        if data.is_empty() {
            return;
        }
        let info = match inspect_chunk(data) {
            Ok(info) => info,
            Err(error) => {
                self.fail(UpstreamError::InvalidResponse(error.0));
                return;
            }
        };
        if let Some(body) = info.error {
            self.fail(UpstreamError::InStream { body });
            return;
        }
        if let Some(usage) = info.usage {
            self.queue.push_back(RelayEvent::Usage(usage));
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
        self.queue.push_back(RelayEvent::Data {
            frame: Bytes::from(frame),
            content: info.has_content,
        });
    }

    fn fail(&mut self, error: UpstreamError) {
        self.queue.push_back(RelayEvent::Failed(error));
        self.finished = true;
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

    fn usage() -> Usage {
        Usage {
            input_tokens: Some(5),
            output_tokens: Some(2),
            cached_input_tokens: Some(1),
            reasoning_tokens: None,
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
