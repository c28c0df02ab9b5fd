//! `GET /v1/stats`: the gateway nodes alive now, from the node registry
//! their heartbeats keep in the broker.

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use serde::Serialize;

use crate::State;
use crate::error::{ApiError, json_ok};

#[derive(Serialize)]
struct Node {
    id: String,
    connections: u64,
    rooms: u64,
    started_at: String,
    last_seen: String,
}

#[derive(Serialize)]
struct Answer {
    nodes: Vec<Node>,
}

/// `GET /v1/stats`.
pub async fn stats(state: &State) -> Result<Response<Full<Bytes>>, ApiError> {
    let nodes = state
        .broker
        .nodes()
        .await?
        .into_iter()
        .map(|n| Node {
            id: n.id,
            connections: n.connections,
            rooms: n.rooms,
            started_at: herald_common::rfc3339_ms(n.started_at),
            last_seen: herald_common::rfc3339_ms(n.last_seen),
        })
        .collect();
    json_ok(&Answer { nodes })
}
