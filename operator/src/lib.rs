//! Weir's control plane: the `ConnectionPool` API and the pure layers under the controller.
//!
//! - [`api`]: the custom resource, its schema, its admission rules and their offline twin.
//! - [`sizing`]: the connection-budget arithmetic, from the database's limits to every
//!   pod's pool sizes.
//! - [`render`]: from a ConnectionPool and what was observed about the world to the
//!   Kubernetes objects that should exist.
//! - [`crd`]: the CustomResourceDefinition, as applied to clusters and kept in `crds/`.
//! - [`offline`]: the render of a manifest with stand-in facts, for review without a cluster.
//!
//! - [`controller`]: the only module that talks to the API server; it reconciles
//!   ConnectionPools with the layers above.

pub mod api;
pub mod controller;
pub mod crd;
pub mod offline;
pub mod render;
pub mod sizing;
pub mod yaml;
