//! Decisions the gateway makes about a request, kept free of IO so that
//! they can be tested exhaustively: today, which deployment of a model group
//! serves a request. Fallback chains, circuit breakers, budgets and rate
//! limits belong here too, behind traits that the store crate implements
//! for shared state.

pub mod routing;

pub use routing::ModelGroup;
