//! Choosing a deployment within a model group.
//!
//! `pick` narrows the group's members step by step, then lets the
//! strategy choose:
//!
//! 1. members carrying every tag the request asks for;
//! 2. members whose per-minute capacity is not used up (the chosen
//!    member's is taken in the same step; with a shared limiter, members
//!    it said are full are skipped, and the caller reserves the rest);
//! 3. members not tried yet for this request (all of them once every one
//!    has been tried);
//! 4. members whose circuit is closed (or, when none is, one whose
//!    cooldown is over, as the half-open probe);
//! 5. the best priority tier among those (lower numbers first);
//! 6. the strategy: round robin, weighted, least busy, lowest latency
//!    (power of two choices over a decaying average, so one fast deployment
//!    is not stampeded), lowest cost, or most rate-limit headroom.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchboard_core::mix::splitmix64;

use crate::capacity::Capacity;
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
    /// The lower recent latency of two deployments drawn at random;
    /// deployments without a measurement yet are tried first.
    LowestLatency,
    /// The cheapest deployment by its declared price.
    LowestCost,
    /// The deployment whose upstream reported the most rate-limit room left.
    MostHeadroom,
}

/// What the configuration says about one member.
#[derive(Debug)]
pub struct MemberSpec<T> {
    pub target: T,
    pub weight: u32,
    /// Lower tiers are used first; higher ones only when no lower member
    /// can take the request.
    pub priority: u32,
    pub tags: Vec<String>,
    /// Price of a typical request's tokens (input plus output per million),
    /// for the lowest-cost strategy.
    pub price: Option<f64>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    /// Live state to keep (after a configuration reload), used when its
    /// settings match the new ones.
    pub carried: Option<(Arc<Health>, Arc<Capacity>)>,
}

impl<T> MemberSpec<T> {
    /// A member with no weight, priority, tag, price or capacity settings.
    pub fn plain(target: T) -> MemberSpec<T> {
        MemberSpec {
            target,
            weight: 1,
            priority: 0,
            tags: Vec::new(),
            price: None,
            requests_per_minute: None,
            tokens_per_minute: None,
            carried: None,
        }
    }
}

/// A deployment of a group, with its settings and live state.
#[derive(Debug)]
pub struct Member<T> {
    pub target: T,
    pub weight: u32,
    pub priority: u32,
    pub tags: Vec<String>,
    pub price: Option<f64>,
    pub health: Arc<Health>,
    pub capacity: Arc<Capacity>,
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

/// What a request asks of the member that serves it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick<'a> {
    /// Members already tried for this request (picked again only once
    /// every other one has been tried).
    pub tried: &'a [usize],
    /// Members that must not serve this request at all (their credentials
    /// were refused).
    pub excluded: &'a [usize],
    /// Tags the member must carry.
    pub tags: &'a [String],
    /// Any uniformly distributed value (for the latency strategy's draw).
    pub random: u64,
    /// A hash of the conversation's prefix, when prompt-cache affinity is
    /// on: requests with the same key go to the same member while it can
    /// serve (rendezvous hashing, so a member leaving moves only its share).
    pub affinity: Option<u64>,
    /// The members' per-minute capacity is counted by a shared limiter,
    /// which the caller asks: members marked full are skipped, but nothing
    /// is taken here.
    pub shared_capacity: bool,
}

impl<T> ModelGroup<T> {
    /// A group must have at least one member; configuration validation
    /// guarantees it.
    pub fn new(
        members: Vec<MemberSpec<T>>,
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
                .map(|spec| {
                    let (health, capacity) = match spec.carried {
                        Some((health, capacity))
                            if health.settings() == circuit
                                && capacity.limits()
                                    == (spec.requests_per_minute, spec.tokens_per_minute) =>
                        {
                            (health, capacity)
                        }
                        _ => (
                            Arc::new(Health::new(circuit)),
                            Arc::new(Capacity::new(
                                spec.requests_per_minute,
                                spec.tokens_per_minute,
                            )),
                        ),
                    };
                    Member {
                        target: spec.target,
                        weight: spec.weight.max(1),
                        priority: spec.priority,
                        tags: spec.tags,
                        price: spec.price,
                        health,
                        capacity,
                    }
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

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The member for the next attempt, or `None` when no member may take
    /// it now (every circuit open, capacity used up, or no member with the
    /// tags).
    /// The chosen member's per-minute capacity is taken in the same step
    /// (unless `shared_capacity`).
    pub fn pick(&self, now: Instant, request: Pick<'_>) -> Option<usize> {
        let mut excluded: Vec<usize> = request.excluded.to_vec();
        loop {
            let chosen = self.choose_member(now, request, &excluded)?;
            if request.shared_capacity || self.members[chosen].capacity.try_take(now) {
                return Some(chosen);
            }
            // Another request took the last of its capacity meanwhile.
            self.members[chosen].health.release_probe(now);
            excluded.push(chosen);
        }
    }

    fn choose_member(&self, now: Instant, request: Pick<'_>, excluded: &[usize]) -> Option<usize> {
        let eligible: Vec<usize> = (0..self.members.len())
            .filter(|&index| {
                let member = &self.members[index];
                !excluded.contains(&index)
                    && request.tags.iter().all(|tag| member.tags.contains(tag))
                    && member.capacity.admits(now)
            })
            .collect();
        let untried: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|index| !request.tried.contains(index))
            .collect();
        let pool = if untried.is_empty() {
            eligible
        } else {
            untried
        };
        // A member whose cooldown is over takes this request as its single
        // probe, so it comes back even while its siblings are healthy; if
        // the probe fails, the request is retried elsewhere.
        if let Some(probe) = pool
            .iter()
            .copied()
            .find(|&index| self.members[index].health.try_probe(now))
        {
            return Some(probe);
        }
        let closed: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&index| self.members[index].health.is_closed(now))
            .collect();
        if closed.is_empty() {
            return None;
        }
        let best_tier = closed
            .iter()
            .map(|&index| self.members[index].priority)
            .min()?;
        let tier: Vec<usize> = closed
            .into_iter()
            .filter(|&index| self.members[index].priority == best_tier)
            .collect();
        if let Some(key) = request.affinity {
            return tier
                .into_iter()
                .max_by_key(|&index| affinity_score(key, index));
        }
        Some(self.choose(&tier, request.random))
    }

    fn choose(&self, candidates: &[usize], random: u64) -> usize {
        match self.strategy {
            Strategy::RoundRobin => self.in_turn(candidates),
            Strategy::LeastBusy => {
                let least = candidates
                    .iter()
                    .map(|&index| self.members[index].health.in_flight())
                    .min()
                    .unwrap_or(0);
                self.in_turn_where(candidates, |member| member.health.in_flight() == least)
            }
            Strategy::LowestCost => {
                let price = |index: usize| self.members[index].price.unwrap_or(f64::INFINITY);
                let cheapest = candidates
                    .iter()
                    .map(|&index| price(index))
                    .fold(f64::INFINITY, f64::min);
                self.in_turn_where(candidates, |member| {
                    member.price.unwrap_or(f64::INFINITY) <= cheapest
                })
            }
            Strategy::MostHeadroom => {
                // Unreported headroom counts as full: nothing says otherwise.
                let room = |member: &Member<T>| member.health.headroom().unwrap_or(1.0);
                let most = candidates
                    .iter()
                    .map(|&index| room(&self.members[index]))
                    .fold(0.0, f64::max);
                self.in_turn_where(candidates, |member| room(member) >= most)
            }
            Strategy::LowestLatency => {
                // Measure every member before comparing, one request at a
                // time, so a new member is not flooded before it answers.
                if let Some(&unmeasured) = candidates.iter().find(|&&index| {
                    let health = &self.members[index].health;
                    health.latency().is_none() && health.in_flight() == 0
                }) {
                    return unmeasured;
                }
                let measured: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&index| self.members[index].health.latency().is_some())
                    .collect();
                let candidates: &[usize] = if measured.is_empty() {
                    candidates
                } else {
                    &measured
                };
                if candidates.len() == 1 {
                    return candidates[0];
                }
                let first = (random % candidates.len() as u64) as usize;
                let mut second = ((random >> 32) % (candidates.len() as u64 - 1)) as usize;
                if second >= first {
                    second += 1;
                }
                let (first, second) = (candidates[first], candidates[second]);
                let latency = |index: usize| self.members[index].health.latency();
                if latency(second) < latency(first) {
                    second
                } else {
                    first
                }
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

    fn in_turn(&self, candidates: &[usize]) -> usize {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        candidates[turn % candidates.len()]
    }

    /// Round robin among the candidates that satisfy `keep` (ties share).
    fn in_turn_where(&self, candidates: &[usize], keep: impl Fn(&Member<T>) -> bool) -> usize {
        let kept: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&index| keep(&self.members[index]))
            .collect();
        if kept.is_empty() {
            self.in_turn(candidates)
        } else {
            self.in_turn(&kept)
        }
    }
}

/// Rendezvous score of a member for an affinity key.
fn affinity_score(key: u64, member: usize) -> u64 {
    splitmix64(key ^ (member as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::Failure;

    fn specs(weights: &[u32]) -> Vec<MemberSpec<char>> {
        weights
            .iter()
            .enumerate()
            .map(|(index, weight)| MemberSpec {
                weight: *weight,
                ..MemberSpec::plain((b'a' + index as u8) as char)
            })
            .collect()
    }

    fn group(weights: &[u32], strategy: Strategy) -> ModelGroup<char> {
        ModelGroup::new(specs(weights), strategy, CircuitSettings::default()).unwrap()
    }

    fn pick(group: &ModelGroup<char>) -> usize {
        group.pick(Instant::now(), Pick::default()).unwrap()
    }

    fn counts(group: &ModelGroup<char>, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; group.members().len()];
        for _ in 0..picks {
            counts[pick(group)] += 1;
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
        let sequence: Vec<usize> = (0..7).map(|_| pick(&weighted)).collect();
        assert_eq!(sequence.iter().filter(|&&index| index == 0).count(), 5);
        assert_ne!(sequence[..3], [0, 0, 0]);
    }

    #[test]
    fn least_busy_avoids_loaded_members() {
        let busy = group(&[1, 1], Strategy::LeastBusy);
        let _first = busy.member(0).health.start();
        let _second = busy.member(0).health.start();
        assert!((0..10).all(|_| pick(&busy) == 1));
    }

    #[test]
    fn lowest_latency_measures_everyone_then_prefers_the_faster() {
        let fast = group(&[1, 1, 1], Strategy::LowestLatency);
        // Unmeasured members are tried first.
        assert_eq!(pick(&fast), 0);
        fast.member(0)
            .health
            .record_latency(Duration::from_millis(300));
        assert_eq!(pick(&fast), 1);
        fast.member(1)
            .health
            .record_latency(Duration::from_millis(10));
        fast.member(2)
            .health
            .record_latency(Duration::from_millis(200));
        let mut counts = [0usize; 3];
        for random in 0..3000u64 {
            let seed = random.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let request = Pick {
                random: seed,
                ..Pick::default()
            };
            counts[fast.pick(Instant::now(), request).unwrap()] += 1;
        }
        // Two choices: the fastest wins every draw it is in (2 of 3), the
        // slowest none, so no single member takes everything.
        assert!(counts[1] > counts[2] && counts[2] > counts[0], "{counts:?}");
        assert_eq!(counts[0], 0);
        assert!(counts[1] < 3000);
    }

    #[test]
    fn lowest_cost_prefers_the_cheapest_and_shares_ties() {
        let mut members = specs(&[1, 1, 1]);
        members[0].price = Some(15.0);
        members[1].price = Some(0.6);
        members[2].price = Some(0.6);
        let cheap =
            ModelGroup::new(members, Strategy::LowestCost, CircuitSettings::default()).unwrap();
        assert_eq!(counts(&cheap, 100), vec![0, 50, 50]);
    }

    #[test]
    fn most_headroom_follows_the_reported_rate_limits() {
        let roomy = group(&[1, 1], Strategy::MostHeadroom);
        roomy.member(0).health.record_headroom(0.1);
        roomy.member(1).health.record_headroom(0.8);
        assert_eq!(counts(&roomy, 10), vec![0, 10]);
    }

    #[test]
    fn priority_tiers_are_used_in_order() {
        let mut members = specs(&[1, 1, 1]);
        members[0].priority = 1;
        members[1].priority = 0;
        members[2].priority = 1;
        let tiers = ModelGroup::new(
            members,
            Strategy::RoundRobin,
            CircuitSettings {
                failures_to_open: 1,
                cooldown: Duration::from_secs(10),
            },
        )
        .unwrap();
        assert_eq!(counts(&tiers, 10), vec![0, 10, 0]);
        tiers
            .member(1)
            .health
            .record_failure(Failure::ServerError, Instant::now());
        assert_eq!(counts(&tiers, 10), vec![5, 0, 5]);
    }

    #[test]
    fn tags_restrict_the_members() {
        let mut members = specs(&[1, 1]);
        members[1].tags = vec!["eu".to_owned(), "gpu".to_owned()];
        let tagged =
            ModelGroup::new(members, Strategy::RoundRobin, CircuitSettings::default()).unwrap();
        let eu = ["eu".to_owned()];
        let request = Pick {
            tags: &eu,
            ..Pick::default()
        };
        assert!((0..5).all(|_| tagged.pick(Instant::now(), request) == Some(1)));
        let nowhere = ["us".to_owned()];
        assert_eq!(
            tagged.pick(
                Instant::now(),
                Pick {
                    tags: &nowhere,
                    ..Pick::default()
                }
            ),
            None
        );
    }

    #[test]
    fn members_at_capacity_are_skipped() {
        let mut members = specs(&[1, 1]);
        members[0].requests_per_minute = Some(1);
        let limited =
            ModelGroup::new(members, Strategy::RoundRobin, CircuitSettings::default()).unwrap();
        let now = Instant::now();
        assert_eq!(limited.pick(now, Pick::default()), Some(0));
        assert!((0..5).all(|_| limited.pick(now, Pick::default()) == Some(1)));
    }

    #[test]
    fn shared_capacity_is_not_taken_but_its_marks_are_heeded() {
        let mut members = specs(&[1, 1]);
        members[0].requests_per_minute = Some(1);
        let limited =
            ModelGroup::new(members, Strategy::RoundRobin, CircuitSettings::default()).unwrap();
        let now = Instant::now();
        let shared = Pick {
            shared_capacity: true,
            ..Pick::default()
        };
        let picks: Vec<usize> = (0..6).map(|_| limited.pick(now, shared).unwrap()).collect();
        assert_eq!(
            picks,
            [0, 1, 0, 1, 0, 1],
            "the limiter counts, not the group"
        );
        limited
            .member(0)
            .capacity
            .mark_full_until(now + std::time::Duration::from_secs(30));
        assert!((0..4).all(|_| limited.pick(now, shared) == Some(1)));
        let later = now + std::time::Duration::from_secs(30);
        let back: Vec<Option<usize>> = (0..2).map(|_| limited.pick(later, shared)).collect();
        assert!(back.contains(&Some(0)), "{back:?}");
    }

    #[test]
    fn affinity_keeps_a_conversation_on_one_member_while_it_serves() {
        let group = ModelGroup::new(
            specs(&[1, 1, 1, 1]),
            Strategy::RoundRobin,
            CircuitSettings {
                failures_to_open: 1,
                cooldown: Duration::from_secs(10),
            },
        )
        .unwrap();
        let now = Instant::now();
        let request = |key| Pick {
            affinity: Some(key),
            ..Pick::default()
        };
        let home = group.pick(now, request(42)).unwrap();
        assert!((0..20).all(|_| group.pick(now, request(42)) == Some(home)));
        // Different conversations spread over the members.
        let homes: std::collections::HashSet<usize> = (0..64u64)
            .map(|key| group.pick(now, request(key)).unwrap())
            .collect();
        assert!(homes.len() >= 3, "{homes:?}");
        // When its member rests, the conversation moves, and comes back later.
        group
            .member(home)
            .health
            .record_failure(Failure::ServerError, now);
        let away = group.pick(now, request(42)).unwrap();
        assert_ne!(away, home);
        group.member(home).health.record_success();
        assert_eq!(group.pick(now, request(42)), Some(home));
    }

    #[test]
    fn a_cooled_down_member_is_probed_even_while_its_siblings_serve() {
        let settings = CircuitSettings {
            failures_to_open: 1,
            cooldown: Duration::from_secs(10),
        };
        let pair = ModelGroup::new(specs(&[1, 1]), Strategy::RoundRobin, settings).unwrap();
        let start = Instant::now();
        pair.member(0)
            .health
            .record_failure(Failure::ServerError, start);
        assert!((0..10).all(|_| pair.pick(start, Pick::default()) == Some(1)));
        let later = start + Duration::from_secs(10);
        assert_eq!(pair.pick(later, Pick::default()), Some(0), "the probe");
        assert_eq!(
            pair.pick(later, Pick::default()),
            Some(1),
            "one probe at a time"
        );
        pair.member(0).health.record_success();
        let mut counts = [0; 2];
        for _ in 0..10 {
            counts[pair.pick(later, Pick::default()).unwrap()] += 1;
        }
        assert_eq!(counts, [5, 5], "back in rotation");
    }

    #[test]
    fn excluded_members_are_never_picked() {
        let trio = group(&[1, 1, 1], Strategy::RoundRobin);
        let request = Pick {
            tried: &[0, 1, 2],
            excluded: &[0, 2],
            ..Pick::default()
        };
        assert!((0..6).all(|_| trio.pick(Instant::now(), request) == Some(1)));
        let none = Pick {
            excluded: &[0, 1, 2],
            ..Pick::default()
        };
        assert_eq!(trio.pick(Instant::now(), none), None);
    }

    #[test]
    fn untried_members_come_first() {
        let round = group(&[1, 1, 1], Strategy::RoundRobin);
        let now = Instant::now();
        let first = round.pick(now, Pick::default()).unwrap();
        let second = round
            .pick(
                now,
                Pick {
                    tried: &[first],
                    ..Pick::default()
                },
            )
            .unwrap();
        let third = round
            .pick(
                now,
                Pick {
                    tried: &[first, second],
                    ..Pick::default()
                },
            )
            .unwrap();
        let mut all = vec![first, second, third];
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2]);
        assert!(
            round
                .pick(
                    now,
                    Pick {
                        tried: &[0, 1, 2],
                        ..Pick::default()
                    }
                )
                .is_some()
        );
    }

    #[test]
    fn members_with_open_circuits_are_skipped_until_their_probe() {
        let settings = CircuitSettings {
            failures_to_open: 1,
            cooldown: Duration::from_secs(10),
        };
        let pair = ModelGroup::new(specs(&[1, 1]), Strategy::RoundRobin, settings).unwrap();
        let start = Instant::now();
        pair.member(0)
            .health
            .record_failure(Failure::ServerError, start);
        assert!((0..10).all(|_| pair.pick(start, Pick::default()) == Some(1)));
        pair.member(1)
            .health
            .record_failure(Failure::ServerError, start);
        assert_eq!(
            pair.pick(start, Pick::default()),
            None,
            "every circuit is open"
        );
        let later = start + Duration::from_secs(11);
        let probe = pair.pick(later, Pick::default()).unwrap();
        let other = pair.pick(later, Pick::default()).unwrap();
        assert_ne!(probe, other);
        assert_eq!(pair.pick(later, Pick::default()), None);
    }
}
