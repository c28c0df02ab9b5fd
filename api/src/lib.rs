//! Herald's HTTP API for application back ends (PROTOCOL.md §2): the `/v1`
//! routes, wired here.
//!
//! [`Api::handle`] answers one request: it resolves the path to an endpoint
//! (for the metrics label), checks the API key, then the method, then runs
//! the endpoint. Authentication comes before routing so that a caller
//! without a valid key learns nothing about which paths exist. Every answer
//! is JSON, every failure `{"error":{"code","message"}}`; nothing a client
//! sends can make the API panic or answer 500.
//!
//! Modules: `auth` (API keys), `body` (bounded JSON bodies), `error` (the
//! error type and JSON responses), `router` (paths to endpoints), `publish`
//! (publish, broadcast), `rooms` (history, presence).

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use herald_broker::Broker;
use herald_common::config::Config;
use herald_common::policy::Policies;
use herald_common::protocol::ErrorCode;
use herald_store::Store;
use http::request::Parts;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Body;

mod auth;
mod body;
mod cors;
mod error;
mod grants;
mod notifications;
pub mod outbox;
mod publish;
mod rooms;
mod router;
mod stats;
mod users;

#[cfg(test)]
mod openapi_test;
#[cfg(test)]
mod tests;

use error::ApiError;
use router::Endpoint;

/// What the API needs from the configuration.
#[derive(Clone)]
pub struct ApiSettings {
    /// Accepted API keys (`api.keys`, `HERALD_API_KEYS`). Empty: every
    /// request is refused.
    pub keys: Vec<String>,
    /// Largest request body accepted (`api.max_body_bytes`).
    pub max_body_bytes: usize,
    /// Room policies, for each room's retention.
    pub policies: Policies,
    /// The store behind grants and notifications; without one those
    /// endpoints answer 503.
    pub store: Option<Store>,
    /// Requests per API key (`[limits.per_api_key] requests`), cluster-wide.
    pub key_limit: Option<herald_common::config::RateLimit>,
    /// Browser origins allowed to call the API (`api.cors_origins`).
    pub cors_origins: Vec<String>,
}

impl ApiSettings {
    /// The settings of a loaded configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            keys: config.api.keys.clone(),
            max_body_bytes: config.api.max_body_bytes,
            policies: Policies::new(&config.rooms),
            store: None,
            key_limit: config.limits.per_api_key.requests,
            cors_origins: config.api.cors_origins.clone(),
        }
    }
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach a log line, even through `{:?}`.
        f.debug_struct("ApiSettings")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Shared by every clone of [`Api`] and passed to the endpoint handlers.
pub(crate) struct State {
    pub keys: Vec<String>,
    pub max_body_bytes: usize,
    pub policies: Policies,
    pub broker: Arc<dyn Broker>,
    pub store: Option<Store>,
    pub key_limit: Option<herald_common::config::RateLimit>,
    pub cors_origins: Vec<String>,
}

impl State {
    /// The store, or 503 when this node has none.
    pub fn store(&self) -> Result<&Store, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "no store is configured on this node (HERALD_DATABASE_URL)",
            )
        })
    }
}

/// The `/v1` API. Clones share one state.
#[derive(Clone)]
pub struct Api {
    state: Arc<State>,
}

impl Api {
    pub fn new(settings: ApiSettings, broker: Arc<dyn Broker>) -> Self {
        // A presented key never has surrounding whitespace (header values
        // are trimmed), so a configured key with some could never match;
        // `HERALD_API_KEYS="a, b"` or `""` should mean what it looks like.
        let keys = settings
            .keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        Self {
            state: Arc::new(State {
                keys,
                max_body_bytes: settings.max_body_bytes,
                policies: settings.policies,
                broker,
                store: settings.store,
                key_limit: settings.key_limit,
                cors_origins: settings.cors_origins,
            }),
        }
    }

    /// Handles a request whose path starts with `/v1`.
    ///
    /// The body bound is the one [`http_body_util::Limited`] needs; it holds
    /// for `hyper::body::Incoming` and for `Full<Bytes>`.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn Error + Send + Sync>>,
    {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let resolved = router::resolve(parts.uri.path());
        let route = resolved.map_or(router::UNMATCHED, |(endpoint, _)| endpoint.pattern());
        let cors_origin = cors::allowed_origin(&parts.headers, &self.state.cors_origins);
        if let Some(origin) = &cors_origin
            && cors::is_preflight(&parts.method, &parts.headers)
        {
            return cors::preflight(origin.clone());
        }

        let mut response = match self.dispatch(&parts, resolved, body).await {
            Ok(response) => response,
            Err(e) => {
                let status = e.status.as_u16();
                if e.status.is_server_error() {
                    tracing::warn!(route, status, message = %e.message, "API request failed");
                } else {
                    tracing::debug!(route, status, message = %e.message, "API request refused");
                }
                e.into_response()
            }
        };

        if let Some(origin) = cors_origin {
            cors::decorate(&mut response, origin);
        }
        let status = response.status().as_u16().to_string();
        metrics::counter!("herald_api_requests_total", "route" => route, "status" => status).increment(1);
        metrics::histogram!("herald_api_request_duration_seconds", "route" => route)
            .record(started.elapsed().as_secs_f64());
        response
    }

    async fn dispatch<B>(
        &self,
        parts: &Parts,
        resolved: Option<(Endpoint, router::Params<'_>)>,
        body: B,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn Error + Send + Sync>>,
    {
        let state = &*self.state;
        let key_index = auth::authorize(&parts.headers, &state.keys)?;
        if let Some(limit) = state.key_limit {
            // Shared by every API node through the broker.
            if let Ok(Some(wait)) = state
                .broker
                .rate_limit(&format!("api-key:{key_index}"), limit)
                .await
            {
                metrics::counter!("herald_rate_limited_total", "scope" => "api_key").increment(1);
                return Err(ApiError::rate_limited(wait));
            }
        }
        let Some((endpoint, (first, id))) = resolved else {
            // The path is echoed to help find the typo, but never at length.
            let path: String = parts.uri.path().chars().take(100).collect();
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no API endpoint at {path}"),
            ));
        };
        if !endpoint.allows(&parts.method) {
            return Err(ApiError::method_not_allowed(endpoint.allow()));
        }
        // `resolve` returns the parameters each endpoint's pattern names.
        let first = first.unwrap_or_default();
        let id = id.unwrap_or_default();
        let headers = &parts.headers;
        match endpoint {
            Endpoint::Publish => publish::publish(state, headers, body).await,
            Endpoint::Broadcast => publish::broadcast(state, headers, body).await,
            Endpoint::History => rooms::history(state, first, parts.uri.query()).await,
            Endpoint::Presence => rooms::presence(state, first).await,
            Endpoint::Unsubscribe => users::unsubscribe(state, first, headers, body).await,
            Endpoint::Stats => stats::stats(state).await,
            Endpoint::Grants => grants::grants(state, &parts.method, headers, body).await,
            Endpoint::Notifications if parts.method == http::Method::GET => {
                notifications::list(state, first, parts.uri.query()).await
            }
            Endpoint::Notifications => notifications::create(state, first, headers, body).await,
            Endpoint::NotificationRead => notifications::mark_read(state, first, id).await,
            Endpoint::Disconnect => users::disconnect(state, first, headers, body).await,
        }
    }
}
