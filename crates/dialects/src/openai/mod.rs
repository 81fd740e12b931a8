//! OpenAI's API: chat completions, embeddings and models, as the official
//! SDKs send and expect them. Also the dialect of every OpenAI-compatible
//! server (Azure, vLLM, Ollama, Groq...).

pub mod canonical;
pub mod error;
pub mod request;
pub mod response;

pub use error::{ErrorBody, UpstreamErrorBody};
pub use request::{
    ChatRequest, EmbeddingInput, EmbeddingsRequest, RawJson, RequestError, RequestFields, Role,
};
pub use response::{ChunkInfo, InvalidResponse, check_completion, check_embeddings, inspect_chunk};

#[cfg(test)]
mod canonical_tests;
#[cfg(test)]
mod tests;
