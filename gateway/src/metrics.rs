//! The gateway's metrics, registered once and cached as handles so the hot
//! path does no registry look-ups. Names are documented in
//! `docs/operations.md`.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Handles on every metric the gateway records.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub events_delivered: Counter,
    /// Publish `ts` to socket write, seconds; sampled once per written batch
    /// (the batch's oldest event, so the worst case of the batch).
    pub delivery_latency: Histogram,
    pub rooms: Gauge,
    pub broker_events: Counter,
    /// Members a delivery was queued for.
    pub fanout_batch: Histogram,
    /// Frames per socket write: how deep the outbound queue was when drained.
    pub write_batch: Histogram,
    /// Upgrade request to `welcome` queued, seconds.
    pub handshake: Histogram,
    /// Token verification, seconds.
    pub auth: Histogram,
}

impl GatewayMetrics {
    pub fn new() -> Self {
        Self {
            connections_open: gauge!("herald_connections_open"),
            connections_accepted: counter!("herald_connections_accepted_total"),
            frames_in: counter!("herald_frames_in_total"),
            frames_out: counter!("herald_frames_out_total"),
            events_delivered: counter!("herald_events_delivered_total"),
            delivery_latency: histogram!("herald_delivery_latency_seconds"),
            rooms: gauge!("herald_rooms"),
            broker_events: counter!("herald_broker_events_total"),
            fanout_batch: histogram!("herald_fanout_members"),
            write_batch: histogram!("herald_write_batch_frames"),
            handshake: histogram!("herald_handshake_duration_seconds"),
            auth: histogram!("herald_auth_duration_seconds"),
        }
    }

    /// A connection was closed with `code`.
    pub fn closed(code: u16) {
        counter!("herald_connections_closed_total", "code" => code.to_string()).increment(1);
    }

    /// An upgrade was refused for `reason`.
    pub fn refused(reason: &'static str) {
        counter!("herald_connections_refused_total", "reason" => reason).increment(1);
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}
