//! Weir's data path: a PgBouncer-compatible PostgreSQL connection pooler.
//!
//! The configuration types in [`config`] are the contract with the operator, which renders
//! them; everything else is the pooler itself.

pub mod admin;
pub mod app;
pub mod auth;
pub mod client;
pub mod config;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod params;
pub mod pool;
pub mod protocol;
pub mod registry;
pub mod reload;
pub mod server;
pub mod stream;
pub mod wire;
