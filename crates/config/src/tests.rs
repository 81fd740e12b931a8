//! Tests of loading and validation: every rejected config names its path
//! and a fix, and no secret value ever appears in an error or the table.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-test-0123456789abcdef".to_owned()),
        "AZURE_KEY" => Some("azure-secret-value".to_owned()),
        "MASTER" => Some("master-key-123456".to_owned()),
        "PG_PASSWORD" => Some("pg-s3cret-pw".to_owned()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_with_env("test.toml", text, &env)
}

fn problems(text: &str) -> Vec<Problem> {
    load(text).expect_err("config should be rejected").problems
}

#[test]
fn embedded_default_is_valid_and_simulated() {
    let config = Config::embedded_default();
    assert_eq!(config.source, DEFAULT_CONFIG_NAME);
    assert!(config.server.listen.ip().is_loopback());
    assert!(config.server.master_key.is_none());
    assert!(config.models.iter().all(|model| {
        model
            .deployments
            .iter()
            .all(|deployment| deployment.provider == ProviderKind::Simulated)
    }));
    assert!(config.model("simulated-chat").is_some());
}

#[test]
fn full_config_resolves_every_provider() {
    let config = load(
        r#"
        [server]
        listen = "0.0.0.0:9000"
        master_key = "${MASTER}"
        [storage]
        url = "sqlite:///tmp/x.db"
        [[models]]
        name = "gpt-4o"
        [[models.deployments]]
        provider = "openai"
        model = "gpt-4o-2024-08-06"
        api_key = "${OPENAI_API_KEY}"
        headers = { OpenAI-Organization = "org-1" }
        [[models.deployments]]
        name = "azure-east"
        provider = "azure"
        api_base = "https://east.openai.azure.com/"
        deployment = "gpt4o-prod"
        model = "gpt-4o"
        api_key = "${AZURE_KEY}"
        [[models]]
        name = "llama"
        [[models.deployments]]
        provider = "groq"
        model = "llama-3.3-70b-versatile"
        api_key = "${GROQ_KEY:-none}"
        "#,
    )
    .unwrap();
    assert_eq!(config.server.listen.port(), 9000);
    assert_eq!(
        config.server.master_key.as_ref().unwrap().expose(),
        "master-key-123456"
    );
    assert_eq!(
        config.storage.url,
        StorageUrl::SqliteFile("/tmp/x.db".into())
    );
    let gpt = config.model("gpt-4o").unwrap();
    assert_eq!(gpt.deployments[0].name, "gpt-4o");
    assert_eq!(
        gpt.deployments[0].api_base.as_ref().unwrap().as_str(),
        "https://api.openai.com/v1"
    );
    assert_eq!(
        gpt.deployments[0].headers[0].0.as_str(),
        "openai-organization"
    );
    let azure = &gpt.deployments[1];
    assert_eq!(azure.provider, ProviderKind::Azure);
    assert_eq!(azure.azure_deployment.as_deref(), Some("gpt4o-prod"));
    assert_eq!(azure.api_version.as_deref(), Some("2024-10-21"));
    let groq = &config.model("llama").unwrap().deployments[0];
    assert_eq!(
        groq.provider,
        ProviderKind::OpenAiCompatible { vendor: "groq" }
    );
    assert_eq!(
        groq.api_base.as_ref().unwrap().as_str(),
        "https://api.groq.com/openai/v1"
    );
    assert_eq!(groq.api_key.as_ref().unwrap().expose(), "none");

    let table = model_table(&config);
    assert!(table.contains("azure-east"), "{table}");
    assert!(table.contains("${OPENAI_API_KEY} (24 chars)"), "{table}");
    assert!(
        !table.contains("sk-test"),
        "secret leaked into the table: {table}"
    );
    assert!(
        !table.contains("azure-secret"),
        "secret leaked into the table: {table}"
    );
}

#[test]
fn unknown_key_is_reported_with_its_path() {
    let found = problems(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "simulated"
        temprature = 1
        "#,
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].path, "models[0].deployments[0].temprature");
    assert!(
        found[0].message.contains("unknown field `temprature`"),
        "{found:?}"
    );
}

#[test]
fn wrong_type_is_reported_with_its_path() {
    let found = problems(
        r#"
        [server]
        max_body_bytes = "big"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "simulated"
        "#,
    );
    assert_eq!(found[0].path, "server.max_body_bytes");
    assert!(found[0].message.contains("invalid type"), "{found:?}");
}

#[test]
fn missing_env_var_names_the_variable_and_the_fix() {
    let error = load(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "openai"
        model = "gpt-4o"
        api_key = "${NOT_SET_ANYWHERE}"
        "#,
    )
    .unwrap_err();
    assert_eq!(error.problems[0].path, "models[0].deployments[0].api_key");
    assert!(error.problems[0].message.contains("NOT_SET_ANYWHERE"));
    assert!(error.problems[0].fix.contains("export NOT_SET_ANYWHERE"));
    let text = error.to_string();
    assert!(
        text.contains("test.toml: models[0].deployments[0].api_key"),
        "{text}"
    );
}

#[test]
fn duplicate_model_names_are_rejected() {
    let found = problems(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "simulated"
        name = "a"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "simulated"
        name = "b"
        "#,
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "models[1].name");
    assert!(found[0].message.contains("already declared at models[0]"));
}

#[test]
fn every_problem_is_collected() {
    let found = problems(
        r#"
        [server]
        listen = "nowhere"
        [storage]
        url = "mysql://x"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "warp-drive"
        [[models.deployments]]
        provider = "openai"
        [[models.deployments]]
        provider = "openai-compatible"
        model = "x"
        "#,
    );
    let paths: Vec<&str> = found.iter().map(|problem| problem.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "server.listen",
            "storage.url",
            "models[0].deployments[0].provider",
            "models[0].deployments[1].model",
            "models[0].deployments[2].api_base",
        ]
    );
    assert!(found.iter().all(|problem| !problem.fix.is_empty()));
}

#[test]
fn open_listener_without_master_key_is_refused() {
    let found = problems(
        r#"
        [server]
        listen = "0.0.0.0:8080"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "simulated"
        "#,
    );
    assert_eq!(found[0].path, "server.master_key");
}

#[test]
fn syntax_errors_name_the_line() {
    let error = load("[[models]\nname = 1").unwrap_err();
    assert!(
        error.problems[0].message.contains("not valid TOML"),
        "{error}"
    );
    assert!(error.to_string().contains("line"), "{error}");
}

#[test]
fn type_errors_never_show_an_expanded_secret() {
    // The raw (unexpanded) text is what type errors see, so a reference in a
    // wrongly typed position shows the reference, not the secret.
    let error = load(
        r#"
        [server]
        shutdown_grace_secs = "${OPENAI_API_KEY}"
        "#,
    )
    .unwrap_err();
    assert!(!error.to_string().contains("sk-test"), "{error}");
}

#[test]
fn options_of_other_providers_are_rejected() {
    let found = problems(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "openai"
        model = "gpt-4o"
        api_key = "${OPENAI_API_KEY}"
        api_version = "2024-10-21"
        simulation = { ttft_ms = 5 }
        "#,
    );
    let paths: Vec<&str> = found.iter().map(|problem| problem.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "models[0].deployments[0].api_version",
            "models[0].deployments[0].simulation"
        ]
    );
}

#[test]
fn example_config_in_the_repository_is_valid() {
    let text = include_str!("../../../examples/switchboard.toml");
    let config = Config::from_toml_with_env("examples/switchboard.toml", text, &|_| {
        Some("placeholder-secret-value".to_owned())
    })
    .unwrap_or_else(|error| panic!("{error}"));
    assert!(config.models.len() >= 3);
}

#[test]
fn passwords_in_urls_are_masked_in_the_table() {
    let config = load(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "vllm"
        model = "x"
        api_base = "https://user:${OPENAI_API_KEY}@vllm.internal/v1"
        "#,
    )
    .unwrap();
    let table = model_table(&config);
    assert!(
        table.contains("https://user:****@vllm.internal/v1"),
        "{table}"
    );
    assert!(!table.contains("sk-test"), "{table}");
}

#[test]
fn simulation_settings_are_bounded() {
    let found = problems(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "simulated"
        simulation = { tokens_per_second = 1e-30, reply_tokens = 0, embedding_dimensions = 100000, ttft_ms = 99999999, failure_rate = 2.0 }
        "#,
    );
    let mut paths: Vec<&str> = found.iter().map(|problem| problem.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        vec![
            "models[0].deployments[0].simulation.embedding_dimensions",
            "models[0].deployments[0].simulation.failure_rate",
            "models[0].deployments[0].simulation.reply_tokens",
            "models[0].deployments[0].simulation.tokens_per_second",
            "models[0].deployments[0].simulation.ttft_ms",
        ]
    );
}

#[test]
fn routing_settings_are_read_and_checked() {
    let config = load(
        r#"
        [[models]]
        name = "primary"
        fallbacks = ["backup"]
        [[models.deployments]]
        provider = "simulated"
        weight = 3
        [models.routing]
        strategy = "weighted"
        max_attempts = 4
        timeout_secs = 20
        first_token_timeout_secs = 5
        fallback_on = ["5xx", "context_window", 404]
        circuit_breaker_failures = 3
        circuit_breaker_cooldown_secs = 10
        [[models]]
        name = "backup"
        [[models.deployments]]
        provider = "simulated"
        "#,
    )
    .unwrap();
    let primary = config.model("primary").unwrap();
    assert_eq!(primary.fallbacks, vec!["backup"]);
    assert_eq!(primary.deployments[0].weight, 3);
    let routing = &primary.routing;
    assert_eq!(routing.strategy, RoutingStrategy::Weighted);
    assert_eq!(routing.max_attempts, 4);
    assert_eq!(routing.timeout, Some(std::time::Duration::from_secs(20)));
    assert!(routing.fallback_on.server_error && routing.fallback_on.context_window);
    assert!(
        !routing.fallback_on.rate_limited,
        "an explicit list replaces the defaults"
    );
    assert_eq!(routing.fallback_on.statuses, vec![404]);
    assert_eq!(config.model("backup").unwrap().routing, Routing::default());
}

#[test]
fn routing_mistakes_are_reported_with_their_paths() {
    let found = problems(
        r#"
        [[models]]
        name = "m"
        fallbacks = ["m", "nowhere"]
        [[models.deployments]]
        provider = "simulated"
        weight = 0
        [models.routing]
        strategy = "fastest"
        max_attempts = 0
        fallback_on = ["sometimes", 200]
        "#,
    );
    let paths: Vec<&str> = found.iter().map(|problem| problem.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "models[0].deployments[0].weight",
            "models[0].routing.strategy",
            "models[0].routing.max_attempts",
            "models[0].routing.fallback_on[0]",
            "models[0].routing.fallback_on[1]",
            "models[0].fallbacks[0]",
            "models[0].fallbacks[1]",
        ]
    );
}

#[test]
fn group_timeouts_are_the_defaults_of_its_deployments() {
    let config = load(
        r#"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "simulated"
        [[models.deployments]]
        provider = "simulated"
        name = "own"
        stream_idle_timeout_secs = 9
        [models.routing]
        connect_timeout_secs = 2
        stream_idle_timeout_secs = 30
        "#,
    )
    .unwrap();
    let deployments = &config.model("m").unwrap().deployments;
    assert_eq!(
        deployments[0].timeouts.connect,
        std::time::Duration::from_secs(2)
    );
    assert_eq!(
        deployments[0].timeouts.stream_idle,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(
        deployments[1].timeouts.stream_idle,
        std::time::Duration::from_secs(9)
    );
    assert_eq!(
        deployments[1].timeouts.connect,
        std::time::Duration::from_secs(2)
    );
}

fn storage_config(url: &str) -> String {
    format!(
        r#"
        [storage]
        url = "{url}"
        [[models]]
        name = "m"
        [[models.deployments]]
        provider = "simulated"
        "#
    )
}

#[test]
fn postgres_urls_are_accepted_with_the_password_masked_when_printed() {
    for url in [
        "postgres://sb:${PG_PASSWORD}@db.internal:5432/switchboard",
        "postgresql://sb:${PG_PASSWORD}@db.internal/switchboard?sslmode=prefer&application_name=sb",
    ] {
        let config = load(&storage_config(url)).unwrap();
        let StorageUrl::Postgres(expanded) = &config.storage.url else {
            panic!("{url} should be a PostgreSQL URL");
        };
        assert!(
            expanded.contains("sb:pg-s3cret-pw@db.internal"),
            "{expanded}"
        );
        let shown = config.storage.url.to_string();
        assert!(shown.contains("sb:****@db.internal"), "{shown}");
        for printed in [
            shown,
            format!("{:?}", config.storage.url),
            format!("{config:?}"),
        ] {
            assert!(!printed.contains("pg-s3cret-pw"), "{printed}");
        }
    }
    let socket = load(&storage_config(
        "postgres:///switchboard?host=/var/run/postgresql",
    ))
    .unwrap();
    assert!(matches!(socket.storage.url, StorageUrl::Postgres(_)));
}

#[test]
fn passwords_are_masked_even_in_text_that_is_not_a_url() {
    assert_eq!(
        masked_url_text("postgres://u:p@ss/w?rd@h:5432/db?password=x&sslmode=disable"),
        "postgres://u:****@h:5432/db?password=****&sslmode=disable"
    );
    assert_eq!(masked_url_text("postgres://h/db"), "postgres://h/db");
    assert_eq!(masked_url_text("postgres://u@h/db"), "postgres://u@h/db");
    assert_eq!(StorageUrl::SqliteMemory.to_string(), "sqlite::memory:");
}

#[test]
fn malformed_postgres_urls_are_refused_with_a_fix_and_no_password() {
    const SHAPE: &str = "postgres://USER:PASSWORD@HOST:PORT/DATABASE";
    for (url, expected, fix) in [
        // An unencoded `/` in the password ends the authority early.
        (
            "postgres://sb:pg/s3cret@db/sb",
            "not a valid PostgreSQL URL",
            "percent-encode",
        ),
        (
            "postgres://sb:pg-s3cret@db:port/sb",
            "invalid port number",
            SHAPE,
        ),
        ("postgres://sb:pg-s3cret@/sb", "empty host", SHAPE),
        (
            "postgres:///sb?user=sb&password=pg-s3cret",
            "names no host",
            SHAPE,
        ),
        (
            "postgres://sb:pg-s3cret@db/sb/extra",
            "not a database name",
            SHAPE,
        ),
        (
            "postgres://sb:pg-s3cret@db/sb?sslmode=sometimes",
            "sslmode `sometimes`",
            "disable, allow, prefer",
        ),
        (
            "postgres://sb:pg-s3cret@db/sb?sslmode=verify-full",
            "needs TLS",
            "sslmode=prefer",
        ),
        (
            "postgres://sb:pg-s3cret@db/sb?ssl_mode=disable",
            "`ssl_mode` is not a connection parameter",
            "sslmode",
        ),
        (
            "postgres://sb:pg-s3cret@db/sb?statement-cache-capacity=lots",
            "statement-cache-capacity",
            "0 turns the cache off",
        ),
        (
            "postgres://sb:pg-s3cret@db/sb?port=99999",
            "not a port number",
            "between 1 and 65535",
        ),
    ] {
        let found = problems(&storage_config(url));
        assert_eq!(found.len(), 1, "{url}: {found:?}");
        assert_eq!(found[0].path, "storage.url");
        assert!(
            found[0].message.contains(expected),
            "{url}: {}",
            found[0].message
        );
        assert!(found[0].fix.contains(fix), "{url}: {}", found[0].fix);
        let printed = format!("{found:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }
    // A password from the environment is never printed either.
    let found = problems(&storage_config("postgres://sb:${PG_PASSWORD}@db:x/sb"));
    assert!(!format!("{found:?}").contains("pg-s3cret-pw"), "{found:?}");
}

#[test]
fn a_syntax_error_never_quotes_the_line_that_may_hold_a_secret() {
    let text = "[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"openai\"\nmodel = \"gpt\"\napi_key = \"sk-live-abcdef\n";
    let error = Config::from_toml("gateway.toml", text)
        .unwrap_err()
        .to_string();
    assert!(!error.contains("sk-live-abcdef"), "{error}");
    assert!(error.contains("line 6"), "{error}");
    let typed = "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = \"sk-secret-as-number\"\n";
    let error = Config::from_toml("gateway.toml", typed)
        .unwrap_err()
        .to_string();
    assert!(!error.contains("sk-secret-as-number"), "{error}");
}

#[test]
fn cache_settings_are_checked_and_default_off() {
    let models = "[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\n";
    let config = load(models).unwrap();
    assert!(!config.cache.enabled);
    assert_eq!(config.cache.scope, CacheScope::Key);
    assert_eq!(config.cache.ttl, Duration::from_secs(300));
    assert!(config.metrics.enabled && !config.metrics.key_labels);

    let config = load(&format!(
        "[cache]\nenabled = true\nscope = \"team\"\nttl_secs = 60\nmax_bytes = 4096\n{models}"
    ))
    .unwrap();
    assert_eq!(config.cache.scope, CacheScope::Team);
    assert_eq!(config.cache.max_bytes, 4096);

    let found = problems(&format!(
        "[cache]\nenabled = true\nbackend = \"redis\"\nscope = \"everyone\"\nmax_bytes = 1\nttl_secs = -1\n{models}"
    ));
    let paths: Vec<&str> = found.iter().map(|problem| problem.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "cache.backend",
            "cache.scope",
            "cache.max_bytes",
            "cache.ttl_secs"
        ],
        "{found:?}"
    );
    assert!(found[0].fix.contains("storage.redis_url"));
    let config = load(&format!("[storage]\nretention_days = 30\n{models}")).unwrap();
    assert_eq!(config.storage.retention_days, Some(30));
    assert_eq!(load(models).unwrap().storage.retention_days, None);
    assert!(load(models).unwrap().storage.redis_leases);
    let config = load(&format!("[storage]\nredis_leases = false\n{models}")).unwrap();
    assert!(!config.storage.redis_leases);
    let found = problems(&format!("[storage]\nretention_days = 0\n{models}"));
    assert_eq!(found[0].path, "storage.retention_days");
    assert_eq!(load(models).unwrap().storage.record_queue_bytes, 256 << 20);
    let config = load(&format!("[storage]\nrecord_queue_mib = 64\n{models}")).unwrap();
    assert_eq!(config.storage.record_queue_bytes, 64 << 20);
    for mib in ["0", "65537"] {
        let found = problems(&format!("[storage]\nrecord_queue_mib = {mib}\n{models}"));
        assert_eq!(found[0].path, "storage.record_queue_mib", "{found:?}");
    }
    let found = problems(&format!("[cache]\nsize = 3\n{models}"));
    assert!(found[0].message.contains("size"), "{found:?}");
}

#[test]
fn logging_settings_are_checked() {
    let models = "[[models]]\nname = \"m\"\nlog_bodies = true\n[[models.deployments]]\nprovider = \"simulated\"\n";
    let config = load(models).unwrap();
    assert!(config.logging.requests);
    assert!(!config.logging.bodies);
    assert_eq!(
        config.logging.redact,
        BUILT_IN_REDACTIONS.map(str::to_owned)
    );
    assert!(config.models[0].log_bodies);
    let found = problems(&format!(
        "[logging]\nredact = [\"emails\", \"passwords\"]\nredact_patterns = [\"ok\", \"(unclosed\"]\nmax_body_bytes = 10\n{models}"
    ));
    let paths: Vec<&str> = found.iter().map(|problem| problem.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "logging.redact[1]",
            "logging.redact_patterns[1]",
            "logging.max_body_bytes"
        ],
        "{found:?}"
    );
    // Without a request log there is nowhere to keep bodies.
    let plain = "[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\n";
    let off = load(&format!("[logging]\nrequests = false\n{plain}")).unwrap();
    assert!(!off.logging.requests);
    let found = problems(&format!(
        "[logging]\nrequests = false\nbodies = true\n{models}"
    ));
    let paths: Vec<&str> = found.iter().map(|problem| problem.path.as_str()).collect();
    assert_eq!(
        paths,
        ["logging.bodies", "models[0].log_bodies"],
        "{found:?}"
    );
    let found = problems(&format!("[logging]\nrequests = \"no\"\n{plain}"));
    assert!(found[0].path.contains("logging"), "{found:?}");
}

#[test]
fn worker_threads_are_counted_or_left_to_the_cpus() {
    let models = "[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\n";
    let config = load(models).unwrap();
    assert_eq!(config.server.worker_threads, None);
    for threads in [1, 3, 1024] {
        let config = load(&format!("[server]\nworker_threads = {threads}\n{models}")).unwrap();
        assert_eq!(config.server.worker_threads, Some(threads));
    }
    for threads in ["0", "1025"] {
        let found = problems(&format!("[server]\nworker_threads = {threads}\n{models}"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "server.worker_threads");
        assert!(found[0].fix.contains("between 1 and 1024"), "{found:?}");
    }
}

#[test]
fn the_scheduler_is_per_thread_unless_work_stealing_is_asked_for() {
    let models = "[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\n";
    let config = load(&format!("[server]\nworker_threads = 3\n{models}")).unwrap();
    assert_eq!(config.server.scheduler, Scheduler::PerThread);
    // Per thread: the runtime the gateway starts on has one thread, and
    // every serving thread runs a runtime of its own.
    assert_eq!(config.server.runtime_threads(), 1);
    assert_eq!(config.server.serving_threads(), 3);
    let config = load(&format!(
        "[server]\nworker_threads = 3\nscheduler = \"work-stealing\"\n{models}"
    ))
    .unwrap();
    assert_eq!(config.server.scheduler, Scheduler::WorkStealing);
    assert_eq!(config.server.runtime_threads(), 3);
    assert_eq!(config.server.serving_threads(), 1);
    let config = load(&format!("[server]\nscheduler = \"per-thread\"\n{models}")).unwrap();
    assert_eq!(config.server.scheduler, Scheduler::PerThread);
    assert_eq!(config.server.serving_threads(), config.server.threads());
    let found = problems(&format!("[server]\nscheduler = \"stealing\"\n{models}"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "server.scheduler");
    assert!(found[0].message.contains("`stealing`"), "{found:?}");
    assert!(found[0].fix.contains("work-stealing"), "{found:?}");
}

#[test]
fn the_idle_timeout_defaults_to_ten_minutes_and_must_be_a_usable_duration() {
    let config = Config::embedded_default();
    assert_eq!(config.server.idle_timeout, Duration::from_secs(600));
    let with = |seconds: &str| {
        format!(
            "[server]\nidle_timeout_secs = {seconds}\n[[models]]\nname = \"m\"\n[[models.deployments]]\nprovider = \"simulated\"\n"
        )
    };
    let config = load(&with("75")).unwrap();
    assert_eq!(config.server.idle_timeout, Duration::from_secs(75));
    for bad in ["0", "-1", "100000"] {
        let found = problems(&with(bad));
        assert_eq!(found.len(), 1, "{bad}: {found:?}");
        assert_eq!(found[0].path, "server.idle_timeout_secs");
        assert!(found[0].fix.contains("at most 86400"), "{:?}", found[0]);
    }
    let found = problems(&with("0.5"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "server.idle_timeout_secs");
    assert!(found[0].fix.contains("at least 1 second"), "{:?}", found[0]);
}
