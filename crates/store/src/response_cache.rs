//! Where cached answers live: `MemoryCache` (one instance, bounded by
//! bytes) or `RedisCache` (shared by every instance). Entries are opaque
//! bytes under a 32-byte key (a hash the server computes from the
//! normalised request), each with its own time to live.
//!
//! The memory cache evicts in insertion order (a FIFO, not an LRU): the
//! oldest entries go first once it is full, expired ones whenever they are
//! met. Its bound counts the answers' bytes, not the map's own overhead.
//!
//! A cache is an optimisation, never a source of errors: a Redis that
//! cannot be reached reads as a miss and drops the write, with a warning
//! at most every few seconds.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// What a cache call returns: no error to handle.
pub type CacheFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The key of an entry: a SHA-256 of the normalised request.
pub type CacheKey = [u8; 32];

pub trait ResponseCache: Send + Sync + 'static {
    /// The entry under `key`, if present and not expired.
    fn get(&self, key: CacheKey) -> CacheFuture<'_, Option<Bytes>>;
    /// Stores `value` under `key` for `ttl`, replacing any entry.
    fn put(&self, key: CacheKey, value: Bytes, ttl: Duration) -> CacheFuture<'_, ()>;
    /// `put` without waiting for it: on a task of its own, or at once
    /// where storing cannot wait (in memory). Needs a Tokio runtime.
    fn put_detached(self: Arc<Self>, key: CacheKey, value: Bytes, ttl: Duration) {
        tokio::spawn(async move { self.put(key, value, ttl).await });
    }
}

struct Entry {
    value: Bytes,
    expires: Instant,
    /// Which insertion this is (an entry replaced later is a new one).
    seq: u64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<CacheKey, Entry>,
    /// Keys in insertion order, for eviction; may name replaced or removed
    /// entries, which eviction skips.
    order: VecDeque<(CacheKey, u64)>,
    bytes: usize,
    next_seq: u64,
}

/// An in-process cache holding at most `max_bytes` of values: when full,
/// the oldest entries go first.
pub struct MemoryCache {
    entries: Mutex<Entries>,
    max_bytes: usize,
}

impl MemoryCache {
    pub fn new(max_bytes: usize) -> MemoryCache {
        MemoryCache {
            entries: Mutex::new(Entries::default()),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes held now (values only).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn get_now(&self, key: &CacheKey, now: Instant) -> Option<Bytes> {
        let mut entries = self.lock();
        let entry = entries.map.get(key)?;
        if entry.expires > now {
            return Some(entry.value.clone());
        }
        let size = entry.value.len();
        entries.map.remove(key);
        entries.bytes -= size;
        None
    }

    fn put_now(&self, key: CacheKey, value: Bytes, ttl: Duration, now: Instant) {
        if value.len() > self.max_bytes || ttl.is_zero() {
            return;
        }
        let mut entries = self.lock();
        let entries = &mut *entries;
        if let Some(old) = entries.map.remove(&key) {
            entries.bytes -= old.value.len();
        }
        entries.bytes += value.len();
        let seq = entries.next_seq;
        entries.next_seq += 1;
        entries.map.insert(
            key,
            Entry {
                value,
                expires: now + ttl,
                seq,
            },
        );
        entries.order.push_back((key, seq));
        while entries.bytes > self.max_bytes {
            let Some((oldest, seq)) = entries.order.pop_front() else {
                break;
            };
            if entries
                .map
                .get(&oldest)
                .is_some_and(|entry| entry.seq == seq)
                && let Some(evicted) = entries.map.remove(&oldest)
            {
                entries.bytes -= evicted.value.len();
            }
        }
        // Keep the order queue from growing past the live entries by much.
        if entries.order.len() > 2 * entries.map.len() + 64 {
            let map = &entries.map;
            entries
                .order
                .retain(|(key, seq)| map.get(key).is_some_and(|entry| entry.seq == *seq));
        }
    }
}

impl ResponseCache for MemoryCache {
    fn get(&self, key: CacheKey) -> CacheFuture<'_, Option<Bytes>> {
        let found = self.get_now(&key, Instant::now());
        Box::pin(std::future::ready(found))
    }

    fn put(&self, key: CacheKey, value: Bytes, ttl: Duration) -> CacheFuture<'_, ()> {
        self.put_now(key, value, ttl, Instant::now());
        Box::pin(std::future::ready(()))
    }

    fn put_detached(self: Arc<Self>, key: CacheKey, value: Bytes, ttl: Duration) {
        self.put_now(key, value, ttl, Instant::now());
    }
}

/// At most one warning about an unreachable Redis per this interval.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// A cache in Redis, shared by every instance: `SET <prefix>cache:<hex> PX`.
pub struct RedisCache {
    connection: ConnectionManager,
    prefix: String,
    timeout: Duration,
    warned_at: Mutex<Option<Instant>>,
}

impl RedisCache {
    /// Connects lazily (an unreachable Redis is not an error here; calls
    /// then miss). Only a malformed URL is refused. Must run within a
    /// Tokio runtime.
    pub fn connect(url: &str, prefix: &str) -> Result<RedisCache, String> {
        let timeout = Duration::from_millis(500);
        let client = redis::Client::open(url).map_err(|error| error.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| error.to_string())?;
        Ok(RedisCache {
            connection,
            prefix: prefix.to_owned(),
            timeout,
            warned_at: Mutex::new(None),
        })
    }

    fn key(&self, key: &CacheKey) -> String {
        let mut name = String::with_capacity(self.prefix.len() + 6 + 64);
        name.push_str(&self.prefix);
        name.push_str("cache:");
        for byte in key {
            name.push_str(&format!("{byte:02x}"));
        }
        name
    }

    fn warn(&self, error: &str) {
        let now = Instant::now();
        let mut warned_at = self
            .warned_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if warned_at.is_none_or(|at| now.duration_since(at) >= WARN_EVERY) {
            *warned_at = Some(now);
            tracing::warn!(
                error,
                "the response cache's Redis cannot be used: requests go upstream"
            );
        }
    }
}

impl ResponseCache for RedisCache {
    fn get(&self, key: CacheKey) -> CacheFuture<'_, Option<Bytes>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let name = self.key(&key);
            let read = connection.get::<_, Option<Vec<u8>>>(name);
            match tokio::time::timeout(self.timeout, read).await {
                Ok(Ok(value)) => value.map(Bytes::from),
                Ok(Err(error)) => {
                    self.warn(&error.to_string());
                    None
                }
                Err(_) => {
                    self.warn("timed out");
                    None
                }
            }
        })
    }

    fn put(&self, key: CacheKey, value: Bytes, ttl: Duration) -> CacheFuture<'_, ()> {
        Box::pin(async move {
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            if millis == 0 {
                return;
            }
            let mut connection = self.connection.clone();
            let name = self.key(&key);
            let write = connection.pset_ex::<_, _, ()>(name, value.as_ref(), millis);
            match tokio::time::timeout(self.timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => self.warn(&error.to_string()),
                Err(_) => self.warn("timed out"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        [n; 32]
    }

    #[test]
    fn entries_expire() {
        let cache = MemoryCache::new(1024);
        let now = Instant::now();
        cache.put_now(
            key(1),
            Bytes::from_static(b"a"),
            Duration::from_secs(10),
            now,
        );
        assert_eq!(
            cache
                .get_now(&key(1), now + Duration::from_secs(9))
                .as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(cache.get_now(&key(1), now + Duration::from_secs(10)), None);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn the_size_bound_evicts_the_oldest() {
        let cache = MemoryCache::new(30);
        let now = Instant::now();
        let ten = Bytes::from_static(b"0123456789");
        let hour = Duration::from_secs(3600);
        for n in 1..=3 {
            cache.put_now(key(n), ten.clone(), hour, now);
        }
        // Full: a fourth entry evicts the first only.
        cache.put_now(key(4), ten.clone(), hour, now);
        assert!(cache.get_now(&key(1), now).is_none());
        for live in [2, 3, 4] {
            assert!(cache.get_now(&key(live), now).is_some(), "{live}");
        }
        assert_eq!(cache.bytes(), 30);
        // An entry larger than the whole cache is not kept.
        cache.put_now(key(6), Bytes::from(vec![0; 31]), hour, now);
        assert!(cache.get_now(&key(6), now).is_none());
        assert_eq!(cache.bytes(), 30);
    }

    #[test]
    fn replacing_an_entry_counts_its_bytes_once() {
        let cache = MemoryCache::new(100);
        let now = Instant::now();
        for _ in 0..50 {
            cache.put_now(
                key(1),
                Bytes::from_static(b"abcd"),
                Duration::from_secs(5),
                now,
            );
        }
        assert_eq!(cache.bytes(), 4);
        assert!(cache.lock().order.len() <= 2 + 64);
    }

    #[test]
    fn a_replaced_entry_is_as_young_as_its_replacement() {
        let cache = MemoryCache::new(20);
        let now = Instant::now();
        let ten = Bytes::from_static(b"0123456789");
        let hour = Duration::from_secs(3600);
        cache.put_now(key(1), ten.clone(), hour, now);
        cache.put_now(key(2), ten.clone(), hour, now);
        cache.put_now(key(1), ten.clone(), hour, now);
        // Key 2 is now the oldest entry: it goes, not the new key 1.
        cache.put_now(key(3), ten.clone(), hour, now);
        assert!(cache.get_now(&key(1), now).is_some());
        assert!(cache.get_now(&key(2), now).is_none());
        assert!(cache.get_now(&key(3), now).is_some());
    }
}
