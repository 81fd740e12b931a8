//! Reading a JSON request body: content type, size limit, and a clear
//! error for each way it can be wrong. Parsing the JSON itself is the
//! dialect's job.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;

use crate::error::ApiError;

pub(crate) async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    let is_json = content_type.is_some_and(|value| {
        let media_type = value.split(';').next().unwrap_or_default().trim();
        media_type.eq_ignore_ascii_case("application/json")
            || media_type.to_ascii_lowercase().ends_with("+json")
    });
    if !is_json {
        return Err(ApiError::unsupported_media_type(content_type));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ApiError::body_too_large(limit));
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(error) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
            let mut too_large = false;
            while let Some(current) = cause {
                too_large |= current.is::<http_body_util::LengthLimitError>();
                cause = current.source();
            }
            if too_large {
                Err(ApiError::body_too_large(limit))
            } else {
                Err(ApiError::unreadable_body(&error.to_string()))
            }
        }
    }
}
