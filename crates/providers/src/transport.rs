//! What every HTTP upstream shares, whatever its dialect: sending a request
//! within the deployment's timeouts, telling a stream from an error, reading
//! bounded bodies, classifying failed statuses, and the rate-limit headroom
//! the upstream reports in its headers.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Body;
use switchboard_config::{DeploymentConfig, Timeouts};
use switchboard_dialects::openai::UpstreamErrorBody;

use crate::client::{HttpClient, RequestBody, UpstreamBody, connect_step};
use crate::{CallOptions, TimeoutPhase, UpstreamClients, UpstreamError};

/// Largest error body read from an upstream; the rest is not needed to
/// explain the failure.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Largest whole (non-streamed) answer accepted from an upstream: far above
/// any real completion or embeddings batch, low enough that a broken
/// upstream cannot exhaust the gateway's memory.
const MAX_ANSWER_BODY: usize = 256 * 1024 * 1024;

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// Reads an upstream's error body (and headers) into what the gateway
/// tells the client.
pub(crate) type ErrorParser = fn(&[u8], &HeaderMap) -> UpstreamErrorBody;

pub(crate) fn parse_json_error(body: &[u8], _headers: &HeaderMap) -> UpstreamErrorBody {
    UpstreamErrorBody::parse(body)
}

/// A deployment's URL as the `http::Uri` its requests are sent to, parsed
/// once when the deployment is built. A user and password in the URL are
/// left out: `deployment_headers` sends them as basic authentication.
pub(crate) fn endpoint_uri(url: &url::Url) -> Result<Uri, UpstreamError> {
    let mut url = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Cannot fail: a URL with a user has an authority.
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UpstreamError::Misconfigured(format!(
            "the URL's scheme `{}` is neither http nor https",
            url.scheme()
        )));
    }
    Uri::try_from(url.as_str())
        .map_err(|_| UpstreamError::Misconfigured("the deployment's URL is invalid".to_owned()))
}

/// `Authorization: Basic …` for a user and password written in the URL
/// (`https://user:password@host/v1`), percent-decoded.
pub(crate) fn basic_auth(url: &url::Url) -> Option<HeaderValue> {
    use base64::Engine;
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .ok()
            .map(|text| text.into_owned())
    };
    let user = decode(url.username())?;
    let password = match url.password() {
        Some(password) => Some(decode(password)?),
        None => None,
    };
    if user.is_empty() && password.is_none() {
        return None;
    }
    let credentials = format!("{user}:{}", password.unwrap_or_default());
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The headers every request to a deployment carries: a JSON content type,
/// basic authentication from a user and password in its URL, the
/// credential (`auth`: a header name and its whole value, which replaces
/// the former when both are `Authorization`) and the configured extra
/// headers, all secret values marked sensitive so they never appear in
/// debug output.
pub(crate) fn deployment_headers(
    config: &DeploymentConfig,
    auth: Option<(HeaderName, String)>,
) -> Result<HeaderMap, UpstreamError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(value) = config.api_base.as_ref().and_then(basic_auth) {
        headers.insert(header::AUTHORIZATION, value);
    }
    if let Some((name, value)) = auth {
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            UpstreamError::Misconfigured(
                "the API key holds characters not allowed in a header".to_owned(),
            )
        })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    for (name, secret) in &config.headers {
        let mut value = HeaderValue::from_str(secret.expose()).map_err(|_| {
            UpstreamError::Misconfigured(format!("header {name} has an invalid value"))
        })?;
        value.set_sensitive(true);
        headers.insert(name.clone(), value);
    }
    Ok(headers)
}

/// A request to `uri` with the deployment's `headers` and `body`; the
/// caller adds what is particular to it (`accept`, a signature).
pub(crate) fn upstream_request(
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: impl Into<Bytes>,
) -> Request<RequestBody> {
    let mut request = Request::new(RequestBody::new(body.into()));
    *request.method_mut() = method;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    request
}

/// An upstream's answer before it is read as its dialect.
pub(crate) enum Native {
    Whole(Bytes),
    Stream(ByteStream),
}

/// A deployment's HTTP side.
pub(crate) struct Http {
    client: HttpClient,
    clients: UpstreamClients,
    pub timeouts: Timeouts,
    /// Share of its rate limit the upstream last reported left, in
    /// millionths; `u32::MAX` until it reports one.
    headroom: AtomicU32,
    parse_error: ErrorParser,
}

impl Http {
    pub(crate) fn new(
        clients: &UpstreamClients,
        timeouts: Timeouts,
        parse_error: ErrorParser,
    ) -> Result<Http, UpstreamError> {
        Ok(Http {
            client: clients.get(timeouts.connect)?,
            clients: clients.clone(),
            timeouts,
            headroom: AtomicU32::new(u32::MAX),
            parse_error,
        })
    }

    /// Sends a request with the current attempt's trace context, through
    /// the deployment's pool or, for a request with its own connect timeout
    /// (`x-switchboard-connect-timeout`), the pool for that timeout; waits
    /// for the answer's head.
    async fn send(
        &self,
        mut request: Request<RequestBody>,
        options: &CallOptions,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        crate::trace_context::add_traceparent(request.headers_mut());
        let own = options
            .connect
            .and_then(|connect| self.clients.get(connect_step(connect)).ok());
        own.as_ref()
            .unwrap_or(&self.client)
            .request(request)
            .await
            .map_err(|error| UpstreamError::from_client(&error))
    }

    /// Sends a request whose answer is read whole, within the request timeout.
    pub(crate) async fn whole(
        &self,
        request: Request<RequestBody>,
        options: &CallOptions,
    ) -> Result<Bytes, UpstreamError> {
        let exchange = async {
            let response = self.send(request, options).await?;
            self.note_rate_limits(response.headers());
            let (head, body) = response.into_parts();
            if !head.status.is_success() {
                return Err(self.status_error(head.status, head.headers, body).await);
            }
            let body = read_capped(body, MAX_ANSWER_BODY).await?;
            if body.len() >= MAX_ANSWER_BODY {
                return Err(UpstreamError::InvalidResponse(format!(
                    "the answer is larger than {} MiB",
                    MAX_ANSWER_BODY >> 20
                )));
            }
            Ok(body)
        };
        match tokio::time::timeout(self.timeouts.request, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout {
                phase: TimeoutPhase::Request,
            }),
        }
    }

    /// Sends a request for a stream: waits for its headers within the
    /// request timeout and checks that a stream of `content_type` began.
    pub(crate) async fn stream(
        &self,
        request: Request<RequestBody>,
        options: &CallOptions,
        content_type: &str,
    ) -> Result<ByteStream, UpstreamError> {
        let response =
            match tokio::time::timeout(self.timeouts.request, self.send(request, options)).await {
                Err(_) => {
                    return Err(UpstreamError::Timeout {
                        phase: TimeoutPhase::Request,
                    });
                }
                Ok(result) => result?,
            };
        self.note_rate_limits(response.headers());
        let (head, body) = response.into_parts();
        if !head.status.is_success() {
            return Err(self.status_error(head.status, head.headers, body).await);
        }
        let is_stream = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with(content_type));
        if !is_stream {
            // Some servers answer a stream request that failed with a JSON
            // error and status 200; relay what they meant.
            let body = read_limited(body, self.timeouts.request).await?;
            let parsed = (self.parse_error)(&body, &head.headers);
            if parsed.message.is_some() {
                return Err(UpstreamError::InStream { body: parsed });
            }
            return Err(UpstreamError::InvalidResponse(
                "the upstream answered a stream request without an event stream".to_owned(),
            ));
        }
        Ok(BodyStream { body }.boxed())
    }

    /// Sends a GET whose status alone matters (health probes).
    pub(crate) async fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), UpstreamError> {
        let timeout = self
            .timeouts
            .request
            .min(std::time::Duration::from_secs(10));
        let request = upstream_request(Method::GET, uri, headers, Bytes::new());
        let response = match tokio::time::timeout(
            timeout,
            self.send(request, &CallOptions::default()),
        )
        .await
        {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    phase: TimeoutPhase::Request,
                });
            }
            Ok(result) => result?,
        };
        self.note_rate_limits(response.headers());
        let (head, body) = response.into_parts();
        if head.status.is_success() {
            Ok(())
        } else {
            Err(self.status_error(head.status, head.headers, body).await)
        }
    }

    /// Reads the upstream's rate-limit headers and keeps the smaller share
    /// left: OpenAI's `x-ratelimit-{remaining,limit}-{requests,tokens}` and
    /// Anthropic's `anthropic-ratelimit-{requests,tokens}-{remaining,limit}`.
    fn note_rate_limits(&self, headers: &HeaderMap) {
        if let Some(least) = least_headroom(headers) {
            self.headroom
                .store((least * 1_000_000.0) as u32, Ordering::Relaxed);
        }
    }

    pub(crate) fn headroom(&self) -> Option<f64> {
        match self.headroom.load(Ordering::Relaxed) {
            u32::MAX => None,
            millionths => Some(f64::from(millionths) / 1_000_000.0),
        }
    }

    async fn status_error(
        &self,
        status: StatusCode,
        headers: HeaderMap,
        body: UpstreamBody,
    ) -> UpstreamError {
        let status = status.as_u16();
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| (status == 429).then(|| reset_wait(&headers)).flatten());
        let body = read_limited(body, self.timeouts.request)
            .await
            .unwrap_or_default();
        UpstreamError::Status {
            status,
            body: (self.parse_error)(&body, &headers),
            retry_after,
        }
    }
}

/// A streamed answer's body as its data chunks, in the order they arrive.
/// Dropping it drops the response, which cancels the upstream request.
struct BodyStream {
    body: UpstreamBody,
}

impl Stream for BodyStream {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => Poll::Ready(None),
                Some(Err(error)) => Poll::Ready(Some(Err(UpstreamError::from_body(&error)))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => Poll::Ready(Some(Ok(data))),
                    // Trailers and empty frames carry nothing to relay.
                    _ => continue,
                },
            };
        }
    }
}

/// Reads a body, stopping once `cap` bytes have arrived (the caller tells
/// a body cut at the cap from a whole one by its length). A body that
/// arrives in one piece is returned as that piece, without a copy.
pub(crate) async fn read_capped(
    mut body: UpstreamBody,
    cap: usize,
) -> Result<Bytes, UpstreamError> {
    let announced = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    let mut first: Option<Bytes> = None;
    let mut gathered: Vec<u8> = Vec::new();
    // Stops as soon as the body says it is over, without polling it once
    // more for its end (its connection has gone back to the pool by then).
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|error| UpstreamError::from_body(&error))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if first.is_none() && gathered.is_empty() {
            if data.len() >= cap {
                return Ok(data.slice(..cap));
            }
            first = Some(data);
            continue;
        }
        if let Some(first) = first.take() {
            gathered.reserve(announced.max(first.len() + data.len()).min(cap));
            gathered.extend_from_slice(&first);
        }
        let room = cap - gathered.len();
        gathered.extend_from_slice(&data[..data.len().min(room)]);
        if gathered.len() >= cap {
            break;
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(gathered)))
}

/// Reads at most `MAX_ERROR_BODY` bytes of an error or non-stream body,
/// within `timeout`.
async fn read_limited(
    body: UpstreamBody,
    timeout: std::time::Duration,
) -> Result<Bytes, UpstreamError> {
    tokio::time::timeout(timeout, read_capped(body, MAX_ERROR_BODY))
        .await
        .unwrap_or(Err(UpstreamError::Timeout {
            phase: TimeoutPhase::Request,
        }))
}

/// When a 429 has no `Retry-After`, the wait its `x-ratelimit-reset-*`
/// headers announce (OpenAI writes them as `1s`, `6m0s`, `20ms`), in
/// seconds; the longer of the two, since either limit may be the one hit.
fn reset_wait(headers: &HeaderMap) -> Option<String> {
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|name| headers.get(*name)?.to_str().ok())
        .filter_map(parse_reset)
        .reduce(f64::max)
        .map(|seconds| format!("{seconds:.3}"))
}

/// Parses `1h2m3.5s`, `6m0s`, `20ms` or a bare number of seconds.
fn parse_reset(text: &str) -> Option<f64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then_some(seconds);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits =
            rest.find(|character: char| !(character.is_ascii_digit() || character == '.'))?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, scale) = if let Some(after) = rest.strip_prefix("ms") {
            (after, 0.001)
        } else if let Some(after) = rest.strip_prefix('h') {
            (after, 3600.0)
        } else if let Some(after) = rest.strip_prefix('m') {
            (after, 60.0)
        } else if let Some(after) = rest.strip_prefix('s') {
            (after, 1.0)
        } else {
            return None;
        };
        total += value * scale;
        rest = unit;
    }
    Some(total)
}

/// The rate-limit headers that tell an upstream's headroom, as (remaining,
/// limit) pairs: OpenAI's (and the compatible servers') for requests and
/// tokens, then Anthropic's.
const HEADROOM_HEADERS: [(&str, &str); 4] = [
    (
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-requests",
    ),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-limit-tokens"),
    (
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-limit",
    ),
    (
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-limit",
    ),
];

/// The least share left (remaining / limit, at most 1) among the pairs of
/// `HEADROOM_HEADERS` an answer carries, each header read at its first
/// value. Read on every answer, so in one pass over the headers (a
/// response has a handful), where eight lookups by name would each parse
/// and hash the name.
fn least_headroom(headers: &HeaderMap) -> Option<f64> {
    // [remaining, limit] per pair; `Some(None)`: present, but not a number.
    let mut found = [[None::<Option<f64>>; 2]; HEADROOM_HEADERS.len()];
    for (name, value) in headers {
        let name = name.as_str();
        if !(name.starts_with("x-ratelimit-") || name.starts_with("anthropic-ratelimit-")) {
            continue;
        }
        for (pair, (remaining, limit)) in HEADROOM_HEADERS.iter().enumerate() {
            let side = if name == *remaining {
                0
            } else if name == *limit {
                1
            } else {
                continue;
            };
            found[pair][side].get_or_insert_with(|| {
                value
                    .to_str()
                    .ok()
                    .and_then(|value| value.trim().parse::<f64>().ok())
                    .filter(|value| value.is_finite() && *value >= 0.0)
            });
        }
    }
    found
        .into_iter()
        .filter_map(
            |[remaining, limit]| match (remaining.flatten(), limit.flatten()) {
                (Some(remaining), Some(limit)) if limit > 0.0 => Some((remaining / limit).min(1.0)),
                _ => None,
            },
        )
        .reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_are_read_in_openais_format() {
        assert_eq!(parse_reset("1s"), Some(1.0));
        assert_eq!(parse_reset("6m0s"), Some(360.0));
        assert_eq!(parse_reset("20ms"), Some(0.02));
        assert_eq!(parse_reset("1h2m3.5s"), Some(3723.5));
        assert_eq!(parse_reset("2.5"), Some(2.5));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("5x"), None);
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
        headers.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
        assert_eq!(reset_wait(&headers).as_deref(), Some("360.000"));
        assert_eq!(reset_wait(&HeaderMap::new()), None);
    }

    #[test]
    fn the_headers_read_of_a_successful_answer_are_kept_of_it() {
        // A successful answer keeps only `h1::READ_OF_SUCCESS`: every
        // header read of one here must be there.
        let read = HEADROOM_HEADERS
            .iter()
            .flat_map(|(remaining, limit)| [*remaining, *limit])
            .chain([header::CONTENT_TYPE.as_str(), crate::bedrock::ERROR_TYPE]);
        for name in read {
            assert!(
                crate::h1::READ_OF_SUCCESS.contains(&name),
                "{name} is read of a successful answer"
            );
        }
    }

    #[test]
    fn headroom_is_the_least_share_left_among_the_rate_limit_headers() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.append(*name, value.parse().unwrap());
            }
            headers
        };
        assert_eq!(least_headroom(&HeaderMap::new()), None);
        assert_eq!(
            least_headroom(&headers(&[
                ("content-type", "application/json"),
                ("x-ratelimit-limit-requests", "100"),
                ("x-ratelimit-remaining-requests", "25"),
                ("x-ratelimit-limit-tokens", "1000"),
                ("x-ratelimit-remaining-tokens", " 500 "),
            ])),
            Some(0.25)
        );
        assert_eq!(
            least_headroom(&headers(&[
                ("anthropic-ratelimit-requests-limit", "50"),
                ("anthropic-ratelimit-requests-remaining", "45"),
                ("anthropic-ratelimit-tokens-limit", "80000"),
                ("anthropic-ratelimit-tokens-remaining", "8000"),
            ])),
            Some(0.1)
        );
        // A pair needs both halves, a limit above zero and numbers that
        // are finite and not negative; more remaining than the limit
        // counts as all of it; a repeated header counts at its first value.
        assert_eq!(
            least_headroom(&headers(&[
                ("x-ratelimit-remaining-requests", "5"),
                ("x-ratelimit-limit-tokens", "0"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("anthropic-ratelimit-requests-limit", "10"),
                ("anthropic-ratelimit-requests-remaining", "-1"),
                ("anthropic-ratelimit-tokens-limit", "10"),
                ("anthropic-ratelimit-tokens-remaining", "inf"),
            ])),
            None
        );
        assert_eq!(
            least_headroom(&headers(&[
                ("x-ratelimit-limit-requests", "10"),
                ("x-ratelimit-remaining-requests", "20"),
                ("x-ratelimit-limit-tokens", "10"),
                ("x-ratelimit-remaining-tokens", "4"),
                ("x-ratelimit-remaining-tokens", "1"),
            ])),
            Some(0.4)
        );
    }
}
