//! AWS Bedrock upstream: the Converse API (`POST /model/{id}/converse`,
//! `/converse-stream` with AWS's binary event-stream framing) for chat, and
//! Titan through `InvokeModel` for embeddings. Every request is signed with
//! SigV4 (service `bedrock`) from the deployment's keys, its `aws_profile`,
//! or the standard chain (environment, then the shared files).

use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::try_join_all;
use http::Uri;
use http::header::{self, HeaderMap, HeaderValue};
use switchboard_config::{DeploymentConfig, UnsupportedParams};
use switchboard_core::Usage;
use switchboard_dialects::bedrock;
use switchboard_dialects::openai::response::embeddings_list;
use switchboard_dialects::openai::{EmbeddingsRequest, UpstreamErrorBody};

use crate::aws::{Credentials, SigningParams, load_credentials, load_region, sign};
use crate::client::RequestBody;
use crate::translate::{BEDROCK, ChatCall, check_unsupported, translated_reply};
use crate::transport::{Http, Native, deployment_headers, endpoint_uri};
use crate::{CallOptions, Reply, UpstreamClients, UpstreamError};

pub(crate) struct BedrockBackend {
    http: Http,
    converse_url: Uri,
    converse_stream_url: Uri,
    invoke_url: Uri,
    headers: HeaderMap,
    credentials: Credentials,
    region: String,
    upstream_model: String,
    policy: UnsupportedParams,
}

/// The header that names a Bedrock error's type (read with errors sent as
/// a 200 too: kept of a successful answer, `h1::READ_OF_SUCCESS`).
pub(crate) const ERROR_TYPE: &str = "x-amzn-errortype";

fn parse_error(body: &[u8], headers: &HeaderMap) -> UpstreamErrorBody {
    let kind = headers
        .get(ERROR_TYPE)
        .and_then(|value| value.to_str().ok());
    bedrock::parse_error(body, kind)
}

/// Percent-encodes a model id for a path segment as the AWS SDKs do (a
/// `:` in `...-v1:0` becomes `%3A`).
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl BedrockBackend {
    pub(crate) fn new(
        config: &DeploymentConfig,
        clients: &UpstreamClients,
    ) -> Result<BedrockBackend, UpstreamError> {
        let environment = |name: &str| std::env::var(name).ok();
        let region = config
            .region
            .clone()
            .or_else(|| load_region(&environment, config.aws_profile.as_deref()))
            .ok_or_else(|| {
                UpstreamError::Misconfigured(
                    "no AWS region: set region in the deployment, export AWS_REGION, or name one in the AWS config file".to_owned(),
                )
            })?;
        let base = match &config.api_base {
            Some(base) => base.clone(),
            None => url::Url::parse(&format!("https://bedrock-runtime.{region}.amazonaws.com"))
                .map_err(|error| {
                    UpstreamError::Misconfigured(format!("bad region `{region}`: {error}"))
                })?,
        };
        let credentials =
            match &config.aws_keys {
                Some(keys) => Credentials::new(
                    keys.access_key_id.expose(),
                    keys.secret_access_key.expose(),
                    keys.session_token
                        .as_ref()
                        .map(|token| token.expose().to_owned()),
                ),
                None => load_credentials(&environment, config.aws_profile.as_deref()).map_err(
                    |error| UpstreamError::Misconfigured(format!("AWS credentials: {error}")),
                )?,
            };
        let endpoint = |action: &str| {
            let mut url = base.clone();
            let path = format!(
                "{}/model/{}/{action}",
                url.path().trim_end_matches('/'),
                encode_segment(&config.upstream_model)
            );
            url.set_path(&path);
            endpoint_uri(&url)
        };
        let headers = deployment_headers(config, None)?;
        Ok(BedrockBackend {
            http: Http::new(clients, config.timeouts, parse_error)?,
            converse_url: endpoint("converse")?,
            converse_stream_url: endpoint("converse-stream")?,
            invoke_url: endpoint("invoke")?,
            headers,
            credentials,
            region,
            upstream_model: config.upstream_model.clone(),
            policy: config.unsupported_params,
        })
    }

    /// A signed POST to `uri` (`/model/{id}/{action}`), accepting
    /// `accept`.
    fn signed(
        &self,
        uri: &Uri,
        body: Vec<u8>,
        accept: &'static str,
    ) -> Result<http::Request<RequestBody>, UpstreamError> {
        let mut request = http::Request::new(body);
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static(accept));
        sign(
            &mut request,
            &SigningParams {
                credentials: &self.credentials,
                region: &self.region,
                service: "bedrock",
                time: SystemTime::now(),
            },
        )
        .map_err(|error| {
            UpstreamError::Misconfigured(format!("cannot sign the request: {error}"))
        })?;
        Ok(request.map(|body| RequestBody::new(Bytes::from(body))))
    }

    pub(crate) async fn chat(&self, call: &ChatCall<'_>) -> Result<Reply, UpstreamError> {
        let canonical = call.canonical()?;
        let encoded = bedrock::encode_request(canonical);
        let dropped = check_unsupported(
            encoded.unsupported,
            self.policy,
            &self.upstream_model,
            call.dialect(),
        )?;
        let native = if canonical.stream {
            let request = self.signed(
                &self.converse_stream_url,
                encoded.body,
                "application/vnd.amazon.eventstream",
            )?;
            Native::Stream(
                self.http
                    .stream(request, &call.options, "application/vnd.amazon.eventstream")
                    .await?,
            )
        } else {
            let request = self.signed(&self.converse_url, encoded.body, "application/json")?;
            Native::Whole(self.http.whole(request, &call.options).await?)
        };
        let idle = call
            .options
            .stream_idle
            .unwrap_or(self.http.timeouts.stream_idle);
        translated_reply(call, native, &BEDROCK, &self.upstream_model, idle, dropped)
    }

    /// Embeddings through Titan Text Embeddings (`InvokeModel`), one call
    /// per input, sent together; answered as OpenAI's list.
    pub(crate) async fn embeddings(
        &self,
        request: &EmbeddingsRequest<'_>,
        options: &CallOptions,
    ) -> Result<(Bytes, Usage), UpstreamError> {
        let items = request.input.items();
        let calls = items.iter().map(|item| async move {
            let body = bedrock::encode_embeddings_titan(item, request.dimensions);
            let answer = self
                .http
                .whole(
                    self.signed(&self.invoke_url, body, "application/json")?,
                    options,
                )
                .await?;
            bedrock::decode_embeddings_titan(&answer)
                .map_err(|error| UpstreamError::InvalidResponse(error.0))
        });
        let answers = try_join_all(calls).await?;
        let tokens: Option<u64> = answers.iter().map(|(_, tokens)| *tokens).sum();
        let vectors: Vec<Vec<f32>> = answers.into_iter().map(|(vector, _)| vector).collect();
        Ok((
            Bytes::from(embeddings_list(
                &self.upstream_model,
                &vectors,
                request.base64,
                tokens,
            )),
            Usage {
                input_tokens: tokens,
                output_tokens: Some(0),
                ..Usage::default()
            },
        ))
    }

    pub(crate) fn headroom(&self) -> Option<f64> {
        self.http.headroom()
    }
}
