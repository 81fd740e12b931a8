//! Choosing a deployment within a model group.
//!
//! A group holds its members with their weights and health. `pick` returns
//! the member that should take the next attempt: among those whose circuit
//! lets traffic through, untried ones first, chosen by the group's
//! strategy. Latency-, cost- and headroom-based strategies plug in here as
//! further `Strategy` variants without changing the callers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::health::{CircuitSettings, Health};

/// How a group chooses among its deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each deployment in turn.
    #[default]
    RoundRobin,
    /// In proportion to each deployment's weight (smooth weighted round
    /// robin: deterministic, and no deployment gets a burst).
    Weighted,
    /// The deployment with the fewest requests in flight.
    LeastBusy,
}

/// A deployment of a group, with its weight and health.
#[derive(Debug)]
pub struct Member<T> {
    pub target: T,
    pub weight: u32,
    pub health: Health,
}

/// A public model name's deployments and the state its strategy keeps.
#[derive(Debug)]
pub struct ModelGroup<T> {
    members: Vec<Member<T>>,
    strategy: Strategy,
    next: AtomicUsize,
    /// Smooth weighted round robin's running weights.
    current_weights: Mutex<Vec<i64>>,
}

impl<T> ModelGroup<T> {
    /// A group must have at least one member; configuration validation
    /// guarantees it.
    pub fn new(
        members: Vec<(T, u32)>,
        strategy: Strategy,
        circuit: CircuitSettings,
    ) -> Option<ModelGroup<T>> {
        if members.is_empty() {
            return None;
        }
        let count = members.len();
        Some(ModelGroup {
            members: members
                .into_iter()
                .map(|(target, weight)| Member {
                    target,
                    weight: weight.max(1),
                    health: Health::new(circuit),
                })
                .collect(),
            strategy,
            next: AtomicUsize::new(0),
            current_weights: Mutex::new(vec![0; count]),
        })
    }

    pub fn members(&self) -> &[Member<T>] {
        &self.members
    }

    pub fn member(&self, index: usize) -> &Member<T> {
        &self.members[index]
    }

    /// The member for the next attempt: one whose circuit admits traffic at
    /// `now`, preferring members not in `tried`. `None` when every member's
    /// circuit is open.
    pub fn pick(&self, now: Instant, tried: &[usize]) -> Option<usize> {
        let untried: Vec<usize> = (0..self.members.len())
            .filter(|index| !tried.contains(index))
            .collect();
        let pool = if untried.is_empty() {
            (0..self.members.len()).collect()
        } else {
            untried
        };
        // Members whose circuit is closed come first; a half-open member is
        // admitted (as the single probe) only when no closed one is left.
        let closed: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&index| self.members[index].health.is_closed(now))
            .collect();
        if !closed.is_empty() {
            return Some(self.choose(&closed));
        }
        pool.into_iter()
            .find(|&index| self.members[index].health.try_probe(now))
    }

    fn choose(&self, candidates: &[usize]) -> usize {
        match self.strategy {
            Strategy::RoundRobin => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                candidates[turn % candidates.len()]
            }
            Strategy::LeastBusy => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                // Ties go round robin, so equal members share the load.
                let least = candidates
                    .iter()
                    .map(|&index| self.members[index].health.in_flight())
                    .min()
                    .unwrap_or(0);
                let idle: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&index| self.members[index].health.in_flight() == least)
                    .collect();
                idle[turn % idle.len()]
            }
            Strategy::Weighted => {
                let mut current = self
                    .current_weights
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let total: i64 = candidates
                    .iter()
                    .map(|&index| i64::from(self.members[index].weight))
                    .sum();
                let mut best = candidates[0];
                for &index in candidates {
                    current[index] += i64::from(self.members[index].weight);
                    if current[index] > current[best] {
                        best = index;
                    }
                }
                current[best] -= total;
                best
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::Failure;

    fn group(weights: &[u32], strategy: Strategy) -> ModelGroup<char> {
        let members = weights
            .iter()
            .enumerate()
            .map(|(index, weight)| ((b'a' + index as u8) as char, *weight))
            .collect();
        ModelGroup::new(members, strategy, CircuitSettings::default()).unwrap()
    }

    fn counts(group: &ModelGroup<char>, picks: usize) -> Vec<usize> {
        let now = Instant::now();
        let mut counts = vec![0; group.members().len()];
        for _ in 0..picks {
            counts[group.pick(now, &[]).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn empty_groups_cannot_exist() {
        assert!(
            ModelGroup::<u8>::new(vec![], Strategy::RoundRobin, CircuitSettings::default())
                .is_none()
        );
    }

    #[test]
    fn round_robin_spreads_requests_evenly() {
        assert_eq!(
            counts(&group(&[1, 1, 1], Strategy::RoundRobin), 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn weighted_follows_the_weights_smoothly() {
        let weighted = group(&[5, 1, 1], Strategy::Weighted);
        assert_eq!(counts(&weighted, 700), vec![500, 100, 100]);
        // Smooth: the heavy member never takes more than its share in a row.
        let now = Instant::now();
        let sequence: Vec<usize> = (0..7).map(|_| weighted.pick(now, &[]).unwrap()).collect();
        assert_eq!(sequence.iter().filter(|&&index| index == 0).count(), 5);
        assert_ne!(sequence[..3], [0, 0, 0]);
    }

    #[test]
    fn least_busy_avoids_loaded_members() {
        let busy = group(&[1, 1], Strategy::LeastBusy);
        let _first = busy.member(0).health.start();
        let _second = busy.member(0).health.start();
        assert!((0..10).all(|_| busy.pick(Instant::now(), &[]) == Some(1)));
    }

    #[test]
    fn untried_members_come_first() {
        let round = group(&[1, 1, 1], Strategy::RoundRobin);
        let now = Instant::now();
        let first = round.pick(now, &[]).unwrap();
        let second = round.pick(now, &[first]).unwrap();
        let third = round.pick(now, &[first, second]).unwrap();
        let mut all = vec![first, second, third];
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2]);
        // Everything tried: any healthy member may be retried.
        assert!(round.pick(now, &[0, 1, 2]).is_some());
    }

    #[test]
    fn members_with_open_circuits_are_skipped_until_their_probe() {
        let settings = CircuitSettings {
            failures_to_open: 1,
            cooldown: Duration::from_secs(10),
        };
        let pair =
            ModelGroup::new(vec![('a', 1), ('b', 1)], Strategy::RoundRobin, settings).unwrap();
        let start = Instant::now();
        pair.member(0)
            .health
            .record_failure(Failure::ServerError, start);
        assert!((0..10).all(|_| pair.pick(start, &[]) == Some(1)));
        pair.member(1)
            .health
            .record_failure(Failure::ServerError, start);
        assert_eq!(pair.pick(start, &[]), None, "every circuit is open");
        // After the cooldown exactly one probe is let through.
        let later = start + Duration::from_secs(11);
        let probe = pair.pick(later, &[]).unwrap();
        let other = pair.pick(later, &[]).unwrap();
        assert_ne!(probe, other);
        assert_eq!(pair.pick(later, &[]), None);
    }
}
