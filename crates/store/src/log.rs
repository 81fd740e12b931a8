//! Reading the request log: pages of records (filtered, newest first,
//! continued by a keyset cursor) and usage aggregates with percentiles.
//! The SQL is written once here, for both backends, through sqlx's
//! `QueryBuilder`; each backend runs it and decodes its rows.
//!
//! **Pages.** Records are ordered by `(started_at_ms, request_id, id)`,
//! descending, where `id` is the row's own number: a client may send the
//! same request id twice, so the row number breaks the last tie and the
//! order is total. A page ends with the cursor of its last row, and the
//! next page holds the rows strictly after it in that order. No offset is
//! counted, so rows inserted while a client pages (newer ones, at the top)
//! neither shift nor repeat the rows it has yet to read. Text compares
//! byte by byte on both backends (`COLLATE "C"` on PostgreSQL).
//!
//! **Percentiles** use the nearest-rank definition on both backends: the
//! p-th percentile of n values is the value at 1-based position
//! `ceil(p * n / 100)` of the values sorted ascending, that is the smallest
//! value that at least p% of the values do not exceed. It is always one of
//! the recorded values (never an interpolation). The database ranks each
//! group's values with `ROW_NUMBER()` and picks that position with integer
//! arithmetic, so no float rounding can make SQLite and PostgreSQL differ.
//! Time to first token counts only requests that have one (streams that
//! sent content); a group without any has none.

use sqlx::{Database, Encode, QueryBuilder, Type};
use switchboard_core::{AttemptDetail, Endpoint, Outcome, RequestRecord, Usage, request_id};

/// A record's attempt details as the `attempt_details` column keeps them:
/// a JSON array, or NULL when there are none.
pub(crate) fn attempt_details_json(details: &[AttemptDetail]) -> Option<String> {
    if details.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(96 * details.len());
    write_attempt_details(&mut out, details);
    Some(out)
}

/// A record's attempt details as JSON, exactly as serde writes them, for
/// the request log's column: written by hand (serde's writing was a tenth
/// of the request log's cost), as text from text, so that the result needs
/// no UTF-8 check (about 130 instructions a record).
fn write_attempt_details(out: &mut String, details: &[AttemptDetail]) {
    out.push('[');
    for (index, detail) in details.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str("{\"deployment\":");
        json_string(out, &detail.deployment);
        out.push_str(",\"model\":");
        json_string(out, &detail.model);
        out.push_str(",\"outcome\":");
        json_string(out, &detail.outcome);
        if let Some(status) = detail.status {
            out.push_str(",\"status\":");
            json_int(out, status);
        }
        out.push_str(",\"duration_ms\":");
        json_int(out, detail.duration_ms);
        out.push('}');
    }
    out.push(']');
}

/// A string as JSON: copied between quotes when no byte needs escaping
/// (no quote, backslash or control character), else written by serde.
/// Every byte is looked at (no early exit), which lets the check run on
/// many bytes at a time.
fn json_string(out: &mut String, text: &str) {
    let plain = text.bytes().fold(true, |plain, byte| {
        plain & (byte >= 0x20) & (byte != b'"') & (byte != b'\\')
    });
    if plain {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        // Serializing a string cannot fail.
        out.push_str(&serde_json::to_string(text).unwrap_or_default());
    }
}

/// An integer, as serde writes it.
fn json_int(out: &mut String, value: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(value));
}

/// The `attempt_details` column back into a list. A value that does not
/// parse reads as no details rather than failing the whole page.
pub(crate) fn attempt_details_from_json(text: Option<&str>) -> Vec<AttemptDetail> {
    text.and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// Which records a page reads; every `Some` must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Milliseconds since the epoch; `from` inclusive, `to` exclusive.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    /// The public model the client asked for.
    pub model: Option<String>,
    pub deployment: Option<String>,
    pub status: Option<u16>,
    pub outcome: Option<Outcome>,
    pub request_id: Option<String>,
    pub end_user: Option<String>,
    /// One member of the request's metadata: name and value.
    pub metadata: Option<(String, String)>,
}

/// Where a page ends: the last row's place in the log's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogCursor {
    pub started_at_ms: i64,
    pub request_id: String,
    /// The row's number in the `requests` table.
    pub row: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub filter: LogFilter,
    /// Continue strictly after this row.
    pub after: Option<LogCursor>,
    /// At most this many records.
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    /// Newest first.
    pub records: Vec<RequestRecord>,
    /// The cursor of the last record when more records follow it.
    pub next: Option<LogCursor>,
}

/// What usage is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Model,
    Deployment,
    Key,
    Team,
}

/// Time buckets, aligned to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageBucket {
    Hour,
    Day,
}

impl UsageBucket {
    pub fn millis(self) -> i64 {
        match self {
            UsageBucket::Hour => 3_600_000,
            UsageBucket::Day => 86_400_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageQuery {
    pub group: UsageGroup,
    pub bucket: Option<UsageBucket>,
    /// Milliseconds since the epoch; `from` inclusive, `to` exclusive.
    pub from_ms: i64,
    pub to_ms: i64,
}

/// One group (in one bucket) of the request log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The model, deployment, key id or team id; empty for requests
    /// without one.
    pub group: String,
    /// Start of the bucket, when bucketed.
    pub bucket_start_ms: Option<i64>,
    pub requests: u64,
    /// Requests whose outcome was not `success`.
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: u64,
    /// Nearest-rank percentiles (see the module's comment).
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
    pub ttft_p50_ms: Option<u64>,
    pub ttft_p95_ms: Option<u64>,
}

/// The 1-based position of the `percent`-th percentile among `count`
/// sorted values (nearest rank); 0 when there are none. The SQL computes
/// the same as `(count * percent + 99) / 100`.
pub fn nearest_rank(percent: u64, count: u64) -> u64 {
    (count * percent).div_ceil(100)
}

/// What the shared SQL needs to know of a backend.
pub(crate) struct Dialect {
    /// Appended to a text column compared or sorted, so that both
    /// backends order text byte by byte.
    pub byte_order: &'static str,
    /// The function giving the (1-based) position of a substring, 0 when
    /// absent: exact and case-sensitive on both backends.
    pub find: &'static str,
    /// The condition of the partial index on `request_id`, written as the
    /// index has it so that the planner uses the index.
    pub untimed: &'static str,
}

pub(crate) const SQLITE: Dialect = Dialect {
    byte_order: "",
    find: "instr",
    untimed: "timed_id = 0",
};
pub(crate) const POSTGRES: Dialect = Dialect {
    byte_order: " COLLATE \"C\"",
    find: "strpos",
    untimed: "NOT timed_id",
};

/// The record's columns, in the order every reader decodes them, and the
/// row number for the cursor.
const RECORD_COLUMNS: &str = "id, request_id, started_at_ms, endpoint, model, deployment, stream, status, outcome, \
     error_code, latency_ms, ttft_ms, input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, attempts, \
     served_model, key_id, team_id, end_user, cost_nanos, cache_write_tokens, cache_hit, metadata, attempt_details";

/// One page of the log: `query.limit + 1` rows, the last of which (when
/// present) only says that more follow.
pub(crate) fn page_sql<DB>(query: &LogQuery, dialect: &Dialect) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    let mut sql =
        QueryBuilder::<DB>::new(format!("SELECT {RECORD_COLUMNS} FROM requests WHERE 1 = 1"));
    let filter = &query.filter;
    if let Some(from) = filter.from_ms {
        sql.push(" AND started_at_ms >= ").push_bind(from);
    }
    if let Some(to) = filter.to_ms {
        sql.push(" AND started_at_ms < ").push_bind(to);
    }
    for (column, value) in [
        ("key_id", &filter.key_id),
        ("team_id", &filter.team_id),
        ("model", &filter.model),
        ("deployment", &filter.deployment),
        ("end_user", &filter.end_user),
    ] {
        if let Some(value) = value {
            sql.push(format!(" AND {column} = "))
                .push_bind(value.clone());
        }
    }
    if let Some(id) = &filter.request_id {
        // A record whose id the gateway made is found by its start time,
        // which the id carries; any other is in the index on the id
        // (see the migration `timed_request_ids`).
        sql.push(" AND request_id = ").push_bind(id.clone());
        match request_id::millis(id) {
            Some(millis) => sql
                .push(format!(" AND ({} OR started_at_ms = ", dialect.untimed))
                .push_bind(millis)
                .push(")"),
            None => sql.push(format!(" AND {}", dialect.untimed)),
        };
    }
    if let Some(status) = filter.status {
        sql.push(" AND status = ").push_bind(i64::from(status));
    }
    if let Some(outcome) = filter.outcome {
        sql.push(" AND outcome = ")
            .push_bind(outcome.as_str().to_owned());
    }
    if let Some((name, value)) = &filter.metadata {
        // Metadata is stored as JSON with sorted members and escaped
        // strings, so a member appears as exactly `"name":"value"`: an
        // unescaped quote is always a delimiter.
        sql.push(format!(" AND {}(metadata, ", dialect.find))
            .push_bind(metadata_member(name, value))
            .push(") > 0");
    }
    let request_id = format!("request_id{}", dialect.byte_order);
    if let Some(after) = &query.after {
        sql.push(format!(" AND (started_at_ms, {request_id}, id) < ("))
            .push_bind(after.started_at_ms)
            .push(", ")
            .push_bind(after.request_id.clone())
            .push(", ")
            .push_bind(after.row)
            .push(")");
    }
    sql.push(format!(
        " ORDER BY started_at_ms DESC, {request_id} DESC, id DESC LIMIT "
    ))
    .push_bind(i64::from(query.limit) + 1);
    sql
}

/// How the member `name: value` appears in stored metadata: JSON with
/// sorted members and escaped strings, so an unescaped quote is always a
/// delimiter and the text is found exactly where the member is.
fn metadata_member(name: &str, value: &str) -> String {
    format!(
        "{}:{}",
        serde_json::Value::from(name),
        serde_json::Value::from(value)
    )
}

/// Turns the `limit + 1` rows a page read into the page.
pub(crate) fn page_of(mut rows: Vec<(i64, RequestRecord)>, limit: u32) -> LogPage {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|(row, record)| LogCursor {
            started_at_ms: record.started_at_ms,
            request_id: record.request_id.clone(),
            row: *row,
        })
    } else {
        None
    };
    LogPage {
        records: rows.into_iter().map(|(_, record)| record).collect(),
        next,
    }
}

/// The usage aggregate: each row of the range is ranked within its group
/// by latency and by time to first token (requests without one rank after
/// those with one), then each group keeps the values at the nearest-rank
/// positions. Sums are cast to BIGINT because PostgreSQL sums BIGINT into
/// NUMERIC (SQLite reads the cast as INTEGER).
pub(crate) fn usage_sql<DB>(query: &UsageQuery, dialect: &Dialect) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let group = match query.group {
        UsageGroup::Model => "model",
        UsageGroup::Deployment => "COALESCE(deployment, '')",
        UsageGroup::Key => "COALESCE(key_id, '')",
        UsageGroup::Team => "COALESCE(team_id, '')",
    };
    // Whole buckets from the epoch; timestamps are after 1970, where
    // integer division rounds down.
    let bucket = match query.bucket {
        None => "CAST(NULL AS BIGINT)".to_owned(),
        Some(bucket) => {
            let millis = bucket.millis();
            format!("started_at_ms / {millis} * {millis}")
        }
    };
    let partition = format!("PARTITION BY {group}, {bucket}");
    let percentile = |percent: u64, column: &str| {
        format!(
            "MAX(CASE WHEN {column}_rank = ({column}_count * {percent} + 99) / 100 THEN {column}_ms END)"
        )
    };
    let byte_order = dialect.byte_order;
    let mut sql = QueryBuilder::<DB>::new(format!(
        "WITH ranked AS (SELECT {group} AS grp, {bucket} AS bucket, outcome, input_tokens, output_tokens, \
         cost_nanos, latency_ms, ttft_ms, \
         ROW_NUMBER() OVER ({partition} ORDER BY latency_ms) AS latency_rank, \
         COUNT(*) OVER ({partition}) AS latency_count, \
         ROW_NUMBER() OVER ({partition} ORDER BY ttft_ms IS NULL, ttft_ms) AS ttft_rank, \
         COUNT(ttft_ms) OVER ({partition}) AS ttft_count \
         FROM requests WHERE started_at_ms >= "
    ));
    sql.push_bind(query.from_ms)
        .push(" AND started_at_ms < ")
        .push_bind(query.to_ms);
    sql.push(format!(
        ") SELECT grp, bucket, COUNT(*) AS requests, \
         CAST(SUM(CASE WHEN outcome = 'success' THEN 0 ELSE 1 END) AS BIGINT) AS errors, \
         CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT) AS input, \
         CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT) AS output, \
         CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) AS cost, \
         {} AS latency_p50, {} AS latency_p95, {} AS ttft_p50, {} AS ttft_p95 \
         FROM ranked GROUP BY grp, bucket ORDER BY bucket, cost DESC, grp{byte_order}",
        percentile(50, "latency"),
        percentile(95, "latency"),
        percentile(50, "ttft"),
        percentile(95, "ttft"),
    ));
    sql
}

/// Reads one request-log row (`RECORD_COLUMNS`), whichever the backend.
pub(crate) fn record_from_row<R>(row: &R) -> Result<RequestRecord, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let opt_u64 = |value: Option<i64>| value.map(|value| value.max(0) as u64);
    let endpoint = match row.try_get::<String, _>("endpoint")?.as_str() {
        "embeddings" => Endpoint::Embeddings,
        "messages" => Endpoint::Messages,
        _ => Endpoint::ChatCompletions,
    };
    let outcome = match row.try_get::<String, _>("outcome")?.as_str() {
        "success" => Outcome::Success,
        "client_error" => Outcome::ClientError,
        "client_closed" => Outcome::ClientClosed,
        "shutdown" => Outcome::Shutdown,
        _ => Outcome::UpstreamError,
    };
    Ok(RequestRecord {
        request_id: row.try_get("request_id")?,
        started_at_ms: row.try_get("started_at_ms")?,
        endpoint,
        model: row.try_get("model")?,
        deployment: row.try_get("deployment")?,
        served_model: row.try_get("served_model")?,
        attempts: row
            .try_get::<i64, _>("attempts")?
            .clamp(0, i64::from(u32::MAX)) as u32,
        attempt_details: crate::log::attempt_details_from_json(
            row.try_get::<Option<String>, _>("attempt_details")?
                .as_deref(),
        ),
        stream: row.try_get("stream")?,
        status: row.try_get::<i64, _>("status")?.clamp(0, 999) as u16,
        outcome,
        error_code: row.try_get("error_code")?,
        latency_ms: row.try_get::<i64, _>("latency_ms")?.max(0) as u64,
        ttft_ms: opt_u64(row.try_get("ttft_ms")?),
        usage: Usage {
            input_tokens: opt_u64(row.try_get("input_tokens")?),
            output_tokens: opt_u64(row.try_get("output_tokens")?),
            cached_input_tokens: opt_u64(row.try_get("cached_input_tokens")?),
            reasoning_tokens: opt_u64(row.try_get("reasoning_tokens")?),
            cache_write_tokens: opt_u64(row.try_get("cache_write_tokens")?),
        },
        key_id: row.try_get::<Option<String>, _>("key_id")?.map(Into::into),
        team_id: row.try_get::<Option<String>, _>("team_id")?.map(Into::into),
        end_user: row.try_get("end_user")?,
        cost_nanos: opt_u64(row.try_get("cost_nanos")?),
        cache_hit: row.try_get("cache_hit")?,
        metadata: row.try_get("metadata")?,
        bodies: None,
    })
}

/// Reads one row of `usage_sql`, whichever the backend.
pub(crate) fn usage_row<R>(row: &R) -> Result<UsageRow, sqlx::Error>
where
    R: sqlx::Row,
    for<'r> i64: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    let count =
        |name: &str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
    let value = |name: &str| -> Result<Option<u64>, sqlx::Error> {
        Ok(row
            .try_get::<Option<i64>, _>(name)?
            .map(|value| value.max(0) as u64))
    };
    Ok(UsageRow {
        group: row.try_get("grp")?,
        bucket_start_ms: row.try_get("bucket")?,
        requests: count("requests")?,
        errors: count("errors")?,
        input_tokens: count("input")?,
        output_tokens: count("output")?,
        cost_nanos: count("cost")?,
        latency_p50_ms: value("latency_p50")?,
        latency_p95_ms: value("latency_p95")?,
        ttft_p50_ms: value("ttft_p50")?,
        ttft_p95_ms: value("ttft_p95")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempt details written by hand are byte for byte serde's.
    #[test]
    fn attempt_details_are_exactly_serdes_json() {
        let detail = |deployment: &str, model: &str, outcome: &str, status| AttemptDetail {
            deployment: deployment.into(),
            model: model.into(),
            outcome: outcome.to_owned().into(),
            status,
            duration_ms: 1_234,
        };
        for details in [
            vec![],
            vec![detail("mock", "bench-model", "ok", None)],
            vec![
                detail("a \"quoted\" \\ one", "m\u{1}é🚀", "timeout", Some(504)),
                detail("b\"", "m\u{1f}", "rate_limited", Some(429)),
                detail("c\nline", "m", "ok", None),
            ],
        ] {
            let mut ours = String::new();
            write_attempt_details(&mut ours, &details);
            assert_eq!(ours, serde_json::to_string(&details).unwrap());
        }
    }

    #[test]
    fn attempt_details_are_json_and_junk_reads_as_none() {
        assert_eq!(attempt_details_json(&[]), None);
        let details = vec![AttemptDetail {
            deployment: "east".into(),
            model: "chat".into(),
            outcome: "rate_limited".into(),
            status: Some(429),
            duration_ms: 12,
        }];
        let text = attempt_details_json(&details).unwrap();
        assert_eq!(
            text,
            r#"[{"deployment":"east","model":"chat","outcome":"rate_limited","status":429,"duration_ms":12}]"#
        );
        assert_eq!(attempt_details_from_json(Some(&text)), details);
        assert!(attempt_details_from_json(Some("not json")).is_empty());
        assert!(attempt_details_from_json(None).is_empty());
    }

    #[test]
    fn nearest_rank_positions() {
        assert_eq!(nearest_rank(50, 0), 0);
        assert_eq!(nearest_rank(50, 1), 1);
        assert_eq!(nearest_rank(95, 1), 1);
        assert_eq!(nearest_rank(50, 4), 2);
        assert_eq!(nearest_rank(50, 5), 3);
        assert_eq!(nearest_rank(95, 20), 19);
        assert_eq!(nearest_rank(95, 21), 20);
        assert_eq!(nearest_rank(95, 100), 95);
    }
}
