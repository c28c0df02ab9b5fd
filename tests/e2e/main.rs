//! End-to-end tests of the `herald` binary (PROTOCOL.md is the contract).
//!
//! One test binary (link time): every test starts its own `herald
//! standalone` process on a free port with a fresh data directory (see
//! `harness`), drives it over real TCP with WebSocket and HTTP clients, and
//! kills it when done. Tests are independent and bounded (< 20 s each).
//!
//! Run: `cargo test --test e2e`.

mod harness;

mod abuse;
mod access;
mod api;
mod cluster;
mod errors;
mod ops;
mod ops_cluster;
mod outbox;
mod protocol;
mod recovery;
mod slow_consumer;
