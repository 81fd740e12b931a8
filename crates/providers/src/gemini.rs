//! Google's Gemini API upstream: `{api_base}/v1beta/models/{model}:generateContent`
//! (`:streamGenerateContent?alt=sse` for streams, `:batchEmbedContents` for
//! embeddings), authenticated with `x-goog-api-key`. Every request is
//! translated through the internal model: no client speaks Gemini's dialect.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use switchboard_config::{DeploymentConfig, UnsupportedParams};
use switchboard_core::Usage;
use switchboard_dialects::openai::EmbeddingsRequest;
use switchboard_dialects::openai::response::embeddings_list;
use switchboard_dialects::{gemini, openai::UpstreamErrorBody};

use crate::translate::{ChatCall, GEMINI, check_unsupported, translated_reply};
use crate::transport::{Http, Native, deployment_headers};
use crate::{CallOptions, Reply, UpstreamClients, UpstreamError};

pub(crate) struct GeminiBackend {
    http: Http,
    generate_url: reqwest::Url,
    stream_url: reqwest::Url,
    embed_url: reqwest::Url,
    models_url: reqwest::Url,
    headers: HeaderMap,
    upstream_model: String,
    policy: UnsupportedParams,
}

fn parse_error(body: &[u8], _headers: &HeaderMap) -> UpstreamErrorBody {
    gemini::parse_error(body)
}

impl GeminiBackend {
    pub(crate) fn new(
        config: &DeploymentConfig,
        clients: &UpstreamClients,
    ) -> Result<GeminiBackend, UpstreamError> {
        let base = config
            .api_base
            .clone()
            .ok_or_else(|| UpstreamError::Misconfigured("no api_base".to_owned()))?;
        let model = config.upstream_model.trim_start_matches("models/");
        let endpoint = |last: Option<String>| -> Result<reqwest::Url, UpstreamError> {
            let mut url = base.clone();
            {
                let mut segments = url.path_segments_mut().map_err(|()| {
                    UpstreamError::Misconfigured("api_base cannot take a path".to_owned())
                })?;
                segments.pop_if_empty().extend(["v1beta", "models"]);
                if let Some(last) = &last {
                    segments.push(last);
                }
            }
            Ok(url)
        };
        let mut stream_url = endpoint(Some(format!("{model}:streamGenerateContent")))?;
        stream_url.query_pairs_mut().append_pair("alt", "sse");
        let auth = config.api_key.as_ref().map(|key| {
            (
                HeaderName::from_static("x-goog-api-key"),
                key.expose().to_owned(),
            )
        });
        let headers = deployment_headers(config, auth)?;
        Ok(GeminiBackend {
            http: Http::new(clients, config.timeouts, parse_error)?,
            generate_url: endpoint(Some(format!("{model}:generateContent")))?,
            stream_url,
            embed_url: endpoint(Some(format!("{model}:batchEmbedContents")))?,
            models_url: endpoint(None)?,
            headers,
            upstream_model: model.to_owned(),
            policy: config.unsupported_params,
        })
    }

    pub(crate) async fn probe_models(&self) -> Result<(), UpstreamError> {
        let request = self
            .http
            .client(&crate::CallOptions::default())
            .get(self.models_url.clone())
            .headers(self.headers.clone());
        self.http.check(request).await
    }

    pub(crate) async fn chat(&self, call: &ChatCall<'_>) -> Result<Reply, UpstreamError> {
        let canonical = call.canonical()?;
        let encoded = gemini::encode_request(canonical);
        let dropped = check_unsupported(
            encoded.unsupported,
            self.policy,
            &self.upstream_model,
            call.dialect(),
        )?;
        let client = self.http.client(&call.options);
        let native = if canonical.stream {
            let request = client
                .post(self.stream_url.clone())
                .headers(self.headers.clone())
                .header(header::ACCEPT, "text/event-stream")
                .body(encoded.body);
            Native::Stream(self.http.stream(request, "text/event-stream").await?)
        } else {
            let request = client
                .post(self.generate_url.clone())
                .headers(self.headers.clone())
                .body(encoded.body);
            Native::Whole(self.http.whole(request).await?)
        };
        let idle = call
            .options
            .stream_idle
            .unwrap_or(self.http.timeouts.stream_idle);
        translated_reply(call, native, &GEMINI, &self.upstream_model, idle, dropped)
    }

    /// Embeddings through `batchEmbedContents`, answered as OpenAI's list.
    /// Gemini does not count embedding tokens, so the usage is unknown.
    pub(crate) async fn embeddings(
        &self,
        request: &EmbeddingsRequest<'_>,
        options: &CallOptions,
    ) -> Result<(Bytes, Usage), UpstreamError> {
        let inputs: Vec<String> = request
            .input
            .items()
            .into_iter()
            .map(|item| item.into_owned())
            .collect();
        let body = gemini::encode_embeddings(&self.upstream_model, &inputs, request.dimensions);
        let http_request = self
            .http
            .client(options)
            .post(self.embed_url.clone())
            .headers(self.headers.clone())
            .body(body);
        let answer = self.http.whole(http_request).await?;
        let vectors = gemini::decode_embeddings(&answer)
            .map_err(|error| UpstreamError::InvalidResponse(error.0))?;
        if vectors.len() != inputs.len() {
            return Err(UpstreamError::InvalidResponse(format!(
                "the upstream returned {} embeddings for {} inputs",
                vectors.len(),
                inputs.len()
            )));
        }
        Ok((
            Bytes::from(embeddings_list(
                &self.upstream_model,
                &vectors,
                request.base64,
                None,
            )),
            Usage::default(),
        ))
    }

    pub(crate) fn headroom(&self) -> Option<f64> {
        self.http.headroom()
    }
}
