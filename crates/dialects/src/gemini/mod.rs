//! Google Gemini's API: `generateContent`, `streamGenerateContent` (SSE) and
//! `batchEmbedContents`, converted to and from `canon`.
//!
//! Everything here speaks the Gemini API (`generativelanguage.googleapis.com`,
//! `v1beta`), whose JSON names are lowerCamelCase. The model is part of the
//! URL (`models/{model}:generateContent`), never of the chat body, so
//! building the URL is the provider's business, not this module's.
//!
//! Gemini has no tool-call ids: answers number their calls `call_0`,
//! `call_1`... and requests find a tool result's function name through the
//! call it answers. Thought signatures, which Gemini 3 requires back on the
//! function calls of the current turn, travel through `canon` as
//! `Part::Reasoning` (see `request.rs` and `response.rs`).

mod embeddings;
mod error;
mod request;
mod response;
mod stream;

pub use embeddings::{decode_embeddings, encode_embeddings};
pub use error::parse_error;
pub use request::encode_request;
pub use response::decode_response;
pub use stream::StreamDecoder;

#[cfg(test)]
mod tests;
