//! Virtual keys and teams as the gateway keeps them: who may call which
//! models, within which limits. A key's secret never appears here, only
//! its SHA-256 hash and a short prefix to recognise it by.

use serde::{Deserialize, Serialize};

/// How often a budget starts again, at UTC calendar boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Never: a lifetime budget.
    Total,
    Daily,
    /// ISO weeks, from Monday 00:00 UTC.
    Weekly,
    /// Calendar months, from the 1st 00:00 UTC.
    Monthly,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Total => "total",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
        }
    }
}

/// What a key, a team or each end user of a key may do. `None` is
/// unlimited; an empty `models` list allows every model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Public model names, or patterns with `*` (`gpt-4o*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Budget in nano-dollars (USD × 10⁹) per `budget_period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_nanos: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<Period>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// Keep the prompt and response bodies of requests with this key (or
    /// team) in the request log, redacted (keys and teams only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_bodies: bool,
}

impl Limits {
    /// Whether `model` is one these limits allow.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty()
            || self
                .models
                .iter()
                .any(|pattern| glob_matches(pattern, model))
    }
}

/// `*` matches any run of characters, everything else itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = rest.split('*').collect();
    let (last, middle) = pieces
        .split_last()
        .expect("split yields at least one piece");
    for piece in middle {
        match remaining.find(piece) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// A virtual key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// `key_` and 16 hex digits; how the admin API names the key.
    pub id: String,
    pub name: Option<String>,
    pub team_id: Option<String>,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// The secret's first characters (`sb-xxxxxxxx`), to recognise it by.
    pub prefix: String,
    pub limits: Limits,
    /// Limits each end user of the key gets on their own.
    pub user_limits: Option<Limits>,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    /// A JSON object of the operator's own.
    pub metadata: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl KeyRecord {
    /// Whether the key may be used at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms.is_none_or(|expiry| now_ms < expiry)
    }
}

/// A team of keys, with limits that cover all of them together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRecord {
    /// `team_` and 16 hex digits.
    pub id: String,
    pub name: String,
    pub limits: Limits,
    /// After this, every key of the team is refused as an expired key is.
    pub expires_at_ms: Option<i64>,
    pub metadata: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl TeamRecord {
    /// Whether the team's keys may be used at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|expiry| now_ms < expiry)
    }
}

/// Spend over some group (a key, a team, a model, a day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRow {
    /// The group's value (a key id, team id, model name or `YYYY-MM-DD`);
    /// empty for requests without one (no key, no team).
    pub group: String,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: u64,
}

/// What spend is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendGroup {
    Key,
    Team,
    Model,
    Day,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_patterns() {
        assert!(glob_matches("gpt-4o", "gpt-4o"));
        assert!(!glob_matches("gpt-4o", "gpt-4o-mini"));
        assert!(glob_matches("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("claude-*-sonnet*", "claude-3-5-sonnet-latest"));
        assert!(!glob_matches("claude-*-sonnet", "claude-3-5-haiku"));
        assert!(glob_matches("a*a", "aa"));
        assert!(!glob_matches("a*a", "a"));
        let limits = Limits {
            models: vec!["gpt-*".to_owned(), "claude".to_owned()],
            ..Limits::default()
        };
        assert!(limits.allows_model("gpt-4o") && limits.allows_model("claude"));
        assert!(!limits.allows_model("gemini"));
        assert!(Limits::default().allows_model("gemini"));
    }

    #[test]
    fn activity_follows_revocation_and_expiry() {
        let key = KeyRecord {
            id: "key_1".to_owned(),
            name: None,
            team_id: None,
            hash: "h".to_owned(),
            prefix: "sb-1".to_owned(),
            limits: Limits::default(),
            user_limits: None,
            expires_at_ms: Some(100),
            revoked_at_ms: None,
            metadata: "{}".to_owned(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        assert!(key.is_active(99));
        assert!(!key.is_active(100));
        let revoked = KeyRecord {
            revoked_at_ms: Some(5),
            expires_at_ms: None,
            ..key
        };
        assert!(!revoked.is_active(0));
        let team = TeamRecord {
            id: "team_1".to_owned(),
            name: "t".to_owned(),
            limits: Limits::default(),
            expires_at_ms: Some(100),
            metadata: "{}".to_owned(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        assert!(team.is_active(99));
        assert!(!team.is_active(100));
        assert!(
            TeamRecord {
                expires_at_ms: None,
                ..team
            }
            .is_active(i64::MAX)
        );
    }
}
