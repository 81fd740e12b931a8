//! Google's Gemini API upstream: `{api_base}/v1beta/models/{model}:generateContent`
//! (`:streamGenerateContent?alt=sse` for streams, `:batchEmbedContents` for
//! embeddings), authenticated with `x-goog-api-key`. Every request is
//! translated through the internal model: no client speaks Gemini's dialect.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use switchboard_config::{DeploymentConfig, UnsupportedParams};
use switchboard_core::Usage;
use switchboard_dialects::openai::EmbeddingsRequest;
use switchboard_dialects::openai::response::embeddings_list;
use switchboard_dialects::{gemini, openai::UpstreamErrorBody};

use crate::translate::{ChatCall, GEMINI, check_unsupported, translated_reply};
use crate::transport::{Http, Native, deployment_headers, endpoint_uri, upstream_request};
use crate::{CallOptions, Reply, UpstreamClients, UpstreamError};

pub(crate) struct GeminiBackend {
    http: Http,
    generate_url: Uri,
    stream_url: Uri,
    embed_url: Uri,
    models_url: Uri,
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
        let endpoint = |last: Option<String>| -> Result<url::Url, UpstreamError> {
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
            generate_url: endpoint_uri(&endpoint(Some(format!("{model}:generateContent")))?)?,
            stream_url: endpoint_uri(&stream_url)?,
            embed_url: endpoint_uri(&endpoint(Some(format!("{model}:batchEmbedContents")))?)?,
            models_url: endpoint_uri(&endpoint(None)?)?,
            headers,
            upstream_model: model.to_owned(),
            policy: config.unsupported_params,
        })
    }

    pub(crate) async fn probe_models(&self) -> Result<(), UpstreamError> {
        self.http.check(&self.models_url, &self.headers).await
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
        let native = if canonical.stream {
            let mut request =
                upstream_request(Method::POST, &self.stream_url, &self.headers, encoded.body);
            request.headers_mut().insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
            Native::Stream(
                self.http
                    .stream(request, &call.options, "text/event-stream")
                    .await?,
            )
        } else {
            let request = upstream_request(
                Method::POST,
                &self.generate_url,
                &self.headers,
                encoded.body,
            );
            Native::Whole(self.http.whole(request, &call.options).await?)
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
        let answer = self
            .http
            .whole(
                upstream_request(Method::POST, &self.embed_url, &self.headers, body),
                options,
            )
            .await?;
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
