//! Virtual keys on the request path: an in-memory index of every key by
//! the hash of its secret, rebuilt whenever the store's key version moves,
//! so that authenticating a request never waits on the database.
//!
//! Each instance checks the version every `REFRESH` (one small query), so a
//! key revoked through any instance stops working on every instance within
//! that time; the instance that made a change reloads at once.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use switchboard_core::keys::{KeyRecord, TeamRecord};
use switchboard_policy::limits::LimitFuture;
use switchboard_store::Database;
use switchboard_store::redis_limiter::{Reseed, SpentIn};
use tokio_util::sync::CancellationToken;

/// How often every instance checks for changed keys.
pub(crate) const REFRESH: Duration = Duration::from_millis(250);

/// What a secret starts with, so that it can be recognised (and found by
/// secret scanners) wherever it leaks.
pub(crate) const SECRET_PREFIX: &str = "sb-";

/// One key, with its team, as the request path needs it.
#[derive(Debug)]
pub(crate) struct KeyEntry {
    pub record: KeyRecord,
    pub team: Option<Arc<TeamRecord>>,
    /// The key's and its team's ids, made once here and shared by each
    /// request's limiter scopes and record rather than copied per request.
    pub key_id: Arc<str>,
    pub team_id: Option<Arc<str>>,
}

impl KeyEntry {
    /// Whether the key may be used at `now_ms`: it is neither revoked nor
    /// expired, and neither is its team. A team's expiry refuses its keys
    /// exactly as their own would.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.record.is_active(now_ms)
            && self.team.as_ref().is_none_or(|team| team.is_active(now_ms))
    }
}

/// Every key by the hash of its secret.
#[derive(Default)]
pub(crate) struct KeyIndex {
    pub by_hash: HashMap<SecretDigest, Arc<KeyEntry>, BuildHasherDefault<DigestHasher>>,
    /// Secrets this index has already found, by `SecretTag`: a presented
    /// secret is hashed with SHA-256 (what the store keeps) only the first
    /// time, after which a keyed SipHash (a tenth of the work) finds it.
    /// Only secrets that matched a key are added, so it holds at most one
    /// entry per key; it goes with the index when a change replaces it.
    seen: RwLock<HashMap<SecretTag, Arc<KeyEntry>, BuildHasherDefault<DigestHasher>>>,
    /// The index's own random 128-bit key for its tags (SipHash-2-4-128),
    /// as two words.
    tag_keys: [u64; 2],
    pub version: i64,
}

/// Neither the tags' keys nor the tags of secrets found.
impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyIndex")
            .field("keys", &self.by_hash.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A presented secret under the index's random key: 128 bits of a keyed
/// pseudo-random function (SipHash-2-4-128, one pass over the secret), so a guess matches a known secret's
/// tag with a chance of 2^-128, as it would match its SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SecretTag(u64, u64);

impl Hash for SecretTag {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The SHA-256 digest of a secret, as the index holds it: bytes, not the
/// hex the store keeps, so that a lookup neither formats nor allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SecretDigest([u8; 32]);

impl SecretDigest {
    fn of(secret: &str) -> SecretDigest {
        let digest = digest::digest(&digest::SHA256, secret.as_bytes());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        SecretDigest(bytes)
    }
}

/// A digest is already uniformly distributed, and only keys the store
/// holds are inserted (a presented secret is only looked up), so its first
/// eight bytes serve as its hash: nothing to gain from hashing it again.
impl Hash for SecretDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// The hasher of `SecretDigest`s: it keeps the one `u64` it is given.
#[derive(Debug, Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached (a digest writes one u64); mixes anything else in.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
}

impl KeyIndex {
    fn build(keys: Vec<KeyRecord>, teams: Vec<TeamRecord>, version: i64) -> KeyIndex {
        let teams: HashMap<String, (Arc<TeamRecord>, Arc<str>)> = teams
            .into_iter()
            .map(|team| {
                let id = Arc::from(team.id.as_str());
                (team.id.clone(), (Arc::new(team), id))
            })
            .collect();
        let by_hash = keys
            .into_iter()
            .filter_map(|record| {
                let Some(digest) = switchboard_core::hex::decode::<32>(&record.hash) else {
                    tracing::warn!(key = %record.id, "a key's stored hash is not a SHA-256 digest; the key cannot be used");
                    return None;
                };
                let (team, team_id) = record
                    .team_id
                    .as_ref()
                    .and_then(|team| teams.get(team))
                    .cloned()
                    .unzip();
                let key_id = Arc::from(record.id.as_str());
                let entry = KeyEntry {
                    record,
                    team,
                    key_id,
                    team_id,
                };
                Some((SecretDigest(digest), Arc::new(entry)))
            })
            .collect();
        let tag_keys = tag_keys();
        KeyIndex {
            by_hash,
            seen: RwLock::default(),
            tag_keys,
            version,
        }
    }

    /// The key whose secret is `secret`, if any.
    pub fn find(&self, secret: &str) -> Option<Arc<KeyEntry>> {
        if self.by_hash.is_empty() {
            return None;
        }
        let tag = self.tag(secret);
        if let Some(entry) = read(&self.seen).get(&tag) {
            return Some(entry.clone());
        }
        let entry = self.by_hash.get(&SecretDigest::of(secret))?.clone();
        write(&self.seen).insert(tag, entry.clone());
        Some(entry)
    }

    fn tag(&self, secret: &str) -> SecretTag {
        let [k0, k1] = self.tag_keys;
        let (first, second) = switchboard_core::siphash::siphash_2_4_128(k0, k1, secret.as_bytes());
        SecretTag(first, second)
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shared, swappable index.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    index: RwLock<Arc<KeyIndex>>,
}

impl KeyCache {
    pub fn current(&self) -> Arc<KeyIndex> {
        read(&self.index).clone()
    }

    /// Reloads from the store when its version moved (or always, with
    /// `force`).
    pub async fn refresh(
        &self,
        store: &dyn Database,
        force: bool,
    ) -> Result<(), switchboard_store::StoreError> {
        let version = store.key_version().await?;
        if !force && version == self.current().version {
            return Ok(());
        }
        let keys = store.keys().await?;
        let teams = store.teams().await?;
        let index = Arc::new(KeyIndex::build(keys, teams, version));
        *write(&self.index) = index;
        Ok(())
    }
}

/// What every key's, team's and end user's budget has spent, by the
/// request log, in its window of `now_ms`. End users are scoped within
/// their key, as `access` scopes them, and only the users the log names in
/// the window are listed.
pub(crate) async fn budget_spend(
    store: &dyn Database,
    now_ms: u64,
) -> Result<Vec<SpentIn>, switchboard_store::StoreError> {
    use switchboard_core::keys::Period;
    use switchboard_policy::limits::{Scope, ScopeKind, budget_window_start};
    let mut spend = Vec::new();
    for key in store.keys().await? {
        if let (Some(_), Some(period)) = (key.limits.budget_nanos, key.limits.budget_period) {
            let from = budget_window_start(period, now_ms) as i64;
            let spent = store.spent_since(Some(&key.id), None, from).await?;
            let scope = Scope {
                kind: ScopeKind::Key,
                id: key.id.as_str().into(),
            };
            spend.push(SpentIn {
                scope,
                period,
                spent,
            });
        }
        // As `access` reads it: a budget without a period is a total one.
        let user_budget = key.user_limits.as_ref().and_then(|limits| {
            limits
                .budget_nanos
                .map(|_| limits.budget_period.unwrap_or(Period::Total))
        });
        if let Some(period) = user_budget {
            let from = budget_window_start(period, now_ms) as i64;
            for (user, spent) in store.user_spent_since(&key.id, from).await? {
                spend.push(SpentIn {
                    scope: crate::access::user_scope(&key.id, &user),
                    period,
                    spent,
                });
            }
        }
    }
    for team in store.teams().await? {
        if let (Some(_), Some(period)) = (team.limits.budget_nanos, team.limits.budget_period) {
            let from = budget_window_start(period, now_ms) as i64;
            let spent = store.spent_since(None, Some(&team.id), from).await?;
            let scope = Scope {
                kind: ScopeKind::Team,
                id: team.id.as_str().into(),
            };
            spend.push(SpentIn {
                scope,
                period,
                spent,
            });
        }
    }
    Ok(spend)
}

/// Gives an in-memory limiter the spend the request log already holds for
/// every key's, team's and end user's current budget window, so that a
/// restart does not hand out budgets afresh. (The Redis limiter asks
/// `RequestLog` when it finds its counters lost.)
pub(crate) async fn restore_budgets(
    store: &dyn Database,
    limiter: &switchboard_policy::limits::MemoryLimiter,
) -> Result<(), switchboard_store::StoreError> {
    let now = crate::trace::unix_millis().max(0) as u64;
    for SpentIn {
        scope,
        period,
        spent,
    } in budget_spend(store, now).await?
    {
        limiter.preload_spend(scope, period, now, spent);
    }
    Ok(())
}

/// The request log, as the Redis limiter's source of budgets' spend after
/// its counters were lost.
pub(crate) struct RequestLog(pub Arc<dyn Database>);

impl Reseed for RequestLog {
    fn budget_spend(&self, now_ms: u64) -> LimitFuture<'_, Result<Vec<SpentIn>, String>> {
        Box::pin(async move {
            budget_spend(self.0.as_ref(), now_ms)
                .await
                .map_err(|error| error.to_string())
        })
    }
}

/// Keeps `cache` current until `stop` is cancelled.
pub(crate) fn spawn_refresh(
    cache: Arc<KeyCache>,
    store: Arc<dyn Database>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
            match cache.refresh(store.as_ref(), false).await {
                Ok(()) => failing = false,
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, "cannot check the store for changed keys; serving the keys known");
                }
                Err(_) => {}
            }
        }
    })
}

/// Hex SHA-256 of a secret: what the store keeps instead of the secret.
pub(crate) fn hash_secret(secret: &str) -> String {
    switchboard_core::hex::lower(&SecretDigest::of(secret).0)
}

/// A random 128-bit key for an index's tags, as two words. From the
/// operating system's generator; should it ever fail, from the standard
/// library's randomly seeded hashers rather than a panic in the task that
/// refreshes the keys.
fn tag_keys() -> [u64; 2] {
    let mut bytes = [0u8; 16];
    let mut keys = [0u64; 2];
    if SystemRandom::new().fill(&mut bytes).is_ok() {
        for (key, word) in keys.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(word);
            *key = u64::from_le_bytes(eight);
        }
    } else {
        use std::hash::BuildHasher;
        for (index, key) in keys.iter_mut().enumerate() {
            *key = std::collections::hash_map::RandomState::new().hash_one(index);
        }
    }
    keys
}

/// Random bytes from the operating system's CSPRNG.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source works");
    bytes
}

/// A new secret: the prefix and 256 random bits in URL-safe base64.
pub(crate) fn new_secret() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = random_bytes::<32>();
    let mut out = String::with_capacity(SECRET_PREFIX.len() + 43);
    out.push_str(SECRET_PREFIX);
    let mut bits = 0u32;
    let mut count = 0;
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    out
}

/// The part of a secret shown to recognise it by.
pub(crate) fn secret_prefix(secret: &str) -> String {
    secret.chars().take(SECRET_PREFIX.len() + 8).collect()
}

/// `key_` or `team_` and 16 random hex digits.
pub(crate) fn new_id(kind: &str) -> String {
    format!(
        "{kind}_{}",
        switchboard_core::hex::lower(&random_bytes::<8>())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_prefixed_and_long() {
        let first = new_secret();
        let second = new_secret();
        assert_ne!(first, second);
        assert!(first.starts_with("sb-"));
        assert_eq!(first.len(), 3 + 43);
        assert!(
            first[3..]
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        );
        assert_eq!(secret_prefix(&first).len(), 11);
        assert!(new_id("key").starts_with("key_") && new_id("key").len() == 20);
    }

    /// A key with no team, no limits and no expiry, stored under `hash`.
    fn key_record(id: &str, hash: String) -> KeyRecord {
        KeyRecord {
            id: id.to_owned(),
            name: None,
            team_id: None,
            hash,
            prefix: "sb-".to_owned(),
            limits: switchboard_core::keys::Limits::default(),
            user_limits: None,
            expires_at_ms: None,
            revoked_at_ms: None,
            metadata: "{}".to_owned(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn a_team_expiry_ends_its_keys_without_a_reload() {
        use switchboard_core::keys::Limits;
        let team = TeamRecord {
            id: "team_1".to_owned(),
            name: "t".to_owned(),
            limits: Limits::default(),
            expires_at_ms: Some(1_000),
            metadata: "{}".to_owned(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let record = KeyRecord {
            team_id: Some("team_1".to_owned()),
            ..key_record("key_1", hash_secret("sb-x"))
        };
        let index = KeyIndex::build(vec![record], vec![team], 1);
        let entry = index.find("sb-x").unwrap();
        assert!(entry.is_active(999));
        assert!(!entry.is_active(1_000), "the team has expired");
        assert!(entry.record.is_active(1_000), "the key itself has not");
    }

    #[test]
    fn keys_are_found_by_their_secret_only() {
        let index = KeyIndex::build(
            vec![
                key_record("key_a", hash_secret("sb-a")),
                key_record("key_b", hash_secret("sb-b")),
                key_record("key_bad", "not a digest".to_owned()),
            ],
            Vec::new(),
            1,
        );
        assert_eq!(index.by_hash.len(), 2, "the malformed hash is left out");
        assert_eq!(index.find("sb-a").unwrap().record.id, "key_a");
        assert_eq!(index.find("sb-b").unwrap().record.id, "key_b");
        assert!(index.find("sb-c").is_none());
        assert!(index.find("").is_none());
        assert!(index.find("not a digest").is_none());
        // Found again through the tags of the secrets already found, and
        // only those: secrets that matched nothing are not remembered.
        assert_eq!(read(&index.seen).len(), 2);
        for _ in 0..3 {
            assert_eq!(index.find("sb-a").unwrap().record.id, "key_a");
            assert!(index.find("sb-c").is_none());
        }
        assert_eq!(read(&index.seen).len(), 2);
        assert_ne!(index.tag("sb-a"), index.tag("sb-b"));
        let other = KeyIndex::build(Vec::new(), Vec::new(), 2);
        assert_ne!(
            index.tag("sb-a"),
            other.tag("sb-a"),
            "each index draws its own keys"
        );
    }

    #[test]
    fn secrets_are_kept_as_sha256() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
