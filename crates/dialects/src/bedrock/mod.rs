//! AWS Bedrock's Converse and ConverseStream APIs, converted to and from
//! `canon`, and the binary event-stream framing of the streaming call.
//!
//! `converse` writes requests and reads answers and error bodies;
//! `stream` reads ConverseStream's events; `eventstream` is the framing
//! underneath (with `crc`, its checksum); `embeddings` speaks Titan Text
//! Embeddings V2. All of it is pure: signing requests and choosing the
//! regional endpoint belong to the provider.

mod converse;
mod crc;
mod embeddings;
pub mod eventstream;
mod stream;

pub use converse::{decode_response, encode_request, parse_error};
pub use embeddings::{decode_embeddings_titan, encode_embeddings_titan};
pub use eventstream::{EventStreamDecoder, EventStreamError, HeaderValue, Message, encode_message};
pub use stream::StreamDecoder;

/// Fuzzing entry point: feeds `data` after its first byte, in pieces of
/// the first byte's size (0 meaning all at once), to both decoders,
/// ignoring their errors. It must never panic, and allocates at most a
/// small bounded buffer whatever the data claims.
#[doc(hidden)]
pub fn fuzz_event_stream(data: &[u8]) {
    use crate::canon::StreamDecoder as _;

    let Some((&piece, rest)) = data.split_first() else {
        return;
    };
    let piece = if piece == 0 {
        rest.len().max(1)
    } else {
        usize::from(piece)
    };
    const LIMIT: usize = 64 * 1024;
    let mut frames = EventStreamDecoder::new(LIMIT);
    let mut stream = StreamDecoder::with_max_message_bytes(LIMIT);
    let mut messages = Vec::new();
    let mut events = Vec::new();
    for chunk in rest.chunks(piece) {
        let _ = frames.feed(chunk, &mut messages);
        let _ = stream.feed(chunk, &mut events);
        messages.clear();
        events.clear();
    }
    let _ = frames.finish();
    let _ = stream.finish();
    let _ = stream.is_done();
}

#[cfg(test)]
mod tests;
