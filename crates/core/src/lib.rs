//! Domain types that every other Switchboard crate speaks: which endpoint a
//! request used, the token usage a model reported, what an answer says
//! about itself, and the record kept for every request. This crate does no
//! IO and knows nothing of HTTP, SQL or any vendor's wire format, so that
//! all other crates can depend on it freely.

pub mod cost;
pub mod hex;
pub mod keys;
pub mod mix;
pub mod record;
pub mod request_id;
pub mod response;
pub mod siphash;
pub mod time;
pub mod usage;

pub use record::{AttemptDetail, Bodies, Endpoint, Outcome, RequestRecord};
pub use response::ResponseInfo;
pub use usage::Usage;
