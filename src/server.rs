//! The HTTP listener of a node: routes `/ws` to the gateway, `/v1` to the
//! API, and serves `/healthz`, `/readyz` and `/metrics`; on SIGTERM (or
//! Ctrl-C) it drains and stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use herald_api::Api;
use herald_broker::Broker;
use herald_gateway::Gateway;
use herald_store::Store;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long readiness waits for a dependency to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long in-flight HTTP requests may take once the node stops.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// What one node serves.
pub struct Node {
    pub gateway: Option<Gateway>,
    pub api: Option<Api>,
    pub broker: Arc<dyn Broker>,
    pub store: Option<Store>,
    pub metrics: PrometheusHandle,
    pub drain: Duration,
    /// The demo page, SDK bundle and demo token endpoint (standalone only).
    pub demo: Option<crate::demo::Demo>,
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn not_found() -> Response<Full<Bytes>> {
    let body = r#"{"error":{"code":"not_found","message":"no such endpoint"}}"#;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

impl Node {
    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        match path {
            "/ws" => match &self.gateway {
                Some(gateway) => gateway.handle_upgrade(req).await,
                None => not_found(),
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readiness().await,
            "/metrics" => {
                self.record_gauges();
                let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                response
            }
            "/" | "/demo.js" | "/herald.js" | "/demo/token" => match &self.demo {
                Some(demo) => demo.handle(&req),
                None => not_found(),
            },
            _ if path == "/v1" || path.starts_with("/v1/") => match &self.api {
                Some(api) => api.handle(req).await,
                None => not_found(),
            },
            _ => not_found(),
        }
    }

    /// 200 only when the broker and store answer and the node is not draining.
    async fn readiness(&self) -> Response<Full<Bytes>> {
        if let Some(gateway) = &self.gateway {
            if gateway.is_draining() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
            }
            if !gateway.broker_connected() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "broker subscription down\n");
            }
        }
        let broker = tokio::time::timeout(READY_TIMEOUT, self.broker.ping()).await;
        if !matches!(broker, Ok(Ok(()))) {
            return text(StatusCode::SERVICE_UNAVAILABLE, "broker unreachable\n");
        }
        if let Some(store) = &self.store {
            let answered = tokio::time::timeout(READY_TIMEOUT, store.ping()).await;
            if !matches!(answered, Ok(Ok(()))) {
                return text(StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n");
            }
        }
        text(StatusCode::OK, "ready\n")
    }

    fn record_gauges(&self) {
        crate::telemetry::record_process_metrics();
        if let Some(gateway) = &self.gateway {
            metrics::gauge!("herald_rooms").set(gateway.room_count() as f64);
        }
    }
}

/// Binds `addr` or says clearly why it cannot.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serves until SIGTERM/Ctrl-C, then drains and returns.
pub async fn serve(listener: TcpListener, node: Node) -> Result<()> {
    let node = Arc::new(node);
    let stop = CancellationToken::new();
    let connections = tokio_util::task::TaskTracker::new();

    let accept = {
        let node = node.clone();
        let stop = stop.clone();
        let connections = connections.clone();
        async move {
            loop {
                let (socket, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: back off
                            // instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = socket.set_nodelay(true);
                let node = node.clone();
                let stop = stop.clone();
                connections.spawn(async move {
                    let service = service_fn(move |mut req: Request<Incoming>| {
                        let node = node.clone();
                        req.extensions_mut().insert(herald_gateway::PeerAddr(peer));
                        async move { Ok::<_, Infallible>(node.route(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(socket), service)
                        .with_upgrades();
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        res = conn.as_mut() => res,
                        _ = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "http connection ended with an error");
                    }
                });
            }
        }
    };
    let accept = tokio::spawn(accept);

    shutdown_signal().await;
    tracing::info!("shutdown requested");
    if let Some(gateway) = &node.gateway {
        gateway.drain(node.drain).await;
    }
    stop.cancel();
    let _ = accept.await;
    connections.close();
    if tokio::time::timeout(HTTP_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("some HTTP requests did not finish in time");
    }
    if let Some(store) = &node.store {
        store.close().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the node");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
