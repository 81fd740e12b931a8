//! The admin API under `/admin`, for the master key only: virtual keys,
//! teams and spend (the request log's pages and usage are in
//! `request_log.rs`). Bodies are checked field by field (unknown fields,
//! wrong types, negative budgets and absurd limits are refused with the
//! field's name) before anything is written, so nothing is ever partly
//! created. A key's secret is returned once, when it is created or rotated.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use switchboard_core::keys::{KeyRecord, Limits, Period, SpendGroup, TeamRecord};
use switchboard_dialects::openai::RequestError;
use switchboard_policy::limits::{Scope, ScopeKind, budget_window_start};
use switchboard_store::{KeyStoreConflict, SpendQuery};

use crate::error::ApiError;
use crate::keys::{hash_secret, new_id, new_secret, secret_prefix};
use crate::request_log::parse_time;
use crate::state::Gateway;
use crate::trace::unix_millis;

/// Largest budget accepted, in USD: far above any real one, low enough to
/// stay exact in nano-dollars.
const MAX_BUDGET_USD: f64 = 1e9;
/// Largest per-minute or concurrency limit accepted.
const MAX_LIMIT: u64 = 1_000_000_000;

/// Limits as the admin API writes them: budgets in USD.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default, deserialize_with = "nullable")]
    models: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    budget_usd: Nullable<f64>,
    #[serde(default, deserialize_with = "nullable")]
    budget_period: Nullable<Period>,
    #[serde(default, deserialize_with = "nullable")]
    rpm: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    tpm: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    max_concurrent: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    log_bodies: Nullable<bool>,
}

/// A field of an update: absent (`None`, leave it), `null` (`Some(None)`,
/// clear it) or a value.
type Nullable<T> = Option<Option<T>>;

fn nullable<'de, D, T>(deserializer: D) -> Result<Nullable<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

// The limit fields are spelled out in each body rather than flattened:
// serde's `flatten` would hide which field was at fault.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    models: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    budget_usd: Nullable<f64>,
    #[serde(default, deserialize_with = "nullable")]
    budget_period: Nullable<Period>,
    #[serde(default, deserialize_with = "nullable")]
    rpm: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    tpm: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    max_concurrent: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    log_bodies: Nullable<bool>,
    /// Unix seconds.
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Nullable<i64>,
    metadata: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    #[serde(default, deserialize_with = "nullable")]
    name: Nullable<String>,
    #[serde(default, deserialize_with = "nullable")]
    team_id: Nullable<String>,
    #[serde(default, deserialize_with = "nullable")]
    models: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    budget_usd: Nullable<f64>,
    #[serde(default, deserialize_with = "nullable")]
    budget_period: Nullable<Period>,
    #[serde(default, deserialize_with = "nullable")]
    rpm: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    tpm: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    max_concurrent: Nullable<u64>,
    #[serde(default, deserialize_with = "nullable")]
    log_bodies: Nullable<bool>,
    /// Limits each end user of the key gets on their own.
    #[serde(default, deserialize_with = "nullable")]
    user_limits: Nullable<LimitsBody>,
    /// Unix seconds.
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Nullable<i64>,
    metadata: Option<Value>,
}

impl TeamBody {
    fn limits(&self) -> LimitsBody {
        LimitsBody {
            models: self.models.clone(),
            budget_usd: self.budget_usd,
            budget_period: self.budget_period,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            log_bodies: self.log_bodies,
        }
    }
}

impl KeyBody {
    fn limits(&self) -> LimitsBody {
        LimitsBody {
            models: self.models.clone(),
            budget_usd: self.budget_usd,
            budget_period: self.budget_period,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            log_bodies: self.log_bodies,
        }
    }
}

pub(crate) fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid_request(RequestError::new(message, Some(param)))
}

/// Parses a JSON body, naming the field that is wrong.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(bad("the request body is empty; send a JSON object", "body"));
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        bad(
            format!("`{path}`: {}", error.inner()),
            if path == "." { "body" } else { &path },
        )
    })
}

impl LimitsBody {
    /// The limits these fields set, over `base` (for updates).
    fn apply(self, base: &Limits, prefix: &str) -> Result<Limits, ApiError> {
        let mut limits = base.clone();
        match self.log_bodies {
            None => {}
            // Bodies are kept per key or team, not per end user.
            Some(_) if !prefix.is_empty() => {
                return Err(bad(
                    "`log_bodies` is set on the key or its team, not per end user",
                    &format!("{prefix}log_bodies"),
                ));
            }
            Some(flag) => limits.log_bodies = flag.unwrap_or(false),
        }
        match self.models {
            None => {}
            Some(None) => limits.models.clear(),
            Some(Some(models)) => {
                if models.iter().any(|model| model.trim().is_empty()) {
                    return Err(bad(
                        "model names and patterns must not be empty",
                        &format!("{prefix}models"),
                    ));
                }
                limits.models = models;
            }
        }
        match self.budget_usd {
            None => {}
            Some(None) => {
                limits.budget_nanos = None;
                limits.budget_period = None;
            }
            Some(Some(usd)) => {
                if !usd.is_finite() || !(0.0..=MAX_BUDGET_USD).contains(&usd) {
                    return Err(bad(
                        format!(
                            "a budget is a number of USD between 0 and {MAX_BUDGET_USD}, got {usd}"
                        ),
                        &format!("{prefix}budget_usd"),
                    ));
                }
                limits.budget_nanos = Some((usd * 1e9).round() as u64);
                limits.budget_period = Some(limits.budget_period.unwrap_or(Period::Total));
            }
        }
        if let Some(period) = self.budget_period {
            if limits.budget_nanos.is_none() {
                return Err(bad(
                    "a budget period needs a budget: set budget_usd too",
                    &format!("{prefix}budget_period"),
                ));
            }
            limits.budget_period = Some(period.unwrap_or(Period::Total));
        }
        for (name, value, slot) in [
            ("rpm", self.rpm, &mut limits.rpm),
            ("tpm", self.tpm, &mut limits.tpm),
            (
                "max_concurrent",
                self.max_concurrent,
                &mut limits.max_concurrent,
            ),
        ] {
            match value {
                None => {}
                Some(None) => *slot = None,
                Some(Some(value)) => {
                    if value == 0 || value > MAX_LIMIT {
                        return Err(bad(
                            format!("`{name}` must be between 1 and {MAX_LIMIT}, got {value}"),
                            &format!("{prefix}{name}"),
                        ));
                    }
                    *slot = Some(value);
                }
            }
        }
        Ok(limits)
    }
}

/// An expiry given in Unix seconds, in milliseconds; one in the past (or
/// now) is refused, since it could only mean a mistake.
fn expiry_ms(seconds: Option<i64>, now_ms: i64) -> Result<Option<i64>, ApiError> {
    match seconds {
        Some(seconds) if seconds.saturating_mul(1000) <= now_ms => Err(bad(
            "`expires_at` (Unix seconds) is in the past",
            "expires_at",
        )),
        expires => Ok(expires.map(|seconds| seconds.saturating_mul(1000))),
    }
}

fn metadata_text(metadata: Option<Value>, base: &str) -> Result<String, ApiError> {
    match metadata {
        None => Ok(base.to_owned()),
        Some(value @ Value::Object(_)) => Ok(value.to_string()),
        Some(_) => Err(bad("`metadata` must be a JSON object", "metadata")),
    }
}

fn limits_view(limits: &Limits) -> Value {
    json!({
        "models": limits.models,
        "budget_usd": limits.budget_nanos.map(|nanos| nanos as f64 / 1e9),
        "budget_period": limits.budget_period,
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "max_concurrent": limits.max_concurrent,
        "log_bodies": limits.log_bodies,
    })
}

fn metadata_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| json!({}))
}

/// A key as the admin API shows it: never its secret or hash.
fn key_view(key: &KeyRecord, now_ms: i64) -> Value {
    let mut view = json!({
        "id": key.id,
        "object": "key",
        "name": key.name,
        "team_id": key.team_id,
        "prefix": key.prefix,
        "user_limits": key.user_limits.as_ref().map(limits_view),
        "expires_at": key.expires_at_ms.map(|ms| ms / 1000),
        "revoked_at": key.revoked_at_ms.map(|ms| ms / 1000),
        "active": key.is_active(now_ms),
        "metadata": metadata_value(&key.metadata),
        "created_at": key.created_at_ms / 1000,
        "updated_at": key.updated_at_ms / 1000,
    });
    merge(&mut view, limits_view(&key.limits));
    view
}

fn team_view(team: &TeamRecord, now_ms: i64) -> Value {
    let mut view = json!({
        "id": team.id,
        "object": "team",
        "name": team.name,
        "expires_at": team.expires_at_ms.map(|ms| ms / 1000),
        "active": team.is_active(now_ms),
        "metadata": metadata_value(&team.metadata),
        "created_at": team.created_at_ms / 1000,
        "updated_at": team.updated_at_ms / 1000,
    });
    merge(&mut view, limits_view(&team.limits));
    view
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

pub(crate) fn json_reply(status: StatusCode, value: &Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn list_reply(items: Vec<Value>) -> Response {
    json_reply(StatusCode::OK, &json!({"object": "list", "data": items}))
}

pub(crate) fn store_failed(error: switchboard_store::StoreError) -> Response {
    tracing::error!(%error, "admin: the store failed");
    ApiError::store_unavailable().into_response()
}

fn conflict(conflict: KeyStoreConflict) -> Response {
    match conflict {
        KeyStoreConflict::NoSuchTeam(id) => ApiError::admin_not_found("team", &id),
        KeyStoreConflict::NoSuchKey(id) => ApiError::admin_not_found("key", &id),
        other => ApiError::admin_conflict(other.to_string()),
    }
    .into_response()
}

/// Gives the limiter the spend the request log holds for a budget's
/// current window, so that a budget set or changed mid-window counts what
/// was already spent.
async fn count_past_spend(gateway: &Gateway, kind: ScopeKind, id: &str, limits: &Limits) {
    let (Some(_), Some(period)) = (limits.budget_nanos, limits.budget_period) else {
        return;
    };
    let now = unix_millis().max(0) as u64;
    let from = budget_window_start(period, now) as i64;
    let spent = match kind {
        ScopeKind::Team => gateway.store.spent_since(None, Some(id), from).await,
        _ => gateway.store.spent_since(Some(id), None, from).await,
    };
    match spent {
        Ok(spent) => {
            let scope = Scope {
                kind,
                id: id.into(),
            };
            gateway.limiter.floor_spent(scope, period, now, spent).await;
        }
        Err(error) => {
            tracing::warn!(%error, "admin: past spend could not be read for a new budget")
        }
    }
}

/// Makes this instance see a change at once (others see it within the
/// refresh period).
async fn refreshed(gateway: &Gateway) {
    if let Err(error) = gateway.keys.refresh(gateway.store.as_ref(), true).await {
        tracing::warn!(%error, "admin: the key cache could not be reloaded after a change");
    }
}

pub(crate) async fn create_team(State(gateway): State<Arc<Gateway>>, body: Bytes) -> Response {
    let body: TeamBody = match parse(&body) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let requested = body.limits();
    let Some(name) = body.name.clone().filter(|name| !name.trim().is_empty()) else {
        return bad("a team needs a `name`", "name").into_response();
    };
    let now = unix_millis();
    let team = match (
        requested.apply(&Limits::default(), ""),
        metadata_text(body.metadata, "{}"),
        expiry_ms(body.expires_at.flatten(), now),
    ) {
        (Ok(limits), Ok(metadata), Ok(expires_at_ms)) => TeamRecord {
            id: new_id("team"),
            name,
            limits,
            expires_at_ms,
            metadata,
            created_at_ms: now,
            updated_at_ms: now,
        },
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            return error.into_response();
        }
    };
    match gateway.store.create_team(&team).await {
        Err(error) => store_failed(error),
        Ok(Err(refused)) => conflict(refused),
        Ok(Ok(())) => {
            refreshed(&gateway).await;
            json_reply(StatusCode::CREATED, &team_view(&team, now))
        }
    }
}

async fn find_team(gateway: &Gateway, id: &str) -> Result<TeamRecord, Response> {
    let teams = gateway.store.teams().await.map_err(store_failed)?;
    teams
        .into_iter()
        .find(|team| team.id == id)
        .ok_or_else(|| ApiError::admin_not_found("team", id).into_response())
}

pub(crate) async fn list_teams(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.store.teams().await {
        Ok(teams) => {
            let now = unix_millis();
            list_reply(teams.iter().map(|team| team_view(team, now)).collect())
        }
        Err(error) => store_failed(error),
    }
}

pub(crate) async fn show_team(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Response {
    match find_team(&gateway, &id).await {
        Ok(team) => json_reply(StatusCode::OK, &team_view(&team, unix_millis())),
        Err(response) => response,
    }
}

pub(crate) async fn update_team(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: TeamBody = match parse(&body) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let requested = body.limits();
    let mut team = match find_team(&gateway, &id).await {
        Ok(team) => team,
        Err(response) => return response,
    };
    if let Some(name) = body.name {
        if name.trim().is_empty() {
            return bad("a team's `name` must not be empty", "name").into_response();
        }
        team.name = name;
    }
    match (
        requested.apply(&team.limits, ""),
        metadata_text(body.metadata, &team.metadata),
    ) {
        (Ok(limits), Ok(metadata)) => {
            team.limits = limits;
            team.metadata = metadata;
        }
        (Err(error), _) | (_, Err(error)) => return error.into_response(),
    }
    let now = unix_millis();
    if let Some(expires) = body.expires_at {
        match expiry_ms(expires, now) {
            Ok(expires_at_ms) => team.expires_at_ms = expires_at_ms,
            Err(error) => return error.into_response(),
        }
    }
    team.updated_at_ms = now;
    match gateway.store.update_team(&team).await {
        Err(error) => store_failed(error),
        Ok(Err(refused)) => conflict(refused),
        Ok(Ok(())) => {
            refreshed(&gateway).await;
            count_past_spend(&gateway, ScopeKind::Team, &team.id, &team.limits).await;
            json_reply(StatusCode::OK, &team_view(&team, now))
        }
    }
}

pub(crate) async fn delete_team(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Response {
    match gateway.store.delete_team(&id).await {
        Err(error) => store_failed(error),
        Ok(Err(refused)) => conflict(refused),
        Ok(Ok(())) => {
            refreshed(&gateway).await;
            json_reply(
                StatusCode::OK,
                &json!({"id": id, "object": "team", "deleted": true}),
            )
        }
    }
}

pub(crate) async fn create_key(State(gateway): State<Arc<Gateway>>, body: Bytes) -> Response {
    let body: KeyBody = match parse(&body) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let requested = body.limits();
    let now = unix_millis();
    let limits = match requested.apply(&Limits::default(), "") {
        Ok(limits) => limits,
        Err(error) => return error.into_response(),
    };
    let user_limits = match body
        .user_limits
        .flatten()
        .map(|user| user.apply(&Limits::default(), "user_limits."))
        .transpose()
    {
        Ok(user_limits) => user_limits,
        Err(error) => return error.into_response(),
    };
    let metadata = match metadata_text(body.metadata, "{}") {
        Ok(metadata) => metadata,
        Err(error) => return error.into_response(),
    };
    let expires_at_ms = match expiry_ms(body.expires_at.flatten(), now) {
        Ok(expires_at_ms) => expires_at_ms,
        Err(error) => return error.into_response(),
    };
    let secret = new_secret();
    let key = KeyRecord {
        id: new_id("key"),
        name: body.name.flatten(),
        team_id: body.team_id.flatten(),
        hash: hash_secret(&secret),
        prefix: secret_prefix(&secret),
        limits,
        user_limits,
        expires_at_ms,
        revoked_at_ms: None,
        metadata,
        created_at_ms: now,
        updated_at_ms: now,
    };
    match gateway.store.create_key(&key).await {
        Err(error) => store_failed(error),
        Ok(Err(refused)) => conflict(refused),
        Ok(Ok(())) => {
            refreshed(&gateway).await;
            let mut view = key_view(&key, now);
            view["key"] = json!(secret);
            json_reply(StatusCode::CREATED, &view)
        }
    }
}

async fn find_key(gateway: &Gateway, id: &str) -> Result<KeyRecord, Response> {
    let keys = gateway.store.keys().await.map_err(store_failed)?;
    keys.into_iter()
        .find(|key| key.id == id)
        .ok_or_else(|| ApiError::admin_not_found("key", id).into_response())
}

pub(crate) async fn list_keys(State(gateway): State<Arc<Gateway>>) -> Response {
    let now = unix_millis();
    match gateway.store.keys().await {
        Ok(keys) => list_reply(keys.iter().map(|key| key_view(key, now)).collect()),
        Err(error) => store_failed(error),
    }
}

pub(crate) async fn show_key(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Response {
    match find_key(&gateway, &id).await {
        Ok(key) => json_reply(StatusCode::OK, &key_view(&key, unix_millis())),
        Err(response) => response,
    }
}

pub(crate) async fn update_key(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let body: KeyBody = match parse(&body) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let requested = body.limits();
    let mut key = match find_key(&gateway, &id).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    if let Some(name) = body.name {
        key.name = name;
    }
    if let Some(team) = body.team_id {
        key.team_id = team;
    }
    match requested.apply(&key.limits, "") {
        Ok(limits) => key.limits = limits,
        Err(error) => return error.into_response(),
    }
    if let Some(None) = body.user_limits {
        key.user_limits = None;
    } else if let Some(Some(user)) = body.user_limits {
        match user.apply(&key.user_limits.clone().unwrap_or_default(), "user_limits.") {
            Ok(limits) => key.user_limits = Some(limits),
            Err(error) => return error.into_response(),
        }
    }
    match metadata_text(body.metadata, &key.metadata) {
        Ok(metadata) => key.metadata = metadata,
        Err(error) => return error.into_response(),
    }
    if let Some(expires) = body.expires_at {
        key.expires_at_ms = expires.map(|seconds| seconds.saturating_mul(1000));
    }
    key.updated_at_ms = unix_millis();
    save_key(&gateway, &key, None).await
}

async fn save_key(gateway: &Gateway, key: &KeyRecord, secret: Option<String>) -> Response {
    match gateway.store.update_key(key).await {
        Err(error) => store_failed(error),
        Ok(Err(refused)) => conflict(refused),
        Ok(Ok(())) => {
            refreshed(gateway).await;
            count_past_spend(gateway, ScopeKind::Key, &key.id, &key.limits).await;
            let mut view = key_view(key, unix_millis());
            if let Some(secret) = secret {
                view["key"] = json!(secret);
            }
            json_reply(StatusCode::OK, &view)
        }
    }
}

pub(crate) async fn revoke_key(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Response {
    let mut key = match find_key(&gateway, &id).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    let now = unix_millis();
    key.revoked_at_ms.get_or_insert(now);
    key.updated_at_ms = now;
    save_key(&gateway, &key, None).await
}

/// A new secret for the same key (same id, limits and spend); the old
/// secret stops working at once.
pub(crate) async fn rotate_key(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Response {
    let mut key = match find_key(&gateway, &id).await {
        Ok(key) => key,
        Err(response) => return response,
    };
    if key.revoked_at_ms.is_some() {
        return ApiError::admin_conflict(format!("key `{id}` is revoked; create a new one"))
            .into_response();
    }
    let secret = new_secret();
    key.hash = hash_secret(&secret);
    key.prefix = secret_prefix(&secret);
    key.updated_at_ms = unix_millis();
    save_key(&gateway, &key, Some(secret)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpendParams {
    group_by: Option<String>,
    /// Unix seconds or RFC 3339, inclusive; default: 30 days ago.
    from: Option<String>,
    /// Unix seconds or RFC 3339, exclusive; default: now.
    to: Option<String>,
}

pub(crate) async fn spend(
    State(gateway): State<Arc<Gateway>>,
    params: Result<Query<SpendParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return bad(
            "query parameters are group_by (key, team, model, day), from and to (Unix seconds or RFC 3339)",
            "query",
        )
        .into_response();
    };
    let group = match params.group_by.as_deref().unwrap_or("key") {
        "key" => SpendGroup::Key,
        "team" => SpendGroup::Team,
        "model" => SpendGroup::Model,
        "day" => SpendGroup::Day,
        other => {
            return bad(
                format!("`group_by` must be key, team, model or day, got `{other}`"),
                "group_by",
            )
            .into_response();
        }
    };
    let now = unix_millis();
    let time = |name: &str, text: &Option<String>| {
        text.as_deref()
            .map(|text| parse_time(name, text))
            .transpose()
    };
    let (to_ms, from_ms) = match (time("to", &params.to), time("from", &params.from)) {
        (Ok(to), Ok(from)) => (to.unwrap_or(now + 1), from.unwrap_or(now - 30 * 86_400_000)),
        (Err(error), _) | (_, Err(error)) => return error.into_response(),
    };
    if from_ms >= to_ms {
        return bad("`from` must be before `to`", "from").into_response();
    }
    match gateway
        .store
        .spend(SpendQuery {
            group,
            from_ms,
            to_ms,
        })
        .await
    {
        Ok(rows) => list_reply(
            rows.iter()
                .map(|row| {
                    json!({
                        "group": row.group,
                        "requests": row.requests,
                        "input_tokens": row.input_tokens,
                        "output_tokens": row.output_tokens,
                        "cost_usd": row.cost_nanos as f64 / 1e9,
                    })
                })
                .collect(),
        ),
        Err(error) => store_failed(error),
    }
}

/// `GET /admin/openapi.json`: the admin API described as OpenAPI 3.1.
pub(crate) async fn openapi() -> Response {
    let mut response = Response::new(Body::from(include_str!("admin_openapi.json")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
