//! The price table shipped with Switchboard, and which price applies to a
//! deployment: its own `price` from the configuration first, else the
//! table's entry for its upstream model, else none.
//!
//! The table is `prices.toml`, embedded in the binary and parsed once, on
//! first use. Its figures are USD per million tokens, as vendors publish
//! them; they go stale, which is why a deployment's `price` always wins.
//! A model id is looked up as written, then without the prefixes and
//! version suffixes that hosting platforms add to a vendor's own id (see
//! `PriceTable::lookup`), so that Bedrock's
//! `global.anthropic.claude-sonnet-4-5-20250929-v1:0` finds Anthropic's
//! `claude-sonnet-4-5`. Self-hosted providers are never priced from it.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::{ConfigError, DeploymentConfig, Price, Problem, ProviderKind};

/// The shipped price table, as text.
pub const SHIPPED_PRICES: &str = include_str!("prices.toml");

/// The name under which the shipped table is reported.
const SHIPPED_PRICES_NAME: &str = "<shipped price table>";

/// The highest price accepted anywhere, in USD per million tokens: a dollar
/// a token, far above any model's. A bound keeps nonsense out and keeps
/// every cost computed from a price within integer range.
pub(crate) const MAX_USD_PER_MTOK: f64 = 1_000_000.0;

/// What is wrong with a figure given as a price, if anything.
pub(crate) fn price_problem(value: f64) -> Option<String> {
    if !value.is_finite() {
        Some(format!("{value} is not a number of dollars"))
    } else if value < 0.0 {
        Some(format!("{value} is negative"))
    } else if value > MAX_USD_PER_MTOK {
        Some(format!(
            "{value} is more than {MAX_USD_PER_MTOK} (a dollar a token)"
        ))
    } else {
        None
    }
}

/// One model's prices in the table.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceEntry {
    /// The model id the entry is listed under.
    pub model: String,
    pub price: Price,
    /// Other ids with the same price: dated snapshots, `-latest` names,
    /// Bedrock's geographic inference profiles.
    pub aliases: Vec<String>,
}

/// A parsed price table: entries, and an index of every id and alias.
#[derive(Debug, Clone)]
pub struct PriceTable {
    as_of: Option<String>,
    entries: Vec<PriceEntry>,
    by_id: HashMap<String, usize>,
}

/// Where a deployment's price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSource<'a> {
    /// The deployment's own `price` table in the configuration.
    Config,
    /// The price table's entry listed under `model`, which the upstream
    /// model id names exactly, by an alias, or with a platform's prefix or
    /// version suffix.
    Table { model: &'a str },
}

/// The price that applies to a deployment, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeploymentPrice<'a> {
    pub price: Price,
    pub source: PriceSource<'a>,
}

/// Bedrock's cross-region inference profiles put one of these before the
/// model id. GovCloud's `us-gov.` is left out on purpose: its prices are
/// higher, and no price is better than a wrong one.
const REGION_PREFIXES: &[&str] = &["global.", "us.", "eu.", "apac.", "jp.", "au."];

impl PriceTable {
    /// The table shipped with this build, parsed on first use.
    pub fn shipped() -> &'static PriceTable {
        static SHIPPED: OnceLock<PriceTable> = OnceLock::new();
        SHIPPED.get_or_init(|| {
            PriceTable::from_toml(SHIPPED_PRICES_NAME, SHIPPED_PRICES)
                .expect("the shipped price table is valid (tested)")
        })
    }

    /// Parses and checks a price table in the format of `prices.toml`,
    /// reporting every problem with its path. `source` names the text in
    /// errors.
    pub fn from_toml(source: &str, text: &str) -> Result<PriceTable, ConfigError> {
        let raw: RawPriceTable = parse(source, text)?;
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String, fix: &str| {
            problems.push(Problem {
                path,
                message,
                fix: fix.to_owned(),
            })
        };
        let mut entries = Vec::with_capacity(raw.models.len());
        let mut by_id: HashMap<String, usize> = HashMap::new();
        // Listed ids first, so that an alias repeating an id is reported at
        // the alias, wherever the two stand in the file.
        for (index, model) in raw.models.keys().enumerate() {
            by_id.insert(model.clone(), index);
        }
        for (index, (model, entry)) in raw.models.into_iter().enumerate() {
            let path = format!("models.\"{model}\"");
            if !is_model_id(&model) {
                problem(
                    path.clone(),
                    format!("`{model}` is not a model id"),
                    "write the id as the provider's API takes it, without spaces",
                );
            }
            let figures = [
                ("input", Some(entry.input)),
                ("output", Some(entry.output)),
                ("cached_input", entry.cached_input),
                ("cache_write", entry.cache_write),
                ("reasoning", entry.reasoning),
            ];
            for (key, value) in figures {
                if let Some(message) = value.and_then(price_problem) {
                    problem(
                        format!("{path}.{key}"),
                        message,
                        "give USD per million tokens, a number from 0 to 1000000",
                    );
                }
            }
            for (position, alias) in entry.aliases.iter().enumerate() {
                let alias_path = format!("{path}.aliases[{position}]");
                if !is_model_id(alias) {
                    problem(
                        alias_path,
                        format!("`{alias}` is not a model id"),
                        "write the id as the provider's API takes it, without spaces",
                    );
                    continue;
                }
                match by_id.get(alias) {
                    Some(&other) if other == index => problem(
                        alias_path,
                        format!("`{alias}` repeats an id of this entry"),
                        "remove it",
                    ),
                    Some(_) => problem(
                        alias_path,
                        format!("`{alias}` already names another entry"),
                        "keep each id under one entry only",
                    ),
                    None => {
                        by_id.insert(alias.clone(), index);
                    }
                }
            }
            entries.push(PriceEntry {
                model,
                price: Price {
                    input_per_mtok: entry.input,
                    output_per_mtok: entry.output,
                    cached_input_per_mtok: entry.cached_input,
                    cache_write_per_mtok: entry.cache_write,
                    reasoning_per_mtok: entry.reasoning,
                },
                aliases: entry.aliases,
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError {
                source_name: source.to_owned(),
                problems,
            });
        }
        Ok(PriceTable {
            as_of: raw.as_of,
            entries,
            by_id,
        })
    }

    /// The day the table's prices were read, as written in it.
    pub fn as_of(&self) -> Option<&str> {
        self.as_of.as_deref()
    }

    /// Every entry, in the order of their ids.
    pub fn entries(&self) -> &[PriceEntry] {
        &self.entries
    }

    /// The entry listed under `id` or with `id` among its aliases.
    pub fn get(&self, id: &str) -> Option<&PriceEntry> {
        self.by_id.get(id).map(|&index| &self.entries[index])
    }

    /// The entry for a model id as a deployment sends it upstream. Tried in
    /// order, the first hit wins:
    ///
    /// 1. the id as written, then without a version suffix: Bedrock's
    ///    `-v1:0` (and provisioned-throughput `:28k` tags), then a dated
    ///    snapshot: Anthropic's `-20250929`, Vertex's `@20250929`, OpenAI's
    ///    `-2024-08-06`, Gemini's `-001`;
    /// 2. the same after removing, one at a time, a Bedrock ARN's path (up
    ///    to its last `/`), the Gemini API's `models/`, a Bedrock region
    ///    prefix (`global.`, `us.`, `eu.`, `apac.`, `jp.`, `au.`), and
    ///    Bedrock's `anthropic.` vendor prefix.
    ///
    /// Exact ids come first, so an entry for a particular snapshot or a
    /// regional profile (`gpt-4o-2024-05-13`, `us.anthropic.claude-…`, which
    /// cost more) wins over the general one.
    pub fn lookup(&self, model: &str) -> Option<&PriceEntry> {
        without_prefixes(model)
            .into_iter()
            .flat_map(without_suffixes)
            .find_map(|candidate| self.get(candidate))
    }

    /// The price that applies to a deployment: its own `price` first, else
    /// this table's entry for its upstream model, else none. Simulated and
    /// self-hosted deployments (`vllm`, `ollama`, `llamacpp`) are never
    /// priced from the table: a model they serve under a vendor's id does
    /// not cost what the vendor charges.
    pub fn price_for<'a>(&'a self, deployment: &DeploymentConfig) -> Option<DeploymentPrice<'a>> {
        if let Some(price) = deployment.price {
            return Some(DeploymentPrice {
                price,
                source: PriceSource::Config,
            });
        }
        if is_self_hosted(deployment.provider) {
            return None;
        }
        let entry = self.lookup(&deployment.upstream_model)?;
        Some(DeploymentPrice {
            price: entry.price,
            source: PriceSource::Table {
                model: &entry.model,
            },
        })
    }
}

fn is_self_hosted(provider: ProviderKind) -> bool {
    matches!(
        provider,
        ProviderKind::Simulated
            | ProviderKind::OpenAiCompatible {
                vendor: "vllm" | "ollama" | "llamacpp"
            }
    )
}

fn is_model_id(id: &str) -> bool {
    !id.is_empty() && !id.chars().any(char::is_whitespace)
}

/// `model`, then each shorter form left by removing one more platform
/// prefix, in the order they are written.
fn without_prefixes(model: &str) -> Vec<&str> {
    let mut forms = vec![model];
    let mut rest = model;
    if rest.starts_with("arn:")
        && let Some((_, tail)) = rest.rsplit_once('/')
    {
        rest = tail;
        forms.push(rest);
    }
    if let Some(tail) = rest.strip_prefix("models/") {
        rest = tail;
        forms.push(rest);
    }
    if let Some(tail) = REGION_PREFIXES
        .iter()
        .find_map(|prefix| rest.strip_prefix(prefix))
    {
        rest = tail;
        forms.push(rest);
    }
    if let Some(tail) = rest.strip_prefix("anthropic.") {
        forms.push(tail);
    }
    forms
}

/// `id`, then without a Bedrock version, then also without a dated
/// snapshot suffix (each only when present).
fn without_suffixes(id: &str) -> Vec<&str> {
    let mut forms = vec![id];
    let mut rest = id;
    if let Some(head) = without_bedrock_version(rest) {
        rest = head;
        forms.push(rest);
    }
    if let Some(head) = without_snapshot(rest) {
        forms.push(head);
    }
    forms
}

/// `anthropic.claude-sonnet-4-5-20250929-v1:0` → `…-20250929`; also
/// `-v1` alone, and the `:28k`-style tags of provisioned throughput.
fn without_bedrock_version(id: &str) -> Option<&str> {
    let mut head = id;
    for _ in 0..2 {
        match head.rsplit_once(':') {
            Some((before, tag))
                if !tag.is_empty() && tag.bytes().all(|byte| byte.is_ascii_alphanumeric()) =>
            {
                head = before;
            }
            _ => break,
        }
    }
    if let Some((before, version)) = head.rsplit_once("-v")
        && is_digits(version)
    {
        head = before;
    }
    (head.len() < id.len() && !head.is_empty()).then_some(head)
}

/// Removes a dated snapshot: `-20250929`, `@20250929` (or any Vertex
/// `@version`), `-2024-08-06`, or a three-digit `-001`.
fn without_snapshot(id: &str) -> Option<&str> {
    if let Some((head, _)) = id.split_once('@') {
        return (!head.is_empty()).then_some(head);
    }
    let bytes = id.as_bytes();
    let suffix_is = |pattern: &[u8]| -> bool {
        bytes.len() > pattern.len()
            && bytes[bytes.len() - pattern.len()..]
                .iter()
                .zip(pattern)
                .all(|(&byte, &kind)| match kind {
                    b'9' => byte.is_ascii_digit(),
                    other => byte == other,
                })
    };
    // Digits are written as 9 in these patterns.
    ["-99999999", "-9999-99-99", "-999"]
        .iter()
        .find(|pattern| suffix_is(pattern.as_bytes()))
        .map(|pattern| &id[..id.len() - pattern.len()])
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceTable {
    as_of: Option<String>,
    #[serde(default)]
    models: BTreeMap<String, RawPriceEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceEntry {
    input: f64,
    output: f64,
    cached_input: Option<f64>,
    cache_write: Option<f64>,
    reasoning: Option<f64>,
    #[serde(default)]
    aliases: Vec<String>,
}

fn parse(source: &str, text: &str) -> Result<RawPriceTable, ConfigError> {
    let one_line = |message: String| {
        message
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|error| {
        ConfigError::single(
            source,
            "",
            format!("not valid TOML: {}", one_line(error.to_string())),
            "fix the syntax at the line shown",
        )
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        ConfigError::single(
            source,
            if path == "." { "" } else { &path },
            one_line(error.inner().to_string()),
            "each entry takes input, output, and optionally cached_input, cache_write, reasoning and aliases",
        )
    })
}

#[cfg(test)]
mod tests;
