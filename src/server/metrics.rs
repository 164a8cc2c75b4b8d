//! The server's side of the metrics: a tower layer that counts every RPC
//! by method and status code and times it, and the HTTP endpoint that
//! serves `/metrics`.
//!
//! The layer sits outside every service (and outside the mapping of
//! oversized requests to RESOURCE_EXHAUSTED), so it sees each call's final
//! status: in the response headers for a refusal (trailers-only), else in
//! the trailers at the end of the body. A call is therefore counted when it
//! ends; a streaming call (a wait, a watch, a keep-alive) when its stream
//! ends, and a stream the client dropped before its trailers as CANCELLED.
//! Without metrics the layer passes everything through untouched.
//!
//! The endpoint is a deliberately small HTTP/1.1 responder on its own
//! listener: one request per connection (`Connection: close`), a request
//! head of at most 8 KiB read within 10 s, at most 16 connections at once.
//! `GET /metrics` (or HEAD) answers the Prometheus text format; any other
//! path is 404, any other method 405.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tonic::codegen::http;

use crate::engine::EngineHandle;
use crate::metrics::{MethodId, Metrics, CODE_CANCELLED, CODE_UNKNOWN, CONTENT_TYPE};

/// Counts and times every RPC (see the module doc).
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Option<Arc<Metrics>>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Option<Arc<Metrics>>) -> RpcMetricsLayer {
        RpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Option<Arc<Metrics>>,
}

/// One call being measured.
struct Call {
    metrics: Arc<Metrics>,
    method: MethodId,
    started: Instant,
}

impl Call {
    fn done(self, code: usize) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics.rpc_done(self.method, code, seconds);
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = self.metrics.as_ref().map(|metrics| Call {
            method: metrics.method(request.uri().path()),
            metrics: Arc::clone(metrics),
            started: Instant::now(),
        });
        ResponseFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if let Some(call) = call {
                    call.done(CODE_UNKNOWN);
                }
                return Poll::Ready(Err(e));
            }
        };
        // A refusal is trailers-only: its status is in the headers.
        if let Some(code) = grpc_status(response.headers()) {
            if let Some(call) = call.take() {
                call.done(code);
            }
        }
        Poll::Ready(Ok(response.map(|inner| MeteredBody { inner, call })))
    }
}

/// The status code in `grpc-status`, if there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    let text = std::str::from_utf8(value.as_bytes()).ok()?;
    Some(text.trim().parse().unwrap_or(CODE_UNKNOWN))
}

pin_project_lite::pin_project! {
    /// A response body that records its call when its trailers pass (or
    /// when it ends or is dropped without them).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.done(CODE_CANCELLED);
            }
        }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if this.call.is_some() {
            let code = match &frame {
                Some(Ok(frame)) => frame
                    .trailers_ref()
                    .map(|t| grpc_status(t).unwrap_or(CODE_UNKNOWN)),
                Some(Err(_)) | None => Some(CODE_UNKNOWN),
            };
            if let Some(code) = code {
                if let Some(call) = this.call.take() {
                    call.done(code);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Largest request head the endpoint reads.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a connection may take to send its request and read the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const CONNECTIONS_MAX: usize = 16;
/// How long a scrape waits for the engine's gauges before answering
/// without updating them.
const GAUGES_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve_endpoint(listener: TcpListener, metrics: Arc<Metrics>, engine: EngineHandle) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut backoff = super::incoming::Backoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, usually: wait rather than spin,
                // and say so once per episode.
                if backoff.failed() {
                    tracing::warn!("metrics endpoint: cannot accept: {e}; retrying with back-off");
                }
                tokio::time::sleep(backoff.delay()).await;
                continue;
            }
        };
        if let Some((failures, lasted)) = backoff.succeeded() {
            tracing::info!(
                failures,
                "metrics endpoint: accepting again after {lasted:?}"
            );
        }
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let engine = engine.clone();
        tokio::spawn(async move {
            let answered =
                tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &metrics, &engine));
            if let Ok(Err(e)) = answered.await {
                tracing::debug!("metrics endpoint: {e}");
            }
            drop(slot);
        });
    }
}

/// Reads one request and answers it.
async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    engine: &EngineHandle,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let (status, body) = match route(&head) {
        Route::Metrics { head_only } => {
            if let Ok(Some(sizes)) =
                tokio::time::timeout(GAUGES_TIMEOUT, engine.state_sizes()).await
            {
                metrics.set_state(&sizes);
            }
            let text = metrics.encode();
            let body = if head_only { String::new() } else { text };
            ("200 OK", body)
        }
        Route::NotFound => ("404 Not Found", "not found; try /metrics\n".to_owned()),
        Route::BadMethod => ("405 Method Not Allowed", "use GET\n".to_owned()),
        Route::BadRequest => ("400 Bad Request", "bad request\n".to_owned()),
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The request head, up to the blank line (at most `REQUEST_BYTES_MAX`).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(&buffer[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > REQUEST_BYTES_MAX {
            return Ok(head);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    BadRequest,
}

/// What a request head asks for.
fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::BadMethod,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let metrics = Route::Metrics { head_only: false };
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), metrics);
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }

    #[test]
    fn the_status_is_read_from_grpc_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers), Some(5));
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(grpc_status(&headers), Some(CODE_UNKNOWN));
    }
}
