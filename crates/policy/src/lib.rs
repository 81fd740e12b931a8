//! Decisions the gateway makes about a request, kept free of IO so that
//! they can be tested exhaustively: which deployment of a model group takes
//! the next attempt (`routing`), whether a deployment is healthy enough to
//! try (`health`) and has capacity left (`capacity`), how long to wait
//! before a retry (`backoff`), and whether a request's scopes (user, key,
//! team, deployment) leave room for it under their rate limits and budgets
//! (`limits`, behind a `Limiter` trait that the store crate implements for
//! state shared between instances).

pub mod backoff;
pub mod capacity;
pub mod health;
pub mod limits;
pub mod routing;

pub use health::{CircuitSettings, Failure, Health, HealthSnapshot};
pub use routing::{MemberSpec, ModelGroup, Pick, Strategy};
