//! The resolved model table that `switchboard check` prints: every public
//! model, the deployments behind it, and their credentials masked.

use crate::{Config, ProviderKind};

/// Renders the model table as aligned plain text.
pub fn model_table(config: &Config) -> String {
    let mut rows = vec![[
        "MODEL".to_owned(),
        "DEPLOYMENT".to_owned(),
        "PROVIDER".to_owned(),
        "UPSTREAM MODEL".to_owned(),
        "ENDPOINT".to_owned(),
        "CREDENTIALS".to_owned(),
    ]];
    for model in &config.models {
        for deployment in &model.deployments {
            let api_base = deployment.api_base.as_ref().map(masked_url);
            let endpoint = match (&deployment.provider, &api_base) {
                (ProviderKind::Simulated, _) => "(in-process, simulated)".to_owned(),
                (ProviderKind::Azure, Some(base)) => format!(
                    "{}/openai/deployments/{}?api-version={}",
                    base.as_str().trim_end_matches('/'),
                    deployment.azure_deployment.as_deref().unwrap_or_default(),
                    deployment.api_version.as_deref().unwrap_or_default()
                ),
                (_, Some(base)) => base.as_str().trim_end_matches('/').to_owned(),
                (ProviderKind::Bedrock, None) => match &deployment.region {
                    Some(region) => format!("https://bedrock-runtime.{region}.amazonaws.com"),
                    None => "bedrock-runtime (region from the AWS environment)".to_owned(),
                },
                (_, None) => "-".to_owned(),
            };
            let mut credentials: Vec<String> = Vec::new();
            if let Some(key) = &deployment.api_key {
                credentials.push(format!("api_key={}", key.masked()));
            }
            for (header, value) in &deployment.headers {
                credentials.push(format!("{header}={}", value.masked()));
            }
            if deployment.provider == ProviderKind::Bedrock {
                credentials.push(format!(
                    "aws profile {}",
                    deployment
                        .aws_profile
                        .as_deref()
                        .unwrap_or("(environment, then default)")
                ));
            }
            rows.push([
                model.name.clone(),
                deployment.name.clone(),
                deployment.provider.name().to_owned(),
                deployment.upstream_model.clone(),
                endpoint,
                if credentials.is_empty() {
                    "-".to_owned()
                } else {
                    credentials.join(", ")
                },
            ]);
        }
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The URL with any password it carries replaced by `****`.
fn masked_url(url: &url::Url) -> url::Url {
    let mut masked = url.clone();
    if masked.password().is_some() {
        let _ = masked.set_password(Some("****"));
    }
    masked
}
