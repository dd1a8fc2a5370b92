//! Weir's data path: a PgBouncer-compatible PostgreSQL connection pooler.
//!
//! The configuration types in [`config`] are the contract with the operator, which renders
//! them; everything else is the pooler itself.
//!
//! # Layers
//!
//! Each module uses only modules of its own layer or of the layers above it in this list
//! (`scripts/check-layering.py`, run by `make lint`, reads the list from here):
//!
//! - pure: protocol config params auth sql session_state prepared cancel_key
//! - transport: wire stream tls
//! - server: server token_review auth_query cloud_token
//! - pool: pool registry lifecycle peers
//! - session: client redis
//! - surfaces: admin metrics http
//! - root: app reload listener process runtime allocator
//!
//! `app` is the composition root: nothing below the root imports it. The surfaces and the client
//! session reach the running pooler through interfaces it implements (`metrics::PoolerView`,
//! `admin::Console`, `client::SessionContext`).

pub mod admin;
pub mod allocator;
pub mod app;
pub mod auth;
pub mod auth_query;
pub mod cancel_key;
pub mod client;
pub mod cloud_token;
pub mod config;
pub mod http;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod params;
pub mod peers;
pub mod pool;
pub mod prepared;
pub mod process;
pub mod protocol;
pub mod redis;
pub mod registry;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod session_state;
pub mod sql;
pub mod stream;
pub mod tls;
pub mod token_review;
pub mod wire;
