//! How the pooler stops: the shutdown modes PgBouncer's signals and `SHUTDOWN` select.

/// How a shutdown waits before the process exits, as PgBouncer's signals and `SHUTDOWN`
/// variants do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// SIGQUIT, plain `SHUTDOWN`: exit at once.
    Now,
    /// SIGINT, `SHUTDOWN WAIT_FOR_SERVERS`: pause every pool, exit once no server
    /// connection is lent (running transactions finish; waiting clients are cut off).
    WaitForServers,
    /// SIGTERM, `SHUTDOWN WAIT_FOR_CLIENTS`: exit once every client has left; clients in
    /// transaction and statement modes are let go at their next transaction boundary.
    WaitForClients,
}
