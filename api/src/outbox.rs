//! The outbox relay: publishes the rows applications commit to
//! `herald_outbox`, each exactly once, in `id` order.
//!
//! The store does the claiming (one relay at a time across replicas, rows
//! marked in the publishing transaction); each row is published with its
//! idempotency key, so a relay that crashed between publishing and marking
//! does not publish it twice. PostgreSQL `NOTIFY` wakes the relay at once;
//! a poll every second is the fallback (and the only path on SQLite).

use std::sync::Arc;
use std::time::Duration;

use herald_broker::{Broker, BrokerError, PublishRequest};
use herald_common::policy::Policies;
use herald_common::rooms::RoomName;
use herald_store::{OutboxRow, Store};
use serde_json::value::RawValue;

/// Rows per relay pass.
const BATCH: u32 = 200;
/// Poll period when no notification arrives.
const POLL: Duration = Duration::from_secs(1);

/// Publishes one row. A row that can never be published (invalid room or
/// event) is logged and counted, and reported as done so that it does not
/// block the rows behind it; a broker failure is an error (retry later).
async fn publish_row(broker: &dyn Broker, policies: &Policies, row: OutboxRow) -> Result<(), BrokerError> {
    let reject = |why: String| {
        tracing::error!(id = row.id, room = %row.room, "outbox row rejected: {why}");
        metrics::counter!("herald_outbox_rejected_total").increment(1);
        Ok(())
    };
    let room = match RoomName::new(&row.room) {
        Ok(room) => room,
        Err(e) => return reject(format!("room: {e}")),
    };
    if row.event.is_empty() || row.event.len() > 200 {
        return reject("event must be 1-200 bytes".into());
    }
    let data: Box<RawValue> = match serde_json::from_str(&row.data) {
        Ok(data) => data,
        Err(e) => return reject(format!("data: {e}")),
    };
    let req = PublishRequest {
        room: &room,
        event: &row.event,
        data: &data,
        retention: policies.lookup(&room).retention,
        notification: None,
    };
    broker.publish_once(req, &row.idempotency_key).await?;
    metrics::counter!("herald_publishes_total").increment(1);
    metrics::counter!("herald_outbox_relayed_total").increment(1);
    Ok(())
}

/// Runs the relay until the process ends.
pub async fn run_relay(store: Store, broker: Arc<dyn Broker>, policies: Arc<Policies>) {
    let mut listener = match store.outbox_listener().await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "outbox LISTEN unavailable; polling only");
            None
        }
    };
    loop {
        let pass = store
            .relay_outbox(BATCH, |row| {
                let broker = broker.clone();
                let policies = policies.clone();
                async move { publish_row(&*broker, &policies, row).await }
            })
            .await;
        let full = match pass {
            Ok(pass) => pass.relayed == BATCH as usize,
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay pass failed");
                false
            }
        };
        if let Ok(lag) = store.outbox_lag_seconds().await {
            metrics::gauge!("herald_outbox_lag_seconds").set(lag);
        }
        if full {
            continue;
        }
        match listener.as_mut() {
            // A notification or the poll period: either way, look again.
            Some(l) => {
                if let Ok(Err(e)) = tokio::time::timeout(POLL, l.recv()).await {
                    tracing::warn!(error = %e, "outbox LISTEN connection lost; polling");
                    listener = None;
                }
            }
            None => tokio::time::sleep(POLL).await,
        }
    }
}
