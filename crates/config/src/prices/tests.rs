//! Tests of the shipped price table, of looking model ids up in it, of which
//! price applies to a deployment, and of checking `price` in a config.

use super::*;
use crate::Config;

fn shipped() -> &'static PriceTable {
    PriceTable::shipped()
}

/// The entry a model id finds, by the id it is listed under.
fn found(model: &str) -> Option<&'static str> {
    shipped().lookup(model).map(|entry| entry.model.as_str())
}

fn problems(source: &str) -> Vec<Problem> {
    PriceTable::from_toml("t.toml", source)
        .expect_err("the table should be refused")
        .problems
}

fn paths(problems: &[Problem]) -> Vec<&str> {
    problems
        .iter()
        .map(|problem| problem.path.as_str())
        .collect()
}

#[test]
fn the_shipped_table_parses_and_every_entry_is_priced() {
    // A parse error here is a bug in prices.toml, not a user's mistake.
    let table = PriceTable::from_toml("prices.toml", SHIPPED_PRICES).unwrap();
    assert_eq!(table.as_of(), Some("2026-11-28"));
    assert!(table.entries().len() > 100, "{}", table.entries().len());
    for entry in table.entries() {
        let price = entry.price;
        let model = &entry.model;
        // Every model charges for input; only embeddings have no output.
        assert!(price.input_per_mtok > 0.0, "{model}");
        if model.contains("embed") {
            assert_eq!(price.output_per_mtok, 0.0, "{model}");
        } else {
            assert!(price.output_per_mtok >= price.input_per_mtok, "{model}");
        }
        // Reading the cache is a discount and writing it a surcharge; a
        // slip of a decimal point breaks one or the other.
        if let Some(cached) = price.cached_input_per_mtok {
            assert!(cached < price.input_per_mtok, "{model}");
        }
        if let Some(write) = price.cache_write_per_mtok {
            assert!(write >= price.input_per_mtok, "{model}");
        }
        for figure in [
            Some(price.input_per_mtok),
            Some(price.output_per_mtok),
            price.cached_input_per_mtok,
            price.cache_write_per_mtok,
            price.reasoning_per_mtok,
        ]
        .into_iter()
        .flatten()
        {
            assert_eq!(price_problem(figure), None, "{model}");
        }
    }
    // The same table backs `shipped()`.
    assert_eq!(shipped().entries(), table.entries());
}

#[test]
fn the_shipped_table_covers_each_vendor() {
    for model in [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "claude-opus-4-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "claude-3-5-haiku",
        "gemini-2.0-flash",
        "gemini-2.0-flash-lite",
        "gemini-2.5-flash",
        "gemini-2.5-flash-lite",
        "gemini-2.5-pro",
        "gemini-3-flash-preview",
        "amazon.nova-pro-v1:0",
        "amazon.nova-lite-v1:0",
        "amazon.nova-micro-v1:0",
        "meta.llama3-3-70b-instruct-v1:0",
        "mistral-large-latest",
        "mistral-small-latest",
        "deepseek-v4-flash",
        "deepseek-v4-pro",
        "llama-3.3-70b-versatile",
        "openai/gpt-oss-120b",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "gemini-embedding-001",
        "amazon.titan-embed-text-v2:0",
    ] {
        assert!(
            shipped().get(model).is_some(),
            "{model} is not in the table"
        );
    }
}

#[test]
fn well_known_prices_are_as_published() {
    let price = |model: &str| shipped().get(model).unwrap().price;
    assert_eq!(
        price("gpt-4o"),
        Price {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: Some(1.25),
            cache_write_per_mtok: None,
            reasoning_per_mtok: None,
        }
    );
    assert_eq!(
        price("claude-sonnet-4-5"),
        Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: Some(0.3),
            cache_write_per_mtok: Some(3.75),
            reasoning_per_mtok: None,
        }
    );
    assert_eq!(price("text-embedding-3-small").input_per_mtok, 0.02);
    assert_eq!(price("gemini-2.5-flash").output_per_mtok, 2.5);
}

#[test]
fn ids_are_found_exactly_and_by_alias() {
    assert_eq!(found("gpt-4o"), Some("gpt-4o"));
    assert_eq!(found("gpt-4o-2024-08-06"), Some("gpt-4o"));
    assert_eq!(found("claude-3-5-haiku-latest"), Some("claude-3-5-haiku"));
    assert_eq!(found("mistral-large-latest"), Some("mistral-large-2512"));
    // An id listed in its own right wins over the entry its form would
    // otherwise reach: the first gpt-4o snapshot kept its launch price.
    assert_eq!(found("gpt-4o-2024-05-13"), Some("gpt-4o-2024-05-13"));
    assert_eq!(
        shipped()
            .get("gpt-4o-2024-05-13")
            .unwrap()
            .price
            .input_per_mtok,
        5.0
    );
    // `get` is exact: no prefix or suffix is removed.
    assert!(shipped().get("gpt-4o-2030-01-01").is_none());
}

#[test]
fn dated_snapshots_are_found_under_their_model() {
    assert_eq!(found("claude-opus-4-8-20261001"), Some("claude-opus-4-8"));
    assert_eq!(found("gpt-4.1-mini-2030-01-01"), Some("gpt-4.1-mini"));
    assert_eq!(
        found("claude-sonnet-4-5@20250929"),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(found("gemini-2.0-flash-001"), Some("gemini-2.0-flash"));
    assert_eq!(
        found("gemini-2.0-flash-lite-001"),
        Some("gemini-2.0-flash-lite")
    );
}

#[test]
fn platform_prefixes_are_removed() {
    // Bedrock, in-region and global: Anthropic's own price.
    assert_eq!(
        found("anthropic.claude-sonnet-4-5-20250929-v1:0"),
        Some("claude-sonnet-4-5")
    );
    assert_eq!(
        found("global.anthropic.claude-opus-4-6-v1"),
        Some("claude-opus-4-6")
    );
    assert_eq!(
        found("global.anthropic.claude-sonnet-5-5"),
        Some("claude-sonnet-5-5")
    );
    // Older Claude models cost the same through a geographic profile.
    assert_eq!(
        found("us.anthropic.claude-3-5-haiku-20241022-v1:0"),
        Some("claude-3-5-haiku")
    );
    assert_eq!(
        found("us.anthropic.claude-sonnet-4-20250514-v1:0"),
        Some("claude-sonnet-4-0")
    );
    // Other vendors' Bedrock ids keep their vendor prefix.
    assert_eq!(
        found("us.meta.llama3-3-70b-instruct-v1:0"),
        Some("meta.llama3-3-70b-instruct-v1:0")
    );
    assert_eq!(
        found("us.amazon.nova-pro-v1:0"),
        Some("amazon.nova-pro-v1:0")
    );
    // Provisioned throughput and ARNs.
    assert_eq!(
        found("anthropic.claude-3-haiku-20240307-v1:0:200k"),
        Some("claude-3-haiku")
    );
    assert_eq!(
        found(
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-haiku-4-5-20251001-v1:0"
        ),
        Some("claude-haiku-4-5")
    );
    // The Gemini API's resource names.
    assert_eq!(found("models/gemini-2.5-flash"), Some("gemini-2.5-flash"));
    assert_eq!(
        found("models/gemini-embedding-001"),
        Some("gemini-embedding-001")
    );
}

#[test]
fn geographic_bedrock_profiles_of_new_claude_models_cost_more() {
    let entry = shipped()
        .lookup("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
        .unwrap();
    assert_eq!(entry.model, "us.anthropic.claude-sonnet-4-5");
    assert_eq!(entry.price.input_per_mtok, 3.3);
    assert_eq!(
        found("eu.anthropic.claude-haiku-4-5-20251001-v1:0"),
        Some("us.anthropic.claude-haiku-4-5")
    );
    assert_eq!(
        found("jp.anthropic.claude-opus-4-6-v1"),
        Some("us.anthropic.claude-opus-4-6")
    );
}

#[test]
fn unknown_ids_have_no_price() {
    for model in [
        "",
        "my-fine-tune",
        "gpt-4o-mini-but-not-really",
        "llama3.1:8b",
        // GovCloud costs more than any listed price: unpriced, not wrong.
        "us-gov.anthropic.claude-sonnet-4-5-20250929-v1:0",
        // OpenRouter's ids are not the vendors'.
        "anthropic/claude-sonnet-4.5",
        "@20250929",
    ] {
        assert_eq!(found(model), None, "{model}");
    }
}

fn deployment(provider_and_price: &str) -> DeploymentConfig {
    let text = format!(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        {provider_and_price}
        "#
    );
    let config = Config::from_toml_with_env("test.toml", &text, &|_| None).unwrap();
    config.models[0].deployments[0].clone()
}

#[test]
fn a_deployments_own_price_wins_over_the_table() {
    let priced = deployment(
        r#"provider = "openai"
        model = "gpt-4o"
        api_key = "sk-test"
        price = { input_per_mtok = 2.0, output_per_mtok = 8.0, cached_input_per_mtok = 0.5 }"#,
    );
    assert_eq!(
        shipped().price_for(&priced),
        Some(DeploymentPrice {
            price: Price {
                input_per_mtok: 2.0,
                output_per_mtok: 8.0,
                cached_input_per_mtok: Some(0.5),
                cache_write_per_mtok: None,
                reasoning_per_mtok: None,
            },
            source: PriceSource::Config,
        })
    );
    // Even a price of zero, and for a model the table does not know.
    let free = deployment(
        r#"provider = "vllm"
        model = "local-model"
        price = { input_per_mtok = 0, output_per_mtok = 0 }"#,
    );
    let applied = shipped().price_for(&free).unwrap();
    assert_eq!(applied.source, PriceSource::Config);
    assert_eq!(applied.price.input_per_mtok, 0.0);
}

#[test]
fn without_its_own_price_a_deployment_takes_the_tables() {
    let openai = deployment(
        r#"provider = "openai"
        model = "gpt-4o-2024-11-20"
        api_key = "sk-test""#,
    );
    let applied = shipped().price_for(&openai).unwrap();
    assert_eq!(applied.source, PriceSource::Table { model: "gpt-4o" });
    assert_eq!(applied.price.output_per_mtok, 10.0);

    let bedrock = deployment(
        r#"provider = "bedrock"
        region = "us-east-1"
        model = "global.anthropic.claude-haiku-4-5-20251001-v1:0""#,
    );
    assert_eq!(
        shipped().price_for(&bedrock).unwrap().source,
        PriceSource::Table {
            model: "claude-haiku-4-5"
        }
    );

    let unknown = deployment(
        r#"provider = "openai"
        model = "ft:gpt-4o-mini:acme::abc123"
        api_key = "sk-test""#,
    );
    assert_eq!(shipped().price_for(&unknown), None);
}

#[test]
fn self_hosted_deployments_are_never_priced_from_the_table() {
    for provider in [
        r#"provider = "simulated""#,
        r#"provider = "vllm""#,
        r#"provider = "ollama""#,
        r#"provider = "llamacpp""#,
    ] {
        let local = deployment(&format!("{provider}\nmodel = \"gpt-4o\""));
        assert_eq!(shipped().price_for(&local), None, "{provider}");
    }
    // A hosted OpenAI-compatible vendor is priced by its own ids.
    let groq = deployment(
        r#"provider = "groq"
        model = "llama-3.3-70b-versatile"
        api_key = "gsk-test""#,
    );
    assert_eq!(
        shipped().price_for(&groq).unwrap().source,
        PriceSource::Table {
            model: "llama-3.3-70b-versatile"
        }
    );
}

#[test]
fn a_broken_table_reports_every_problem_with_its_path() {
    let found = problems(
        r#"
        [models]
        "a" = { input = -1, output = nan, aliases = ["b", "a-2024-01-01"] }
        "b" = { input = 1, output = 2, cached_input = inf, cache_write = 2000000 }
        "c" = { input = 1, output = 2, aliases = ["a-2024-01-01", "c", "with space"] }
        "#,
    );
    assert_eq!(
        paths(&found),
        vec![
            r#"models."a".input"#,
            r#"models."a".output"#,
            r#"models."a".aliases[0]"#,
            r#"models."b".cached_input"#,
            r#"models."b".cache_write"#,
            r#"models."c".aliases[0]"#,
            r#"models."c".aliases[1]"#,
            r#"models."c".aliases[2]"#,
        ],
        "{found:#?}"
    );
    assert!(
        found[0].message.contains("negative"),
        "{}",
        found[0].message
    );
    assert!(found[2].message.contains("another entry"));
    assert!(found[6].message.contains("repeats"));
}

#[test]
fn a_table_entry_needs_input_and_output_and_known_keys_only() {
    let missing = problems(
        r#"
        [models]
        "a" = { input = 1 }
        "#,
    );
    assert_eq!(paths(&missing), vec![r#"models.a"#]);
    assert!(missing[0].message.contains("output"), "{:?}", missing[0]);

    let unknown = problems(
        r#"
        [models]
        "a" = { input = 1, output = 2, cache_read = 0.1 }
        "#,
    );
    assert!(
        unknown[0].message.contains("cache_read"),
        "{:?}",
        unknown[0]
    );

    let syntax = problems("[models\n");
    assert!(
        syntax[0].message.starts_with("not valid TOML"),
        "{:?}",
        syntax[0]
    );
}

fn config_problems(price: &str) -> Vec<Problem> {
    let text = format!(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "openai"
        model = "gpt-4o"
        api_key = "sk-test"
        price = {price}
        "#
    );
    Config::from_toml_with_env("test.toml", &text, &|_| None)
        .expect_err("the price should be refused")
        .problems
}

#[test]
fn config_prices_take_cache_prices_too() {
    let priced = deployment(
        r#"provider = "anthropic"
        model = "claude-sonnet-4-5"
        api_key = "sk-ant-test"
        price = { input_per_mtok = 3, output_per_mtok = 15, cached_input_per_mtok = 0.3, cache_write_per_mtok = 3.75 }"#,
    );
    assert_eq!(
        priced.price,
        Some(Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: Some(0.3),
            cache_write_per_mtok: Some(3.75),
            reasoning_per_mtok: None,
        })
    );
    // And a reasoning price, for a model that bills thinking apart.
    let thinking = deployment(
        r#"provider = "gemini"
        model = "gemini-2.5-flash"
        api_key = "test-key"
        price = { input_per_mtok = 0.15, output_per_mtok = 0.6, reasoning_per_mtok = 3.5 }"#,
    );
    assert_eq!(
        thinking.price.map(|price| price.reasoning_per_mtok),
        Some(Some(3.5))
    );
}

#[test]
fn config_prices_that_are_negative_or_not_finite_are_refused_by_path() {
    let found = config_problems(
        "{ input_per_mtok = -2.5, output_per_mtok = nan, cached_input_per_mtok = inf, cache_write_per_mtok = -inf, reasoning_per_mtok = -1 }",
    );
    assert_eq!(
        paths(&found),
        vec![
            "models[0].deployments[0].price.input_per_mtok",
            "models[0].deployments[0].price.output_per_mtok",
            "models[0].deployments[0].price.cached_input_per_mtok",
            "models[0].deployments[0].price.cache_write_per_mtok",
            "models[0].deployments[0].price.reasoning_per_mtok",
        ]
    );
    assert!(
        found[0].message.contains("-2.5 is negative"),
        "{}",
        found[0].message
    );
    assert!(found[1].message.contains("NaN"), "{}", found[1].message);
    for problem in &found {
        assert!(
            problem.fix.contains("USD per million tokens"),
            "{}",
            problem.fix
        );
    }

    let too_high = config_problems("{ input_per_mtok = 1, output_per_mtok = 1e7 }");
    assert_eq!(
        paths(&too_high),
        vec!["models[0].deployments[0].price.output_per_mtok"]
    );
}

#[test]
fn config_prices_need_input_and_output_and_known_keys_only() {
    let missing = config_problems("{ input_per_mtok = 1, cached_input_per_mtok = 0.1 }");
    assert_eq!(paths(&missing), vec!["models[0].deployments[0].price"]);
    assert!(
        missing[0].message.contains("output_per_mtok"),
        "{:?}",
        missing[0]
    );

    let misspelt =
        config_problems("{ input_per_mtok = 1, output_per_mtok = 2, cache_read_per_mtok = 0.1 }");
    assert!(
        misspelt[0].message.contains("cache_read_per_mtok"),
        "{:?}",
        misspelt[0]
    );
    assert!(
        misspelt[0]
            .path
            .starts_with("models[0].deployments[0].price")
    );
}
