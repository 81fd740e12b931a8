//! Choosing a deployment within a model group.
//!
//! Today a group spreads requests over its deployments in turn. Weighted,
//! least-in-flight, latency- and cost-based strategies plug in here as
//! further `Strategy` variants without changing the callers, which only ask
//! for `pick` (or `candidates`, the order in which to try them).

use std::sync::atomic::{AtomicUsize, Ordering};

/// How a group chooses among its deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each deployment in turn.
    #[default]
    RoundRobin,
}

/// A public model name's deployments and the state its strategy keeps.
#[derive(Debug)]
pub struct ModelGroup<T> {
    members: Vec<T>,
    strategy: Strategy,
    next: AtomicUsize,
}

impl<T> ModelGroup<T> {
    /// A group must have at least one member; configuration validation
    /// guarantees it, and `pick` relies on it.
    pub fn new(members: Vec<T>, strategy: Strategy) -> Option<ModelGroup<T>> {
        if members.is_empty() {
            return None;
        }
        Some(ModelGroup {
            members,
            strategy,
            next: AtomicUsize::new(0),
        })
    }

    /// The deployment that should serve the next request.
    pub fn pick(&self) -> &T {
        match self.strategy {
            Strategy::RoundRobin => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                &self.members[turn % self.members.len()]
            }
        }
    }

    pub fn members(&self) -> &[T] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_groups_cannot_exist() {
        assert!(ModelGroup::<u8>::new(vec![], Strategy::RoundRobin).is_none());
    }

    #[test]
    fn round_robin_spreads_requests_evenly() {
        let group = ModelGroup::new(vec!['a', 'b', 'c'], Strategy::RoundRobin).unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            counts[(*group.pick() as u8 - b'a') as usize] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn single_member_always_wins() {
        let group = ModelGroup::new(vec![7], Strategy::RoundRobin).unwrap();
        assert!((0..10).all(|_| *group.pick() == 7));
    }
}
