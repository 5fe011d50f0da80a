//! async-openai turns a failed response into an error without its headers. This transport layer
//! reads `Retry-After` from 429 and 503 responses first, so retries can honour it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};

/// The longest `Retry-After` honoured; a larger one is read as this.
const MAX_RETRY_AFTER_SECS: f64 = 3_600.0;

/// A 429 or 503 answer, with the server's `Retry-After` (in seconds) when it sent one.
#[derive(Debug)]
pub struct RateLimited {
    pub status: u16,
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.retry_after {
            Some(d) => write!(f, "HTTP {} (retry after {} ms)", self.status, d.as_millis()),
            None => write!(f, "HTTP {}", self.status),
        }
    }
}

impl std::error::Error for RateLimited {}

/// A response's `Retry-After` in seconds, at most an hour.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        // A finite but huge value would overflow a Duration: capped first.
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER_SECS)))
}

#[derive(Clone, Debug)]
pub struct RetryAfterCapture {
    inner: ReqwestService,
}

impl RetryAfterCapture {
    pub fn new(inner: ReqwestService) -> Self {
        Self { inner }
    }
}

impl tower::Service<HttpRequestFactory> for RetryAfterCapture {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            let status = response.status().as_u16();
            if status != 429 && status != 503 {
                return Ok(response);
            }
            let retry_after = retry_after(response.headers());
            Err(OpenAIError::Boxed(Box::new(RateLimited { status, retry_after })))
        })
    }
}
