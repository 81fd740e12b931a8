//! The request log through the admin API: `GET /admin/logs` (records,
//! filtered, newest first, a page at a time behind an opaque cursor) and
//! `GET /admin/usage` (requests, tokens, cost, error rate and latency
//! percentiles per model, deployment, key or team, optionally per UTC hour
//! or day). Every query parameter is checked before the store is asked,
//! and a bad one is refused with a 400 that names it.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use switchboard_core::time::{format_rfc3339, format_rfc3339_ms, parse_rfc3339};
use switchboard_core::{Outcome, RequestRecord};
use switchboard_store::{
    LogCursor, LogFilter, LogQuery, UsageBucket, UsageGroup, UsageQuery, UsageRow,
};

use crate::admin::{bad, json_reply, store_failed};
use crate::error::ApiError;
use crate::state::Gateway;
use crate::trace::unix_millis;

/// Records per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1000;

/// The default range of usage (and spend): the last 30 days.
const DEFAULT_RANGE_MS: i64 = 30 * 86_400_000;

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// A time parameter: Unix seconds (as `/admin/spend` has always taken) or
/// an RFC 3339 time (`2024-05-01T12:00:00Z`, `2024-05-01`), in
/// milliseconds since the epoch.
pub(crate) fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(seconds) = text.parse::<i64>() {
        // Past 9999-12-31 is almost surely milliseconds sent as seconds,
        // which would otherwise match nothing without saying why.
        if seconds.abs() > MAX_UNIX_SECONDS {
            return Err(bad(
                format!(
                    "`{name}` is in Unix seconds and must not be after year 9999 (milliseconds were given?)"
                ),
                name,
            ));
        }
        return Ok(seconds * 1000);
    }
    parse_rfc3339(text).ok_or_else(|| {
        bad(
            format!(
                "`{name}` must be Unix seconds or an RFC 3339 time such as 2024-05-01T12:00:00Z"
            ),
            name,
        )
    })
}

/// The query string's parameters, each named at most once and each one
/// the endpoint knows.
struct Params(Vec<(String, String)>);

impl Params {
    fn read(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Params, ApiError> {
        let Ok(Query(pairs)) = query else {
            return Err(bad("the query string is not valid URL encoding", "query"));
        };
        for (index, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(bad(
                    format!(
                        "unknown query parameter `{name}`; this endpoint takes {}",
                        known.join(", ")
                    ),
                    name,
                ));
            }
            if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(bad(format!("`{name}` is given more than once"), name));
            }
        }
        Ok(Params(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|text| parse_time(name, text))
            .transpose()
    }
}

/// `from` before `to`, when both are given.
fn check_range(from_ms: Option<i64>, to_ms: Option<i64>) -> Result<(), ApiError> {
    match (from_ms, to_ms) {
        (Some(from), Some(to)) if from >= to => Err(bad("`from` must be before `to`", "from")),
        _ => Ok(()),
    }
}

/// The cursor as clients see it: opaque, URL-safe text.
fn encode_cursor(cursor: &LogCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}:{}:{}",
        cursor.started_at_ms, cursor.row, cursor.request_id
    ))
}

fn decode_cursor(text: &str) -> Result<LogCursor, ApiError> {
    let refused = || {
        bad(
            "`cursor` is not one this API returned; pass `next_cursor` from a previous page",
            "cursor",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| refused())?;
    let text = String::from_utf8(bytes).map_err(|_| refused())?;
    let mut parts = text.splitn(3, ':');
    let (Some(at), Some(row), Some(request_id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(refused());
    };
    Ok(LogCursor {
        started_at_ms: at.parse().map_err(|_| refused())?,
        row: row.parse().map_err(|_| refused())?,
        request_id: request_id.to_owned(),
    })
}

fn outcome_named(text: &str) -> Option<Outcome> {
    [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::UpstreamError,
        Outcome::ClientClosed,
        Outcome::Shutdown,
    ]
    .into_iter()
    .find(|outcome| outcome.as_str() == text)
}

const LOG_PARAMS: &[&str] = &[
    "from",
    "to",
    "key_id",
    "team_id",
    "model",
    "deployment",
    "status",
    "outcome",
    "request_id",
    "end_user",
    "metadata",
    "limit",
    "cursor",
];

fn log_query(params: &Params) -> Result<LogQuery, ApiError> {
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                bad(
                    format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"),
                    "limit",
                )
            })?,
    };
    let status = params
        .get("status")
        .map(|text| {
            text.parse::<u16>()
                .ok()
                .filter(|status| (100..=999).contains(status))
                .ok_or_else(|| bad("`status` must be an HTTP status code such as 429", "status"))
        })
        .transpose()?;
    let outcome = params
        .get("outcome")
        .map(|text| {
            outcome_named(text).ok_or_else(|| {
                bad(
                    "`outcome` must be success, client_error, upstream_error, client_closed or shutdown",
                    "outcome",
                )
            })
        })
        .transpose()?;
    let (from_ms, to_ms) = (params.time("from")?, params.time("to")?);
    check_range(from_ms, to_ms)?;
    let after = params.get("cursor").map(decode_cursor).transpose()?;
    let metadata = params
        .get("metadata")
        .map(|text| {
            text.split_once(':')
                .filter(|(name, _)| !name.is_empty())
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .ok_or_else(|| {
                    bad(
                        "`metadata` must be NAME:VALUE, one member of the request's x-switchboard-metadata",
                        "metadata",
                    )
                })
        })
        .transpose()?;
    Ok(LogQuery {
        filter: LogFilter {
            from_ms,
            to_ms,
            key_id: params.text("key_id"),
            team_id: params.text("team_id"),
            model: params.text("model"),
            deployment: params.text("deployment"),
            status,
            outcome,
            request_id: params.text("request_id"),
            end_user: params.text("end_user"),
            metadata,
        },
        after,
        limit,
    })
}

fn usd(nanos: u64) -> Value {
    // Exact for any amount below a million dollars: the nearest double to
    // a decimal of at most 15 significant digits prints back as it.
    json!(nanos as f64 / 1e9)
}

/// A record as the admin API shows it: flat, times in RFC 3339 and in
/// milliseconds, cost in nano-dollars and in USD.
fn record_view(record: &RequestRecord) -> Value {
    json!({
        "request_id": record.request_id,
        "started_at": format_rfc3339_ms(record.started_at_ms),
        "started_at_ms": record.started_at_ms,
        "endpoint": record.endpoint.as_str(),
        "model": record.model,
        "served_model": record.served_model,
        "deployment": record.deployment,
        "attempts": record.attempts,
        "attempt_details": record.attempt_details,
        "stream": record.stream,
        "status": record.status,
        "outcome": record.outcome.as_str(),
        "error_code": record.error_code,
        "latency_ms": record.latency_ms,
        "ttft_ms": record.ttft_ms,
        "input_tokens": record.usage.input_tokens,
        "output_tokens": record.usage.output_tokens,
        "cached_input_tokens": record.usage.cached_input_tokens,
        "cache_write_tokens": record.usage.cache_write_tokens,
        "reasoning_tokens": record.usage.reasoning_tokens,
        "key_id": record.key_id,
        "team_id": record.team_id,
        "end_user": record.end_user,
        "cost_nanos": record.cost_nanos,
        "cost_usd": record.cost_nanos.map(usd),
        "cache_hit": record.cache_hit,
        "metadata": record
            .metadata
            .as_deref()
            .and_then(|text| serde_json::from_str::<Value>(text).ok()),
    })
}

/// `GET /admin/logs/{request_id}`: every record with that request id,
/// newest first, with its kept bodies (`request_body`, `response_body`;
/// null when none were kept).
pub(crate) async fn log_entry(
    State(gateway): State<Arc<Gateway>>,
    Path(request_id): Path<String>,
) -> Response {
    let query = LogQuery {
        filter: LogFilter {
            request_id: Some(request_id.clone()),
            ..LogFilter::default()
        },
        after: None,
        limit: MAX_LIMIT,
    };
    let (page, bodies) = match tokio::try_join!(
        gateway.store.log_page(&query),
        gateway.store.record_bodies(&request_id)
    ) {
        Ok(found) => found,
        Err(error) => return store_failed(error),
    };
    if page.records.is_empty() {
        return ApiError::admin_not_found("request", &request_id).into_response();
    }
    let data: Vec<Value> = page
        .records
        .iter()
        .map(|record| {
            let mut view = record_view(record);
            let kept = bodies
                .iter()
                .find(|(started_at_ms, _)| *started_at_ms == record.started_at_ms)
                .map(|(_, bodies)| bodies);
            view["request_body"] = json!(kept.map(|bodies| &bodies.request));
            view["response_body"] = json!(kept.and_then(|bodies| bodies.response.as_ref()));
            view
        })
        .collect();
    json_reply(StatusCode::OK, &json!({"object": "list", "data": data}))
}

/// `GET /admin/logs`
pub(crate) async fn logs(
    State(gateway): State<Arc<Gateway>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let query = match Params::read(query, LOG_PARAMS).and_then(|params| log_query(&params)) {
        Ok(query) => query,
        Err(error) => return error.into_response(),
    };
    match gateway.store.log_page(&query).await {
        Ok(page) => json_reply(
            StatusCode::OK,
            &json!({
                "object": "list",
                "data": page.records.iter().map(record_view).collect::<Vec<_>>(),
                "next_cursor": page.next.as_ref().map(encode_cursor),
            }),
        ),
        Err(error) => store_failed(error),
    }
}

const USAGE_PARAMS: &[&str] = &["group_by", "bucket", "from", "to"];

fn usage_query(params: &Params, now_ms: i64) -> Result<UsageQuery, ApiError> {
    let group = match params.get("group_by").unwrap_or("model") {
        "model" => UsageGroup::Model,
        "deployment" => UsageGroup::Deployment,
        "key" => UsageGroup::Key,
        "team" => UsageGroup::Team,
        other => {
            return Err(bad(
                format!("`group_by` must be model, deployment, key or team, got `{other}`"),
                "group_by",
            ));
        }
    };
    let bucket = match params.get("bucket") {
        None => None,
        Some("hour") => Some(UsageBucket::Hour),
        Some("day") => Some(UsageBucket::Day),
        Some(other) => {
            return Err(bad(
                format!("`bucket` must be hour or day, got `{other}`"),
                "bucket",
            ));
        }
    };
    let to_ms = params.time("to")?.unwrap_or(now_ms + 1);
    let from_ms = params.time("from")?.unwrap_or(to_ms - DEFAULT_RANGE_MS);
    check_range(Some(from_ms), Some(to_ms))?;
    Ok(UsageQuery {
        group,
        bucket,
        from_ms,
        to_ms,
    })
}

fn usage_view(row: &UsageRow) -> Value {
    json!({
        "group": row.group,
        "bucket": row.bucket_start_ms.map(format_rfc3339),
        "requests": row.requests,
        "errors": row.errors,
        "error_rate": row.errors as f64 / row.requests.max(1) as f64,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost_nanos": row.cost_nanos,
        "cost_usd": usd(row.cost_nanos),
        "latency_p50_ms": row.latency_p50_ms,
        "latency_p95_ms": row.latency_p95_ms,
        "ttft_p50_ms": row.ttft_p50_ms,
        "ttft_p95_ms": row.ttft_p95_ms,
    })
}

/// `GET /admin/usage`
pub(crate) async fn usage(
    State(gateway): State<Arc<Gateway>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let params = match Params::read(query, USAGE_PARAMS) {
        Ok(params) => params,
        Err(error) => return error.into_response(),
    };
    let query = match usage_query(&params, unix_millis()) {
        Ok(query) => query,
        Err(error) => return error.into_response(),
    };
    match gateway.store.usage(query).await {
        Ok(rows) => json_reply(
            StatusCode::OK,
            &json!({
                "object": "list",
                "group_by": params.get("group_by").unwrap_or("model"),
                "bucket": params.get("bucket"),
                "from": format_rfc3339_ms(query.from_ms),
                "to": format_rfc3339_ms(query.to_ms),
                "data": rows.iter().map(usage_view).collect::<Vec<_>>(),
            }),
        ),
        Err(error) => store_failed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let cursor = LogCursor {
            started_at_ms: 1_700_000_000_123,
            row: 42,
            request_id: "req:with:colons-ü".to_owned(),
        };
        let text = encode_cursor(&cursor);
        assert!(
            text.bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        );
        assert_eq!(decode_cursor(&text).unwrap(), cursor);
        for junk in [
            "",
            "!!!",
            "bm90IGEgY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("x:1:id"),
            &URL_SAFE_NO_PAD.encode("1:y:id"),
            &URL_SAFE_NO_PAD.encode("1:2"),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            assert!(decode_cursor(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn times_are_unix_seconds_or_rfc_3339() {
        assert_eq!(parse_time("from", "1700000000").unwrap(), 1_700_000_000_000);
        assert_eq!(
            parse_time("from", "2023-11-14T22:13:20.5Z").unwrap(),
            1_700_000_000_500
        );
        assert!(parse_time("to", "yesterday").is_err());
        assert!(parse_time("to", "1.5").is_err());
        assert_eq!(
            parse_time("to", "253402300799").unwrap(),
            253_402_300_799_000
        );
        assert!(parse_time("to", "1700000000000").is_err());
        assert!(parse_time("to", "-253402300800").is_err());
    }
}
