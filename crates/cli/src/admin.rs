//! `switchboard keys`, `teams`, `spend`, `logs` and `usage`: the admin API
//! of a running gateway, from the command line. They talk to the
//! gateway over HTTP (`--url`, `$SWITCHBOARD_URL`) with the master key
//! (`--master-key`, `$SWITCHBOARD_MASTER_KEY`), so they work the same with
//! SQLite or PostgreSQL and with one instance or many.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use switchboard_providers::{UpstreamClients, UpstreamError};

#[derive(Args)]
pub struct Connection {
    /// The gateway's base URL.
    #[arg(long, env = "SWITCHBOARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The gateway's master key.
    #[arg(long, env = "SWITCHBOARD_MASTER_KEY", hide_env_values = true)]
    master_key: String,
}

/// Limits shared by keys and teams.
#[derive(Args, Default)]
pub struct LimitArgs {
    /// Models allowed, names or `*` patterns, comma-separated.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Budget in USD per period.
    #[arg(long)]
    budget_usd: Option<f64>,
    /// total, daily, weekly or monthly.
    #[arg(long)]
    budget_period: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    max_concurrent: Option<u64>,
    /// Keep request and response bodies (redacted) in the request log.
    #[arg(long)]
    log_bodies: Option<bool>,
}

impl LimitArgs {
    fn into_body(self, body: &mut Map<String, Value>) {
        if let Some(models) = self.models {
            body.insert("models".into(), json!(models));
        }
        if let Some(usd) = self.budget_usd {
            body.insert("budget_usd".into(), json!(usd));
        }
        if let Some(period) = self.budget_period {
            body.insert("budget_period".into(), json!(period));
        }
        if let Some(flag) = self.log_bodies {
            body.insert("log_bodies".into(), json!(flag));
        }
        for (name, value) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrent", self.max_concurrent),
        ] {
            if let Some(value) = value {
                body.insert(name.into(), json!(value));
            }
        }
    }
}

#[derive(Args)]
pub struct KeyFields {
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    team: Option<String>,
    /// Expiry, in Unix seconds.
    #[arg(long)]
    expires_at: Option<i64>,
    /// A JSON object of your own, e.g. '{"owner":"search"}'.
    #[arg(long)]
    metadata: Option<String>,
    /// Limits for each end user of the key, as JSON, e.g. '{"rpm":10}'.
    #[arg(long)]
    user_limits: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// A JSON argument, or why it is not one.
fn json_arg(name: &str, text: Option<String>) -> Result<Option<Value>, String> {
    text.map(|text| {
        serde_json::from_str(&text).map_err(|error| format!("--{name} is not valid JSON: {error}"))
    })
    .transpose()
}

impl KeyFields {
    fn body(self) -> Result<Value, String> {
        let mut body = Map::new();
        if let Some(name) = self.name {
            body.insert("name".into(), json!(name));
        }
        if let Some(team) = self.team {
            body.insert("team_id".into(), json!(team));
        }
        if let Some(expires) = self.expires_at {
            body.insert("expires_at".into(), json!(expires));
        }
        if let Some(metadata) = json_arg("metadata", self.metadata)? {
            body.insert("metadata".into(), metadata);
        }
        if let Some(limits) = json_arg("user-limits", self.user_limits)? {
            body.insert("user_limits".into(), limits);
        }
        self.limits.into_body(&mut body);
        Ok(Value::Object(body))
    }
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed this once.
    Create(KeyFields),
    /// List keys (never their secrets).
    List,
    Show {
        id: String,
    },
    /// Change a key's name, team, limits or expiry.
    Update {
        id: String,
        #[command(flatten)]
        fields: KeyFields,
    },
    /// Revoke a key: it stops working on every instance within a second.
    Revoke {
        id: String,
    },
    /// Give a key a new secret; the old one stops working.
    Rotate {
        id: String,
    },
}

#[derive(Args)]
pub struct TeamFields {
    #[arg(long)]
    name: Option<String>,
    /// Expiry, in Unix seconds: then every key of the team stops working.
    #[arg(long)]
    expires_at: Option<i64>,
    /// A JSON object of your own.
    #[arg(long)]
    metadata: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
}

impl TeamFields {
    fn body(self) -> Result<Value, String> {
        let mut body = Map::new();
        if let Some(name) = self.name {
            body.insert("name".into(), json!(name));
        }
        if let Some(expires) = self.expires_at {
            body.insert("expires_at".into(), json!(expires));
        }
        if let Some(metadata) = json_arg("metadata", self.metadata)? {
            body.insert("metadata".into(), metadata);
        }
        self.limits.into_body(&mut body);
        Ok(Value::Object(body))
    }
}

/// The body of a request, or the exit after saying why there is none.
fn body_or_exit(body: Result<Value, String>) -> Result<Value, ExitCode> {
    body.map_err(|why| {
        crate::write_err(&format!("{why}\n"));
        ExitCode::from(2)
    })
}

#[derive(Subcommand)]
pub enum TeamsCommand {
    Create(TeamFields),
    List,
    Show {
        id: String,
    },
    /// Change a team's name, limits or expiry.
    Update {
        id: String,
        #[command(flatten)]
        fields: TeamFields,
    },
    /// Delete a team that has no active keys.
    Delete {
        id: String,
    },
}

#[derive(Args)]
pub struct SpendArgs {
    /// key, team, model or day.
    #[arg(long, default_value = "key")]
    group_by: String,
    /// Unix seconds or RFC 3339 (default: 30 days ago).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Unix seconds or RFC 3339 (default: now).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
}

/// Sends one admin request and prints its answer; the exit code says
/// whether the gateway accepted it.
fn call(
    connection: &Connection,
    method: &str,
    path: &str,
    body: Option<Value>,
    print: fn(&Value) -> String,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            crate::write_err(&format!("cannot start: {error}\n"));
            return ExitCode::FAILURE;
        }
    };
    let url = format!("{}{path}", connection.url.trim_end_matches('/'));
    let answer = runtime.block_on(send(connection, method, &url, body));
    match answer {
        Err(error) => {
            crate::write_err(&format!(
                "cannot reach the gateway at {}: {error}\n",
                connection.url
            ));
            ExitCode::FAILURE
        }
        Ok((status, text)) => {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if status.is_success() {
                crate::write_out(&print(&value));
                ExitCode::SUCCESS
            } else {
                let message = value["error"]["message"]
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned);
                crate::write_err(&format!("{status}: {message}\n"));
                ExitCode::FAILURE
            }
        }
    }
}

/// One request to the gateway's admin API, with the master key; its
/// status and body. An error says why the gateway could not be reached.
async fn send(
    connection: &Connection,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> Result<(http::StatusCode, String), String> {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "the gateway's URL is invalid".to_owned())?;
    let mut request = http::Request::new(body.map_or_else(bytes::Bytes::new, |body| {
        bytes::Bytes::from(body.to_string())
    }));
    *request.method_mut() = method.parse().unwrap_or(http::Method::GET);
    *request.uri_mut() = uri;
    let mut bearer = HeaderValue::try_from(format!("Bearer {}", connection.master_key))
        .map_err(|_| "the master key holds characters not allowed in a header".to_owned())?;
    bearer.set_sensitive(true);
    request.headers_mut().insert(AUTHORIZATION, bearer);
    if !request.body().is_empty() {
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let response = UpstreamClients::new()
        .exchange(request, std::time::Duration::from_secs(30))
        .await
        .map_err(|error| match error {
            UpstreamError::Connect(cause) | UpstreamError::Transport(cause) => cause,
            UpstreamError::Timeout { .. } => "no answer within 30 s".to_owned(),
            other => other.to_string(),
        })?;
    let status = response.status();
    Ok((
        status,
        String::from_utf8_lossy(response.body()).into_owned(),
    ))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

/// A created or rotated key: its secret first, as the one time it is seen.
fn with_secret(value: &Value) -> String {
    match value["key"].as_str() {
        Some(secret) => format!(
            "{secret}\n(store this secret now: it is not shown again)\n{}",
            pretty(value)
        ),
        None => pretty(value),
    }
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.is_empty() => "all".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Rows of `data` as an aligned table of `columns`.
fn table(value: &Value, columns: &[&str]) -> String {
    let headers: Vec<String> = columns
        .iter()
        .map(|column| column.to_ascii_uppercase())
        .collect();
    let rows = data(value)
        .iter()
        .map(|row| columns.iter().map(|column| cell(&row[*column])).collect())
        .collect();
    aligned(headers, rows)
}

/// The `data` array of an answer (empty when there is none).
fn data(value: &Value) -> &[Value] {
    value["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A header and rows, each column as wide as its widest cell.
fn aligned(headers: Vec<String>, rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(headers).chain(rows).collect();
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|index| {
            rows.iter()
                .map(|row| row[index].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn keys(connection: &Connection, command: KeysCommand) -> ExitCode {
    match command {
        KeysCommand::Create(fields) => match body_or_exit(fields.body()) {
            Ok(body) => call(connection, "POST", "/admin/keys", Some(body), with_secret),
            Err(code) => code,
        },
        KeysCommand::List => call(connection, "GET", "/admin/keys", None, |value| {
            table(
                value,
                &[
                    "id",
                    "name",
                    "prefix",
                    "team_id",
                    "active",
                    "models",
                    "budget_usd",
                    "budget_period",
                    "rpm",
                    "tpm",
                    "max_concurrent",
                ],
            )
        }),
        KeysCommand::Show { id } => call(
            connection,
            "GET",
            &format!("/admin/keys/{id}"),
            None,
            pretty,
        ),
        KeysCommand::Update { id, fields } => match body_or_exit(fields.body()) {
            Ok(body) => call(
                connection,
                "PATCH",
                &format!("/admin/keys/{id}"),
                Some(body),
                pretty,
            ),
            Err(code) => code,
        },
        KeysCommand::Revoke { id } => call(
            connection,
            "POST",
            &format!("/admin/keys/{id}/revoke"),
            None,
            pretty,
        ),
        KeysCommand::Rotate { id } => call(
            connection,
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            None,
            with_secret,
        ),
    }
}

pub fn teams(connection: &Connection, command: TeamsCommand) -> ExitCode {
    match command {
        TeamsCommand::Create(fields) => match body_or_exit(fields.body()) {
            Ok(body) => call(connection, "POST", "/admin/teams", Some(body), pretty),
            Err(code) => code,
        },
        TeamsCommand::List => call(connection, "GET", "/admin/teams", None, |value| {
            table(
                value,
                &[
                    "id",
                    "name",
                    "active",
                    "expires_at",
                    "models",
                    "budget_usd",
                    "budget_period",
                    "rpm",
                    "tpm",
                    "max_concurrent",
                ],
            )
        }),
        TeamsCommand::Show { id } => call(
            connection,
            "GET",
            &format!("/admin/teams/{id}"),
            None,
            pretty,
        ),
        TeamsCommand::Update { id, fields } => match body_or_exit(fields.body()) {
            Ok(body) => call(
                connection,
                "PATCH",
                &format!("/admin/teams/{id}"),
                Some(body),
                pretty,
            ),
            Err(code) => code,
        },
        TeamsCommand::Delete { id } => call(
            connection,
            "DELETE",
            &format!("/admin/teams/{id}"),
            None,
            pretty,
        ),
    }
}

pub fn spend(connection: &Connection, args: SpendArgs) -> ExitCode {
    let mut query = vec![("group_by", args.group_by)];
    if let Some(from) = args.from {
        query.push(("from", from));
    }
    if let Some(to) = args.to {
        query.push(("to", to));
    }
    let path = with_query("/admin/spend", &query);
    call(connection, "GET", &path, None, |value| {
        table(
            value,
            &[
                "group",
                "requests",
                "input_tokens",
                "output_tokens",
                "cost_usd",
            ],
        )
    })
}

/// A time for `--from` and `--to`: Unix seconds or RFC 3339, passed to
/// the gateway as given (it checks them and names a bad one).
#[derive(Args)]
pub struct RangeArgs {
    /// Only the last DURATION, e.g. 90s, 15m, 6h, 7d (instead of --from).
    #[arg(long, value_name = "DURATION", conflicts_with = "from")]
    since: Option<String>,
    /// Start, inclusive: Unix seconds or RFC 3339 (2024-05-01T12:00:00Z, 2024-05-01).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// End, exclusive: Unix seconds or RFC 3339.
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
}

/// Seconds in `90s`, `15m`, `6h`, `7d` (a bare number is seconds).
fn duration_seconds(text: &str) -> Option<u64> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    number.checked_mul(unit)
}

impl RangeArgs {
    /// Adds `from` and `to` to the query, or says why `--since` is wrong.
    fn into_query(self, query: &mut Vec<(&'static str, String)>) -> Result<(), String> {
        if let Some(since) = self.since {
            let seconds = duration_seconds(&since).ok_or_else(|| {
                format!("--since takes a duration such as 90s, 15m, 6h or 7d, got `{since}`")
            })?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            query.push(("from", now.saturating_sub(seconds).to_string()));
        }
        if let Some(from) = self.from {
            query.push(("from", from));
        }
        if let Some(to) = self.to {
            query.push(("to", to));
        }
        Ok(())
    }
}

/// `path` with the query's pairs, URL-encoded.
fn with_query(path: &str, query: &[(&str, String)]) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let mut url = url::Url::parse("http://gateway").expect("a constant URL");
    url.query_pairs_mut().extend_pairs(query);
    format!("{path}?{}", url.query().unwrap_or_default())
}

#[derive(Args)]
pub struct LogsArgs {
    /// Show this one request in detail (its attempts, and its bodies when
    /// kept) instead of listing records.
    #[arg(
        value_name = "REQUEST_ID",
        conflicts_with_all = [
            "model", "deployment", "key", "team", "status", "outcome", "request_id",
            "end_user", "metadata", "limit", "cursor", "since", "from", "to",
        ]
    )]
    show: Option<String>,
    /// Only this public model.
    #[arg(long)]
    model: Option<String>,
    /// Only this deployment.
    #[arg(long)]
    deployment: Option<String>,
    /// Only this virtual key (its id).
    #[arg(long, value_name = "KEY_ID")]
    key: Option<String>,
    /// Only this team (its id).
    #[arg(long, value_name = "TEAM_ID")]
    team: Option<String>,
    /// Only this HTTP status.
    #[arg(long)]
    status: Option<u16>,
    /// Only this outcome: success, client_error, upstream_error, client_closed, shutdown.
    #[arg(long)]
    outcome: Option<String>,
    /// Only this request id.
    #[arg(long)]
    request_id: Option<String>,
    /// Only this end user.
    #[arg(long)]
    end_user: Option<String>,
    /// Only requests whose x-switchboard-metadata has this member, NAME:VALUE.
    #[arg(long, value_name = "NAME:VALUE")]
    metadata: Option<String>,
    #[command(flatten)]
    range: RangeArgs,
    /// Records per page (1 to 1000; default 50).
    #[arg(long)]
    limit: Option<u32>,
    /// Continue after a previous page (its `next cursor`).
    #[arg(long)]
    cursor: Option<String>,
    /// Print the gateway's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// Milliseconds as a short duration: `850ms`, `12.4s`.
fn millis(value: &Value) -> String {
    match value.as_u64() {
        None => "-".to_owned(),
        Some(ms) if ms < 10_000 => format!("{ms}ms"),
        Some(ms) => format!("{:.1}s", ms as f64 / 1000.0),
    }
}

fn count(value: &Value) -> String {
    value
        .as_u64()
        .map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// USD with enough places for a single small request.
fn dollars(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |usd| format!("${usd:.6}"))
}

/// A page of the request log as a table, then how to read the next one.
fn log_table(value: &Value) -> String {
    let headers = [
        "TIME",
        "REQUEST ID",
        "MODEL",
        "DEPLOYMENT",
        "STATUS",
        "LATENCY",
        "TTFT",
        "TOKENS IN/OUT",
        "COST",
    ];
    let rows = data(value)
        .iter()
        .map(|record| {
            vec![
                cell(&record["started_at"]),
                cell(&record["request_id"]),
                match record["model"].as_str() {
                    Some("") => "-".to_owned(),
                    _ => cell(&record["model"]),
                },
                cell(&record["deployment"]),
                format!("{} {}", count(&record["status"]), cell(&record["outcome"])),
                millis(&record["latency_ms"]),
                millis(&record["ttft_ms"]),
                format!(
                    "{}/{}",
                    count(&record["input_tokens"]),
                    count(&record["output_tokens"])
                ),
                dollars(&record["cost_usd"]),
            ]
        })
        .collect();
    let mut out = aligned(headers.map(str::to_owned).to_vec(), rows);
    match value["next_cursor"].as_str() {
        Some(cursor) => out.push_str(&format!("next cursor: {cursor}\n")),
        None => out.push_str("(no more records)\n"),
    }
    out
}

/// Milliseconds, or `-`, for the detail view.
fn detail_millis(value: &Value) -> String {
    value
        .as_u64()
        .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms"))
}

/// Every record of one request id (a client may reuse one), each in full:
/// its fields, its attempts one by one, and its bodies when kept.
fn log_detail(value: &Value) -> String {
    let mut out = String::new();
    for (position, record) in data(value).iter().enumerate() {
        if position > 0 {
            out.push('\n');
        }
        let served = match record["served_model"].as_str() {
            Some(served) => format!(" (served by {served})"),
            None => String::new(),
        };
        let status = match record["error_code"].as_str() {
            Some(code) => format!(
                "{} {} ({code})",
                count(&record["status"]),
                cell(&record["outcome"])
            ),
            None => format!("{} {}", count(&record["status"]), cell(&record["outcome"])),
        };
        let fields = [
            ("request", cell(&record["request_id"])),
            ("started", cell(&record["started_at"])),
            ("endpoint", cell(&record["endpoint"])),
            ("model", format!("{}{served}", cell(&record["model"]))),
            ("deployment", cell(&record["deployment"])),
            ("stream", cell(&record["stream"])),
            ("status", status),
            (
                "latency",
                format!(
                    "{} (first token {})",
                    detail_millis(&record["latency_ms"]),
                    detail_millis(&record["ttft_ms"])
                ),
            ),
            (
                "tokens",
                format!(
                    "{} in ({} cached, {} cache writes), {} out ({} reasoning)",
                    count(&record["input_tokens"]),
                    count(&record["cached_input_tokens"]),
                    count(&record["cache_write_tokens"]),
                    count(&record["output_tokens"]),
                    count(&record["reasoning_tokens"])
                ),
            ),
            ("cost", dollars(&record["cost_usd"])),
            ("cache hit", cell(&record["cache_hit"])),
            ("key", cell(&record["key_id"])),
            ("team", cell(&record["team_id"])),
            ("end user", cell(&record["end_user"])),
            ("metadata", cell(&record["metadata"])),
            ("attempts", count(&record["attempts"])),
        ];
        for (name, text) in fields {
            out.push_str(&format!("{name:<11} {text}\n"));
        }
        let attempts = record["attempt_details"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !attempts.is_empty() {
            let rows = attempts
                .iter()
                .enumerate()
                .map(|(index, attempt)| {
                    vec![
                        (index + 1).to_string(),
                        cell(&attempt["deployment"]),
                        cell(&attempt["model"]),
                        cell(&attempt["outcome"]),
                        cell(&attempt["status"]),
                        detail_millis(&attempt["duration_ms"]),
                    ]
                })
                .collect();
            let headers = ["#", "DEPLOYMENT", "MODEL", "OUTCOME", "STATUS", "DURATION"];
            out.push('\n');
            out.push_str(&aligned(headers.map(str::to_owned).to_vec(), rows));
            if record["attempts"].as_u64() > Some(attempts.len() as u64) {
                out.push_str(&format!(
                    "({} attempts; the first {} and the last are listed)\n",
                    count(&record["attempts"]),
                    attempts.len() - 1
                ));
            }
        }
        for (name, key) in [
            ("request body", "request_body"),
            ("response body", "response_body"),
        ] {
            if let Some(body) = record[key].as_str() {
                out.push_str(&format!("\n{name}:\n{body}\n"));
            }
        }
    }
    out
}

pub fn logs(connection: &Connection, args: LogsArgs) -> ExitCode {
    if let Some(request_id) = args.show {
        // The id is the client's text: one path segment, percent-encoded.
        let mut url = url::Url::parse("http://gateway/admin/logs").expect("a constant URL");
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(&request_id);
        }
        let print = if args.json { pretty } else { log_detail };
        return call(connection, "GET", url.path(), None, print);
    }
    let mut query: Vec<(&'static str, String)> = Vec::new();
    for (name, value) in [
        ("model", args.model),
        ("deployment", args.deployment),
        ("key_id", args.key),
        ("team_id", args.team),
        ("outcome", args.outcome),
        ("request_id", args.request_id),
        ("end_user", args.end_user),
        ("metadata", args.metadata),
        ("cursor", args.cursor),
    ] {
        if let Some(value) = value {
            query.push((name, value));
        }
    }
    if let Some(status) = args.status {
        query.push(("status", status.to_string()));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    if let Err(code) = body_or_exit(args.range.into_query(&mut query).map(|()| Value::Null)) {
        return code;
    }
    let print = if args.json { pretty } else { log_table };
    call(
        connection,
        "GET",
        &with_query("/admin/logs", &query),
        None,
        print,
    )
}

#[derive(Args)]
pub struct UsageArgs {
    /// model, deployment, key or team.
    #[arg(long, default_value = "model")]
    group_by: String,
    /// Also split by UTC hour or day.
    #[arg(long)]
    bucket: Option<String>,
    #[command(flatten)]
    range: RangeArgs,
    /// Print the gateway's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

fn usage_table(value: &Value) -> String {
    let bucketed = !value["bucket"].is_null();
    let mut headers = vec![
        "GROUP",
        "REQUESTS",
        "ERRORS",
        "TOKENS IN",
        "TOKENS OUT",
        "COST",
        "P50",
        "P95",
        "TTFT P50",
        "TTFT P95",
    ];
    if bucketed {
        headers.insert(0, "BUCKET");
    }
    let rows = data(value)
        .iter()
        .map(|row| {
            let group = match row["group"].as_str() {
                Some("") => "(none)".to_owned(),
                _ => cell(&row["group"]),
            };
            let mut cells = vec![
                group,
                count(&row["requests"]),
                format!(
                    "{} ({:.1}%)",
                    count(&row["errors"]),
                    row["error_rate"].as_f64().unwrap_or(0.0) * 100.0
                ),
                count(&row["input_tokens"]),
                count(&row["output_tokens"]),
                dollars(&row["cost_usd"]),
                millis(&row["latency_p50_ms"]),
                millis(&row["latency_p95_ms"]),
                millis(&row["ttft_p50_ms"]),
                millis(&row["ttft_p95_ms"]),
            ];
            if bucketed {
                cells.insert(0, cell(&row["bucket"]));
            }
            cells
        })
        .collect();
    let mut out = aligned(headers.into_iter().map(str::to_owned).collect(), rows);
    out.push_str(&format!(
        "from {} to {}; percentiles by nearest rank\n",
        cell(&value["from"]),
        cell(&value["to"])
    ));
    out
}

pub fn usage(connection: &Connection, args: UsageArgs) -> ExitCode {
    let mut query: Vec<(&'static str, String)> = vec![("group_by", args.group_by)];
    if let Some(bucket) = args.bucket {
        query.push(("bucket", bucket));
    }
    if let Err(code) = body_or_exit(args.range.into_query(&mut query).map(|()| Value::Null)) {
        return code;
    }
    let print = if args.json { pretty } else { usage_table };
    call(
        connection,
        "GET",
        &with_query("/admin/usage", &query),
        None,
        print,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_queries() {
        assert_eq!(duration_seconds("90"), Some(90));
        assert_eq!(duration_seconds("90s"), Some(90));
        assert_eq!(duration_seconds("15m"), Some(900));
        assert_eq!(duration_seconds("6h"), Some(21_600));
        assert_eq!(duration_seconds("7d"), Some(604_800));
        assert_eq!(duration_seconds("2w"), Some(1_209_600));
        for junk in ["", "h", "1.5h", "3y", "-1h", "99999999999999999999d"] {
            assert_eq!(duration_seconds(junk), None, "{junk}");
        }
        assert_eq!(
            with_query(
                "/admin/logs",
                &[
                    ("model", "a b&c".to_owned()),
                    ("from", "2024-05-01T00:00:00+02:00".to_owned())
                ]
            ),
            "/admin/logs?model=a+b%26c&from=2024-05-01T00%3A00%3A00%2B02%3A00"
        );
        assert_eq!(with_query("/admin/usage", &[]), "/admin/usage");
    }

    #[test]
    fn the_detail_view_says_when_attempts_were_left_out() {
        let attempt =
            json!({"deployment": "east", "model": "chat", "outcome": "timeout", "duration_ms": 5});
        let record = json!({
            "request_id": "r-1",
            "model": "chat",
            "served_model": "backup",
            "status": 200,
            "outcome": "success",
            "attempts": 20,
            "attempt_details": vec![attempt; 16],
            "request_body": "{\"model\":\"chat\"}",
        });
        let text = log_detail(&json!({"data": [record]}));
        assert!(
            text.contains("model       chat (served by backup)"),
            "{text}"
        );
        assert!(
            text.contains("(20 attempts; the first 15 and the last are listed)"),
            "{text}"
        );
        assert!(
            text.contains("\nrequest body:\n{\"model\":\"chat\"}\n"),
            "{text}"
        );
        assert!(!text.contains("response body"), "{text}");
    }
}
