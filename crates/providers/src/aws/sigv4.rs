//! AWS Signature Version 4 for requests signed in their headers: the
//! canonical request, the string to sign, the derived signing key and the
//! `authorization` header, exactly as AWS describes them.
//!
//! `sign` is what Bedrock needs: the path is encoded once more than it
//! appears on the wire (AWS's rule for every service but S3), dot segments
//! and repeated slashes are normalized away, and the body's SHA-256 is sent
//! as `x-amz-content-sha256` and signed. `sign_with` exposes those choices
//! to the tests, which check the public AWS test suite byte for byte.
//!
//! Signing never panics and leaves the request untouched when it fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ring::{digest, hmac};

use super::credentials::Credentials;
use switchboard_core::hex::lower as hex;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");

/// Headers left out of the signature: the signature itself, and headers
/// that proxies and HTTP stacks add, rewrite or drop on the way (hop-by-hop
/// headers, `user-agent`, AWS's own trace header), which would make a
/// correct signature fail to verify.
const UNSIGNED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "expect",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-amzn-trace-id",
];

/// What to sign a request with.
#[derive(Debug, Clone, Copy)]
pub struct SigningParams<'a> {
    pub credentials: &'a Credentials,
    /// The region the request goes to, e.g. `us-east-1`.
    pub region: &'a str,
    /// The signing name of the service, e.g. `bedrock`.
    pub service: &'a str,
    /// The time to sign at; AWS refuses signatures more than five minutes
    /// away from its own clock.
    pub time: SystemTime,
}

/// Why a request could not be signed. No variant carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("the request has no host to sign: no Host header and no authority in its URI")]
    NoHost,
    #[error("the signing time is outside the years 1970 to 9999")]
    TimeOutOfRange,
    /// The region or service name is empty or holds characters that would
    /// corrupt the credential scope.
    #[error("the AWS {what} `{value}` is not a valid name")]
    InvalidScope { what: &'static str, value: String },
    #[error("the AWS access key id is empty or holds characters not allowed in a credential")]
    InvalidAccessKeyId,
    #[error("the AWS session token holds characters not allowed in a header")]
    InvalidSessionToken,
}

/// How the canonical URI is derived from the request's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathEncoding {
    /// Every service but S3: the path as sent (already percent-encoded) is
    /// encoded once more, so `%3A` is signed as `%253A`.
    Double,
    /// S3, and the public test suite's UTF-8 and space cases: each segment
    /// is decoded and encoded once.
    #[cfg_attr(not(test), allow(dead_code))]
    Single,
}

/// The choices AWS leaves to the service being signed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SigningSettings {
    pub(crate) path_encoding: PathEncoding,
    /// Remove `.` and `..` segments and repeated slashes (everything but S3).
    pub(crate) normalize_path: bool,
    /// Send and sign `x-amz-content-sha256` (Bedrock accepts it; the public
    /// test suite signs without it unless a case says otherwise).
    pub(crate) content_sha256_header: bool,
}

impl SigningSettings {
    /// Bedrock and every other non-S3 service.
    pub(crate) const SERVICE: SigningSettings = SigningSettings {
        path_encoding: PathEncoding::Double,
        normalize_path: true,
        content_sha256_header: true,
    };
}

/// Signs `request` in place: adds `x-amz-date`, `x-amz-content-sha256`,
/// `x-amz-security-token` (with temporary credentials) and `authorization`,
/// the last two marked sensitive. Signing again replaces them all.
pub fn sign(
    request: &mut http::Request<Vec<u8>>,
    params: &SigningParams,
) -> Result<(), SigningError> {
    sign_with(request, params, SigningSettings::SERVICE).map(|_| ())
}

/// `sign` with the service-specific choices spelled out; returns the
/// canonical request it signed, which tests compare with AWS's.
pub(crate) fn sign_with(
    request: &mut http::Request<Vec<u8>>,
    params: &SigningParams,
    settings: SigningSettings,
) -> Result<CanonicalRequest, SigningError> {
    // Everything that can fail is checked before the request is touched.
    check_scope_name("region", params.region)?;
    check_scope_name("service", params.service)?;
    let access_key_id = params.credentials.access_key_id.as_str();
    if !is_valid_access_key_id(access_key_id) {
        return Err(SigningError::InvalidAccessKeyId);
    }
    let session_token = match &params.credentials.session_token {
        Some(token) => {
            let mut value =
                HeaderValue::from_str(token).map_err(|_| SigningError::InvalidSessionToken)?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let timestamp = Timestamp::new(params.time)?;
    let authority_host = if request.headers().contains_key(header::HOST) {
        None
    } else {
        Some(host_from_uri(request.uri())?)
    };
    let payload_hash = hex(digest::digest(&digest::SHA256, request.body()).as_ref());

    // A previous signature needs no removing: `authorization` is never
    // signed, and is replaced below.
    let headers = request.headers_mut();
    headers.insert(X_AMZ_DATE, ascii_header_value(&timestamp.date_time));
    match session_token {
        Some(value) => headers.insert(X_AMZ_SECURITY_TOKEN, value),
        None => headers.remove(X_AMZ_SECURITY_TOKEN),
    };
    if settings.content_sha256_header {
        headers.insert(X_AMZ_CONTENT_SHA256, ascii_header_value(&payload_hash));
    }

    let canonical = CanonicalRequest::new(request, authority_host, &payload_hash, settings);
    let scope = format!(
        "{}/{}/{}/aws4_request",
        timestamp.date, params.region, params.service
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{scope}\n{}",
        timestamp.date_time,
        hex(digest::digest(&digest::SHA256, &canonical.bytes).as_ref())
    );
    let signing_key = signing_key(
        params.credentials.secret_access_key(),
        &timestamp.date,
        params.region,
        params.service,
    );
    let signature = hex(hmac::sign(&signing_key, string_to_sign.as_bytes()).as_ref());
    let authorization = format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={signature}",
        canonical.signed_headers
    );
    let mut authorization = ascii_header_value(&authorization);
    authorization.set_sensitive(true);
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, authorization);
    Ok(canonical)
}

/// A header value from text already known to be visible ASCII (digits, hex,
/// checked names). The fallback is never reached; it keeps the signer free
/// of panics all the same.
fn ascii_header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Region and service names end up in the credential scope, between
/// slashes, and in a header: only the characters AWS uses in them pass.
fn check_scope_name(what: &'static str, value: &str) -> Result<(), SigningError> {
    let valid = !value.is_empty()
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(SigningError::InvalidScope {
            what,
            value: value.to_owned(),
        })
    }
}

/// An access key id is printable ASCII without the characters that separate
/// the parts of the `authorization` header.
fn is_valid_access_key_id(access_key_id: &str) -> bool {
    !access_key_id.is_empty()
        && access_key_id
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b'/' | b','))
}

/// The signing key: HMAC-SHA256 chained over the date, region, service and
/// the fixed terminator, starting from `AWS4` and the secret.
fn signing_key(secret_access_key: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut key = format!("AWS4{secret_access_key}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes());
        key = tag.as_ref().to_vec();
    }
    hmac::Key::new(hmac::HMAC_SHA256, &key)
}

/// The canonical request and the list of headers it signs.
pub(crate) struct CanonicalRequest {
    pub(crate) bytes: Vec<u8>,
    pub(crate) signed_headers: String,
}

impl CanonicalRequest {
    /// `authority_host` is the host to sign when the request has no `Host`
    /// header (hyper sends the same value, taken from the URI).
    pub(crate) fn new(
        request: &http::Request<Vec<u8>>,
        authority_host: Option<String>,
        payload_hash: &str,
        settings: SigningSettings,
    ) -> CanonicalRequest {
        let headers = canonical_headers(request.headers(), authority_host);
        let signed_headers = headers
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(";");

        let mut bytes = Vec::with_capacity(512);
        bytes.extend_from_slice(request.method().as_str().as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(canonical_uri(request.uri().path(), settings).as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(canonical_query(request.uri().query().unwrap_or("")).as_bytes());
        bytes.push(b'\n');
        for (name, value) in &headers {
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(b':');
            bytes.extend_from_slice(value);
            bytes.push(b'\n');
        }
        bytes.push(b'\n');
        bytes.extend_from_slice(signed_headers.as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(payload_hash.as_bytes());
        CanonicalRequest {
            bytes,
            signed_headers,
        }
    }
}

/// Signed headers by lowercase name (sorted, as the map keeps them), each
/// with its values trimmed, inner runs of whitespace collapsed to one space,
/// and repeated headers joined by commas in the order they were added.
fn canonical_headers(
    headers: &HeaderMap,
    authority_host: Option<String>,
) -> BTreeMap<String, Vec<u8>> {
    let mut canonical = BTreeMap::new();
    for name in headers.keys() {
        if UNSIGNED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let mut joined = Vec::new();
        for (index, value) in headers.get_all(name).iter().enumerate() {
            if index > 0 {
                joined.push(b',');
            }
            trim_and_collapse(value.as_bytes(), &mut joined);
        }
        canonical.insert(name.as_str().to_owned(), joined);
    }
    if let Some(host) = authority_host {
        canonical.insert("host".to_owned(), host.into_bytes());
    }
    canonical
}

/// AWS's `Trimall`: no leading or trailing whitespace, and each run of
/// spaces or tabs inside the value reduced to one space.
fn trim_and_collapse(value: &[u8], out: &mut Vec<u8>) {
    let mut words = value
        .split(|byte| matches!(byte, b' ' | b'\t'))
        .filter(|word| !word.is_empty());
    if let Some(first) = words.next() {
        out.extend_from_slice(first);
    }
    for word in words {
        out.push(b' ');
        out.extend_from_slice(word);
    }
}

/// The host as hyper will send it: the URI's host, with the port only when
/// it is not the scheme's default.
fn host_from_uri(uri: &http::Uri) -> Result<String, SigningError> {
    let authority = uri.authority().ok_or(SigningError::NoHost)?;
    let host = authority.host();
    if host.is_empty() {
        return Err(SigningError::NoHost);
    }
    let default_port = match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    Ok(match authority.port_u16() {
        Some(port) if Some(port) != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    })
}

/// The canonical URI: the path, normalized if asked, then URI-encoded.
fn canonical_uri(path: &str, settings: SigningSettings) -> String {
    let path = if settings.normalize_path {
        normalize_path(path)
    } else {
        path.to_owned()
    };
    if path.is_empty() {
        return "/".to_owned();
    }
    match settings.path_encoding {
        PathEncoding::Double => {
            let mut encoded = String::with_capacity(path.len() + 16);
            encode_into(path.as_bytes(), true, &mut encoded);
            encoded
        }
        PathEncoding::Single => path
            .split('/')
            .map(|segment| {
                let mut encoded = String::with_capacity(segment.len());
                encode_into(&percent_decode(segment, false), false, &mut encoded);
                encoded
            })
            .collect::<Vec<_>>()
            .join("/"),
    }
}

/// Removes `.` and `..` segments (RFC 3986 section 5.2.4) and empty
/// segments, which AWS also drops; keeps a leading and a trailing slash.
fn normalize_path(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            segment => kept.push(segment),
        }
    }
    let mut normalized = String::with_capacity(path.len());
    if path.starts_with('/') {
        normalized.push('/');
    }
    normalized.push_str(&kept.join("/"));
    if path.ends_with('/') && !kept.is_empty() {
        normalized.push('/');
    }
    normalized
}

/// The canonical query string: each name and value decoded (`+` as a
/// space, as in a form) and encoded per RFC 3986, the pairs sorted by name
/// and then value; a name without `=` gets an empty value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let mut encoded_name = String::with_capacity(name.len());
            encode_into(&percent_decode(name, true), false, &mut encoded_name);
            let mut encoded_value = String::with_capacity(value.len());
            encode_into(&percent_decode(value, true), false, &mut encoded_value);
            (encoded_name, encoded_value)
        })
        .collect();
    pairs.sort();
    let mut canonical = String::with_capacity(query.len() + 16);
    for (index, (name, value)) in pairs.iter().enumerate() {
        if index > 0 {
            canonical.push('&');
        }
        canonical.push_str(name);
        canonical.push('=');
        canonical.push_str(value);
    }
    canonical
}

/// Percent-encodes every byte but RFC 3986's unreserved characters (and
/// `/` when `keep_slash`), with uppercase hex digits.
fn encode_into(bytes: &[u8], keep_slash: bool, out: &mut String) {
    for &byte in bytes {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && byte == b'/')
        {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it
/// is. With `plus_as_space`, `+` means a space, as in a query.
fn percent_decode(text: &str, plus_as_space: bool) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(index + 1).and_then(|&digit| hex_value(digit)),
                bytes.get(index + 2).and_then(|&digit| hex_value(digit)),
            )
        {
            decoded.push((high << 4) | low);
            index += 3;
            continue;
        }
        decoded.push(if plus_as_space && byte == b'+' {
            b' '
        } else {
            byte
        });
        index += 1;
    }
    decoded
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The signing time in AWS's two forms.
struct Timestamp {
    /// `YYYYMMDD`, for the credential scope.
    date: String,
    /// `YYYYMMDDTHHMMSSZ`, for `x-amz-date` and the string to sign.
    date_time: String,
}

impl Timestamp {
    fn new(time: SystemTime) -> Result<Timestamp, SigningError> {
        let seconds = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| SigningError::TimeOutOfRange)?
            .as_secs();
        let days = i64::try_from(seconds / 86_400).map_err(|_| SigningError::TimeOutOfRange)?;
        let (year, month, day) = civil_from_days(days);
        if year > 9999 {
            return Err(SigningError::TimeOutOfRange);
        }
        let of_day = seconds % 86_400;
        let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
        let date = format!("{year:04}{month:02}{day:02}");
        let date_time = format!("{date}T{hour:02}{minute:02}{second:02}Z");
        Ok(Timestamp { date, date_time })
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction: month 1 to 12, day 1 to 31.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}
