//! `switchboard keys`, `switchboard teams` and `switchboard spend`: the
//! admin API of a running gateway, from the command line. They talk to the
//! gateway over HTTP (`--url`, `$SWITCHBOARD_URL`) with the master key
//! (`--master-key`, `$SWITCHBOARD_MASTER_KEY`), so they work the same with
//! SQLite or PostgreSQL and with one instance or many.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

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
    /// Unix seconds (default: 30 days ago).
    #[arg(long)]
    from: Option<i64>,
    /// Unix seconds (default: now).
    #[arg(long)]
    to: Option<i64>,
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
    let answer = runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let mut request = client
            .request(method.parse().unwrap_or(reqwest::Method::GET), &url)
            .bearer_auth(&connection.master_key);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    });
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
    let rows: Vec<Vec<String>> = std::iter::once(
        columns
            .iter()
            .map(|column| column.to_ascii_uppercase())
            .collect(),
    )
    .chain(
        value["data"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|row| columns.iter().map(|column| cell(&row[*column])).collect()),
    )
    .collect();
    let widths: Vec<usize> = (0..columns.len())
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
    let mut query = format!("/admin/spend?group_by={}", args.group_by);
    if let Some(from) = args.from {
        query.push_str(&format!("&from={from}"));
    }
    if let Some(to) = args.to {
        query.push_str(&format!("&to={to}"));
    }
    call(connection, "GET", &query, None, |value| {
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
