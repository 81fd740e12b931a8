//! Decisions the gateway makes about a request, kept free of IO so that
//! they can be tested exhaustively: which deployment of a model group takes
//! the next attempt (`routing`), whether a deployment is healthy enough to
//! try (`health`) and has capacity left (`capacity`), and how long to wait before a retry (`backoff`). Budgets
//! and rate limits belong here too, behind traits that the store crate
//! implements for shared state.

pub mod backoff;
pub mod capacity;
pub mod health;
pub mod routing;

pub use health::{CircuitSettings, Failure, Health, HealthSnapshot};
pub use routing::{MemberSpec, ModelGroup, Pick, Strategy};
