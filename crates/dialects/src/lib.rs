//! The wire formats Switchboard speaks, on both sides of the gateway, and
//! the Server-Sent Events codec they share.
//!
//! Everything here is pure and synchronous: bytes in, checked views and
//! bytes out. Nothing opens a socket or knows which deployment a request
//! goes to. Each API family gets one module (`openai`, `anthropic`, `gemini`,
//! `bedrock`), each converting to and from the one internal model in
//! `canon`, so that a new protocol is a new module beside the others rather
//! than a change to them.

pub mod anthropic;
pub mod bedrock;
pub mod canon;
pub mod gemini;
pub mod openai;
mod scan;
pub mod sse;
