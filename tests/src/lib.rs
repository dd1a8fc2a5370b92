//! Harness for Weir's integration tests.
//!
//! Tests talk to real components, never mocks: [`postgres::PgCluster`] runs a throw-away
//! PostgreSQL 15 cluster initialised in a temporary directory, and [`weir::WeirProcess`] runs the
//! real `weir` pooler binary against a generated `weir.ini`. Each instance gets its own port and
//! directory, so tests can run in parallel threads of one process.
//!
//! [`raw::RawClient`] speaks the wire protocol by hand, for what a driver never sends.
//!
//! [`netns::NetNs`] puts a server in a network namespace of its own, so tests can blackhole
//! or drop the packets to it; [`delay::DelayRelay`] delays them.
//!
//! [`prometheus::Prometheus`] runs a real Prometheus scraping the test's processes.
//!
//! [`k8s::ControlPlane`] runs a real Kubernetes control plane (tests/controlplane) for the
//! operator's end-to-end tests, and [`k8s::Operator`] the operator against it.
//!
//! Processes are cleaned up in two layers. Normally `Drop` stops them and waits for them to exit
//! (this also runs while a failing test unwinds). As a safety net for a test process that dies
//! without unwinding (SIGKILL, `abort`, a harness timeout), every long-lived child is started
//! through `setpriv --pdeathsig KILL` from a dedicated thread that lives exactly as long as the
//! child, so the kernel kills the child when the test process goes away. Temporary directories
//! of such a killed process are left behind; nothing can remove them.

pub mod anchor;
mod child;
pub mod delay;
pub mod drivers;
pub mod fixture;
pub mod k8s;
pub mod net;
pub mod netns;
pub mod parity;
pub mod postgres;
pub mod procfs;
pub mod prometheus;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod weir;

/// The client driver the harness connects with, re-exported so tests name the same version.
pub use tokio_postgres;
