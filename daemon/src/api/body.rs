//! Reading a request body: bounded in size and in time, parsed as JSON without ever letting the
//! parser's message (which quotes the input) reach a response or a log.

use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::api::error::{ApiError, from_json_error};
use crate::config::Limits;

/// After the limit is passed, up to this many times the limit is still read and dropped before the
/// 413 goes out. A client that writes its whole body before reading the answer then sees the 413
/// instead of a connection reset; one that sends more is cut off.
const DRAIN_FACTOR: usize = 8;
/// How long that draining may take.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads the whole body, at most `limits.max_body_bytes`, within `limits.body_timeout_secs`.
pub async fn read_body(headers: &HeaderMap, body: Body, limits: &Limits) -> Result<Vec<u8>, ApiError> {
    let limit = limits.max_body_bytes;
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|n| n > limit as u64) {
        drain(&mut body, limit).await;
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ApiError::BodyIncomplete)?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(ApiError::BodyTooLarge { limit });
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(limits.body_timeout_secs), read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(ApiError::BodyTooLarge { limit })) => {
            drain(&mut body, limit).await;
            Err(ApiError::BodyTooLarge { limit })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::BodyTimeout),
    }
}

async fn drain(body: &mut Body, limit: usize) {
    let cap = limit.saturating_mul(DRAIN_FACTOR);
    let mut seen = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                seen += d.len();
                if seen > cap {
                    break;
                }
            }
        }
    })
    .await;
}

/// Parses JSON syntax; a failure keeps only the line and column.
pub fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| from_json_error(&e))
}

/// Parses JSON into `T`: a syntax error keeps only its position, a shape error names the field
/// (see `fields.rs`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::api::fields::from_value(&parse_value(bytes)?)
}

/// [`read_body`] then [`parse_json`].
pub async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body, limits: &Limits) -> Result<T, ApiError> {
    parse_json(&read_body(headers, body, limits).await?)
}

/// [`read_body`] then [`parse_value`], for endpoints that read the body as several typed parts.
pub async fn read_value(headers: &HeaderMap, body: Body, limits: &Limits) -> Result<serde_json::Value, ApiError> {
    parse_value(&read_body(headers, body, limits).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let limits = Limits { max_body_bytes: 10, ..Limits::default() };
        let ok = read_body(&HeaderMap::new(), Body::from("0123456789"), &limits).await.unwrap();
        assert_eq!(ok.len(), 10);
        let e = read_body(&HeaderMap::new(), Body::from("0123456789a"), &limits).await.unwrap_err();
        assert!(matches!(e, ApiError::BodyTooLarge { limit: 10 }));
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, "11".parse().unwrap());
        let e = read_body(&h, Body::from("0123456789a"), &limits).await.unwrap_err();
        assert!(matches!(e, ApiError::BodyTooLarge { .. }));
    }
}
