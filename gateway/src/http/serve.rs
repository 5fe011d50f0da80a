//! The listener: connections up to `server.max_connections`, each served by hyper with a clock,
//! so that a client that sends its headers slowly, or keeps a connection open without asking
//! anything, is cut off after `server.header_timeout_ms`. Beyond the cap a connection gets one
//! `503 overloaded` (with `Retry-After`) and is closed. Bodies have their own size and deadline,
//! [`read_body_within`], a layer on the routes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::error::{ApiError, ErrorCode};

/// How many connections are open at most, and how long a client may take to send a request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// A request's headers must arrive within this, counted from when the connection is ready
    /// for one: it is also how long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// After the shutdown signal, how long open connections get to finish.
    pub shutdown_grace: Duration,
}

/// Connections over the cap being told so at once; beyond these few, they are just closed.
const REFUSALS_AT_ONCE: usize = 64;
/// How long a connection over the cap has to send the request its 503 answers.
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// within `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or the peer gone before accept: wait a moment.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small answers and stream chunks go out at once, not after the peer's ACK.
        let _ = stream.set_nodelay(true);
        match open.clone().try_acquire_owned() {
            Ok(permit) => {
                let (service, watcher) = (service(router.clone()), graceful.watcher());
                tokio::spawn(async move {
                    if first_byte_within(&stream, limits.header_timeout).await {
                        let connection = builder(limits.header_timeout)
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        let _ = watcher.watch(connection).await;
                    }
                    drop(permit);
                });
            }
            Err(_) => refuse(stream, &refusing),
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?limits.shutdown_grace,
            "connections still open after the shutdown grace period: closing them"
        );
    }
}

/// Whether a new connection starts a request within `timeout`. hyper's own header clock only
/// runs once it knows the protocol, which takes the first bytes: a client that connects and says
/// nothing is closed here instead.
async fn first_byte_within(stream: &TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(timeout, stream.peek(&mut byte)).await, Ok(Ok(n)) if n > 0)
}

fn builder(header_timeout: Duration) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
}

type HyperService = TowerToHyperService<tower::util::MapRequest<Router, fn(Request<Incoming>) -> Request>>;

fn service(router: Router) -> HyperService {
    let to_body: fn(Request<Incoming>) -> Request = |request| request.map(Body::new);
    TowerToHyperService::new(router.map_request(to_body))
}

/// Answers a connection over the cap with one `503 overloaded` and closes it.
fn refuse(stream: TcpStream, refusing: &Arc<Semaphore>) {
    metrics::counter!("ragway_connections_refused_total").increment(1);
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return; // dropped: closed at once
    };
    let answer =
        hyper::service::service_fn(|_request: Request<Incoming>| async { Ok::<_, Infallible>(overloaded()) });
    let mut builder = builder(REFUSAL_HEADER_TIMEOUT);
    builder.http1().keep_alive(false);
    tokio::spawn(async move {
        if first_byte_within(&stream, REFUSAL_HEADER_TIMEOUT).await {
            let _ = builder.serve_connection(TokioIo::new(stream), answer).await;
        }
        drop(permit);
    });
}

fn overloaded() -> Response {
    let error = ApiError::Busy {
        code: ErrorCode::Overloaded,
        message: "the server has as many connections open as it serves; retry shortly".into(),
        retry_after_s: 1,
    };
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What a route's body may be: its size (`server.max_body_bytes`) and how long it may take to
/// arrive after its headers (`server.body_timeout_ms`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub deadline: Duration,
}

/// Reads a request's whole body under [`BodyLimits`] before the route sees it: `413` over the
/// size, `408 request_timeout` past the deadline. Layered inside authentication, so that nobody
/// unauthenticated is waited for.
pub async fn read_body_within(limits: BodyLimits, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let limited = http_body_util::Limited::new(body, limits.max_bytes);
    match tokio::time::timeout(limits.deadline, limited.collect()).await {
        Ok(Ok(collected)) => {
            let body = Body::from(collected.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
        Ok(Err(error)) if error.is::<LengthLimitError>() => ApiError::BodyTooLarge.into_response(),
        Ok(Err(error)) => ApiError::invalid(ErrorCode::InvalidBody, format!("cannot read the body: {error}"))
            .into_response(),
        Err(_) => timed_out(limits.deadline),
    }
}

fn timed_out(deadline: Duration) -> Response {
    let message = format!(
        "the request body did not arrive within {} ms",
        deadline.as_millis()
    );
    let mut response = ApiError::invalid(ErrorCode::RequestTimeout, message).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
