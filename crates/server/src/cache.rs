//! The response cache on the request path: which requests may be served
//! from it, under which key, and the filling of an entry from a whole
//! answer or a finished stream.
//!
//! **The key** is a SHA-256 over the endpoint, the caller's partition (its
//! key, its team, or nothing, by `cache.scope`) and the request body in a
//! canonical form: object members sorted, numbers normalised (`0` and
//! `0.0` are one value), whitespace gone, and only the fields that cannot
//! change the answer left out (`user`, `metadata`). Everything else,
//! `stream` and `stream_options` included, is part of the key, so a
//! changed parameter misses, and a streamed request is answered only by a
//! stream.
//!
//! **The entry** is exactly the bytes the client received: the JSON body,
//! or the whole SSE stream up to its end marker. A hit replays them, so a
//! cached stream is as well formed as the original. Only complete,
//! successful answers are stored.
//!
//! **Per request**: `Cache-Control: no-cache` skips the lookup (the fresh
//! answer is stored), `no-store` skips both; `x-switchboard-cache-ttl`
//! (seconds) shortens or lengthens the entry's life, `0` not storing it.
//! Requests whose temperature is not 0 (absent counts as 1, the providers'
//! default) are cached only with `cache.nonzero_temperature`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use bytes::Bytes;
use ring::digest;
use serde_json::Value;
use switchboard_config::{CacheConfig, CacheScope};
use switchboard_core::Endpoint;
use switchboard_store::response_cache::{CacheKey, ResponseCache};

use crate::access::Caller;
use crate::error::ApiError;
use crate::head_lines::LineStart;

const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
/// Response header saying what the cache did: `hit`, or `miss` (looked up,
/// and the answer stored when it completes).
pub(crate) const CACHE_HEADER: HeaderName = HeaderName::from_static("x-switchboard-cache");
pub(crate) const CACHE_LINE: LineStart = LineStart::new("x-switchboard-cache: ");
/// Request header setting the entry's time to live, in seconds.
pub(crate) const CACHE_TTL_HEADER: HeaderName = HeaderName::from_static("x-switchboard-cache-ttl");
/// The longest entry a stream may fill; a longer stream is not cached.
const MAX_ENTRY: usize = 4 << 20;
/// The longest TTL a request may ask for: a week.
const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);

/// The cache and its settings, as the gateway holds them.
pub(crate) struct Cache {
    pub store: Arc<dyn ResponseCache>,
    pub config: CacheConfig,
}

/// What the cache does for one request.
pub(crate) struct CachePlan {
    pub key: CacheKey,
    /// Look the answer up.
    pub lookup: bool,
    /// How long to keep the answer (`None`: do not store it).
    pub ttl: Option<Duration>,
}

impl Cache {
    /// The plan for a request, or `None` when the cache stays out of it
    /// (not cacheable, or the client asked for neither lookup nor store).
    /// A malformed TTL header is an error naming it.
    pub fn plan(
        &self,
        endpoint: Endpoint,
        body: &[u8],
        headers: &HeaderMap,
        caller: &Caller,
        answers: impl IntoIterator<Item = u64>,
    ) -> Result<Option<CachePlan>, ApiError> {
        let directives = headers
            .get_all(axum::http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|directive| directive.trim().to_ascii_lowercase())
            .collect::<Vec<_>>();
        let no_store = directives.iter().any(|directive| directive == "no-store");
        let no_cache = directives.iter().any(|directive| directive == "no-cache");
        let ttl = match headers.get(CACHE_TTL_HEADER) {
            None => self.config.ttl,
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<f64>().ok())
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
                .map(|seconds| Duration::from_secs_f64(seconds.min(MAX_TTL.as_secs_f64())))
                .ok_or_else(|| {
                    ApiError::bad_header(
                        CACHE_TTL_HEADER.as_str(),
                        "a number of seconds, 0 or more",
                    )
                })?,
        };
        if no_store {
            return Ok(None);
        }
        let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
            return Ok(None);
        };
        if endpoint != Endpoint::Embeddings && !self.config.nonzero_temperature {
            let temperature = fields.get("temperature").and_then(Value::as_f64);
            if temperature != Some(0.0) {
                return Ok(None);
            }
        }
        fields.remove("user");
        fields.remove("metadata");
        if fields.get("stream") == Some(&Value::Bool(false)) {
            fields.remove("stream");
        }
        let mut canonical = String::with_capacity(body.len());
        canonical.push_str(endpoint.as_str());
        canonical.push('\n');
        canonical.push_str(&self.partition(caller));
        canonical.push('\n');
        // What the model (and its fallbacks) would answer with: a reload
        // that changes their deployments changes every key.
        for answers in answers {
            let _ = write!(canonical, "{answers:016x}");
        }
        canonical.push('\n');
        // Headers that change the answer: Anthropic's beta features, and
        // the tags that choose the deployments.
        for name in [ANTHROPIC_BETA, crate::handlers::TAGS_HEADER] {
            for value in headers.get_all(&name) {
                canonical.push_str(name.as_str());
                canonical.push(':');
                canonical.push_str(&String::from_utf8_lossy(value.as_bytes()));
                canonical.push('\n');
            }
        }
        write_canonical(&mut canonical, &Value::Object(fields));
        let hash = digest::digest(&digest::SHA256, canonical.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(hash.as_ref());
        Ok(Some(CachePlan {
            key,
            lookup: !no_cache,
            ttl: (!ttl.is_zero()).then_some(ttl),
        }))
    }

    /// Whose answers a request may share.
    fn partition(&self, caller: &Caller) -> String {
        let key = caller.key_id.as_deref().unwrap_or("master");
        match self.config.scope {
            CacheScope::Global => String::new(),
            CacheScope::Team => match caller.team_id.as_deref() {
                Some(team) => format!("team:{team}"),
                None => format!("key:{key}"),
            },
            CacheScope::Key => format!("key:{key}"),
        }
    }

    /// Stores a whole answer, off the request path.
    pub fn store(&self, plan: &CachePlan, body: Bytes) {
        if let Some(ttl) = plan.ttl {
            self.store.clone().put_detached(plan.key, body, ttl);
        }
    }
}

/// A stream's bytes gathered for the cache while they reach the client.
pub(crate) struct CacheFill {
    cache: Arc<Cache>,
    key: CacheKey,
    ttl: Duration,
    bytes: Vec<u8>,
    overflowed: bool,
}

impl CacheFill {
    /// A fill for a stream, when the plan stores its answer.
    pub fn new(cache: &Arc<Cache>, plan: &CachePlan) -> Option<CacheFill> {
        Some(CacheFill {
            cache: cache.clone(),
            key: plan.key,
            ttl: plan.ttl?,
            bytes: Vec::new(),
            overflowed: false,
        })
    }

    pub fn push(&mut self, frame: &[u8]) {
        if self.overflowed {
            return;
        }
        if self.bytes.len() + frame.len() > MAX_ENTRY {
            self.overflowed = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(frame);
    }

    /// The stream ended well: store what it sent.
    pub fn commit(self) {
        if self.overflowed || self.bytes.is_empty() {
            return;
        }
        let CacheFill {
            cache,
            key,
            ttl,
            bytes,
            ..
        } = self;
        cache
            .store
            .clone()
            .put_detached(key, Bytes::from(bytes), ttl);
    }
}

/// JSON with object members sorted by name, numbers in one form, and no
/// whitespace.
fn write_canonical(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                let _ = write!(out, "{integer}");
            } else if let Some(integer) = number.as_u64() {
                let _ = write!(out, "{integer}");
            } else if let Some(float) = number.as_f64() {
                // Rust prints integral floats without a fraction: 0.0 -> 0.
                let _ = write!(out, "{float}");
            }
        }
        Value::String(text) => {
            out.push_str(&Value::String(text.clone()).to_string());
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (name, member)) in sorted.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(name.clone()).to_string());
                out.push(':');
                write_canonical(out, member);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_config::CacheBackend;
    use switchboard_store::response_cache::MemoryCache;

    use super::*;

    fn cache(scope: CacheScope, nonzero_temperature: bool) -> Cache {
        Cache {
            store: Arc::new(MemoryCache::new(1 << 20)),
            config: CacheConfig {
                enabled: true,
                backend: CacheBackend::Memory,
                ttl: Duration::from_secs(60),
                max_bytes: 1 << 20,
                scope,
                nonzero_temperature,
            },
        }
    }

    fn caller(key: &str, team: Option<&str>) -> Caller {
        Caller {
            key_id: Some(key.into()),
            team_id: team.map(Into::into),
            end_user: None,
        }
    }

    fn key_of(cache: &Cache, body: &str, headers: &HeaderMap, caller: &Caller) -> Option<CacheKey> {
        cache
            .plan(
                Endpoint::ChatCompletions,
                body.as_bytes(),
                headers,
                caller,
                [],
            )
            .unwrap()
            .map(|plan| plan.key)
    }

    const BASE: &str =
        r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#;

    #[test]
    fn equal_requests_share_a_key_and_any_changed_parameter_misses() {
        let cache = cache(CacheScope::Key, false);
        let none = HeaderMap::new();
        let me = caller("key_a", None);
        let base = key_of(&cache, BASE, &none, &me).unwrap();
        // Member order, whitespace, 0 vs 0.0, and the end user do not matter.
        let same = r#"{ "messages":[{"content":"hi","role":"user"}], "temperature":0.0, "model":"m", "user":"u-1" }"#;
        assert_eq!(key_of(&cache, same, &none, &me), Some(base));
        for changed in [
            r#"{"model":"m2","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"model":"m","temperature":0,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"top_p":0.5,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"seed":1,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"system","content":"x"},{"role":"user","content":"hi"}]}"#,
        ] {
            assert_ne!(key_of(&cache, changed, &none, &me), Some(base), "{changed}");
        }
        // `"stream": false` is no stream at all.
        let unstreamed = r#"{"model":"m","temperature":0,"stream":false,"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(key_of(&cache, unstreamed, &none, &me), Some(base));
        // Headers that change the answer change the key.
        for (name, value) in [
            ("anthropic-beta", "prompt-caching-2024-07-31"),
            ("x-switchboard-tags", "eu"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            assert_ne!(key_of(&cache, BASE, &headers, &me), Some(base), "{name}");
        }
        // Another endpoint with the same body is another entry.
        let messages = cache
            .plan(Endpoint::Messages, BASE.as_bytes(), &none, &me, [])
            .unwrap()
            .unwrap();
        assert_ne!(messages.key, base);
    }

    #[test]
    fn nonzero_temperature_is_cached_only_when_configured() {
        let none = HeaderMap::new();
        let me = caller("key_a", None);
        let warm = r#"{"model":"m","temperature":0.7,"messages":[]}"#;
        let default = r#"{"model":"m","messages":[]}"#;
        let strict = cache(CacheScope::Key, false);
        assert!(key_of(&strict, warm, &none, &me).is_none());
        assert!(key_of(&strict, default, &none, &me).is_none());
        let relaxed = cache(CacheScope::Key, true);
        assert!(key_of(&relaxed, warm, &none, &me).is_some());
        // Embeddings have no temperature and are always cacheable.
        assert!(
            strict
                .plan(
                    Endpoint::Embeddings,
                    br#"{"model":"e","input":"x"}"#,
                    &none,
                    &me,
                    []
                )
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn scopes_partition_callers() {
        let none = HeaderMap::new();
        let (a1, a2, b, lone) = (
            caller("key_1", Some("team_a")),
            caller("key_2", Some("team_a")),
            caller("key_3", Some("team_b")),
            caller("key_4", None),
        );
        let by_key = cache(CacheScope::Key, false);
        assert_ne!(
            key_of(&by_key, BASE, &none, &a1),
            key_of(&by_key, BASE, &none, &a2)
        );
        let by_team = cache(CacheScope::Team, false);
        assert_eq!(
            key_of(&by_team, BASE, &none, &a1),
            key_of(&by_team, BASE, &none, &a2)
        );
        assert_ne!(
            key_of(&by_team, BASE, &none, &a1),
            key_of(&by_team, BASE, &none, &b)
        );
        assert_ne!(
            key_of(&by_team, BASE, &none, &lone),
            key_of(&by_team, BASE, &none, &a1)
        );
        let global = cache(CacheScope::Global, false);
        assert_eq!(
            key_of(&global, BASE, &none, &b),
            key_of(&global, BASE, &none, &lone)
        );
    }

    #[test]
    fn request_headers_control_lookup_store_and_ttl() {
        let cache = cache(CacheScope::Key, false);
        let me = caller("key_a", None);
        let plan = |pairs: &[(&str, &str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            cache.plan(
                Endpoint::ChatCompletions,
                BASE.as_bytes(),
                &headers,
                &me,
                [],
            )
        };
        let default = plan(&[]).unwrap().unwrap();
        assert!(default.lookup);
        assert_eq!(default.ttl, Some(Duration::from_secs(60)));
        let fresh = plan(&[("cache-control", "No-Cache")]).unwrap().unwrap();
        assert!(!fresh.lookup);
        assert!(fresh.ttl.is_some());
        assert!(
            plan(&[("cache-control", "max-age=0, no-store")])
                .unwrap()
                .is_none()
        );
        let short = plan(&[(CACHE_TTL_HEADER.as_str(), "2.5")])
            .unwrap()
            .unwrap();
        assert_eq!(short.ttl, Some(Duration::from_millis(2500)));
        let unstored = plan(&[(CACHE_TTL_HEADER.as_str(), "0")]).unwrap().unwrap();
        assert!(unstored.lookup && unstored.ttl.is_none());
        // Beyond a week is a week, however large (no overflow).
        let long = plan(&[(CACHE_TTL_HEADER.as_str(), "1e300")])
            .unwrap()
            .unwrap();
        assert_eq!(long.ttl, Some(MAX_TTL));
        for bad in ["-1", "soon", "NaN", "inf"] {
            let error = plan(&[(CACHE_TTL_HEADER.as_str(), bad)]).err().unwrap();
            assert_eq!(error.status, 400);
            assert!(
                error.message.contains(CACHE_TTL_HEADER.as_str()),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn a_fill_keeps_at_most_one_entry_size() {
        let cache = Arc::new(cache(CacheScope::Key, false));
        let plan = CachePlan {
            key: [0; 32],
            lookup: true,
            ttl: Some(Duration::from_secs(1)),
        };
        let mut fill = CacheFill::new(&cache, &plan).unwrap();
        fill.push(&vec![b'x'; MAX_ENTRY]);
        assert!(!fill.overflowed);
        fill.push(b"y");
        assert!(fill.overflowed && fill.bytes.is_empty());
        let unstored = CachePlan { ttl: None, ..plan };
        assert!(CacheFill::new(&cache, &unstored).is_none());
    }
}
