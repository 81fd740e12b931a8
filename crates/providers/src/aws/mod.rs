//! AWS request signing (SigV4) and credentials.
//!
//! `load_credentials` and `load_region` find what the AWS SDKs would find
//! (environment, then the shared credentials and config files), limited to
//! static keys; `sign` signs a request for a service such as Bedrock.

mod credentials;
mod profile;
mod sigv4;
#[cfg(test)]
mod sigv4_suite;

pub use credentials::{Credentials, load_credentials, load_region};
pub use sigv4::{SigningParams, sign};
