//! Session settings (`SET search_path …`, `SET ROLE …`) in transaction mode: recorded when
//! they take effect, replayed on whichever server connection the client gets next, and undone
//! on a connection before another client uses it.
//!
//! A SET takes effect only if the transaction it ran in commits: the pooler holds it as
//! pending until ReadyForQuery says the session is idle again, and drops it if an error or a
//! ROLLBACK came in between. A `ROLLBACK TO SAVEPOINT` looks the same, yet what came before
//! the savepoint commits: so whenever pending settings are dropped, the connection's state is
//! taken as unknown ([`Setting::unknown`]) and reset before it is used again.

use crate::params;

/// One recorded setting: its name and the statement that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Lower-case name.
    pub name: String,
    /// The SET statement, replayed as it was written.
    pub sql: String,
}

impl Setting {
    /// Marks a server connection that may carry settings nobody recorded: no client wants
    /// it, so [`replay_query`] resets the connection before anyone uses it again.
    pub fn unknown() -> Setting {
        Setting {
            name: String::new(),
            sql: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Set(Setting),
    Reset(String),
    ResetAll,
}

/// A client's session settings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionState {
    applied: Vec<Setting>,
    pending: Vec<Op>,
    failed: bool,
    /// Pending settings were dropped: some may have committed after all.
    unsure: bool,
}

impl SessionState {
    /// The settings in effect, in the order they were made.
    pub fn applied(&self) -> &[Setting] {
        &self.applied
    }

    /// A SET was sent. Parameters the pooler already keeps in step through ParameterStatus
    /// (`TimeZone`, `application_name`, …) are left to that mechanism.
    pub fn set(&mut self, name: &str, sql: &str) {
        if params::TRACKED.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            return;
        }
        self.pending.push(Op::Set(Setting {
            name: name.to_owned(),
            sql: sql.trim().to_owned(),
        }));
    }

    /// A RESET name was sent.
    pub fn reset(&mut self, name: &str) {
        self.pending.push(Op::Reset(name.to_owned()));
    }

    /// RESET ALL or DISCARD ALL was sent.
    pub fn reset_all(&mut self) {
        self.pending.push(Op::ResetAll);
    }

    /// The server reported an error: what is pending will be rolled back.
    pub fn on_error(&mut self) {
        self.failed = true;
    }

    /// A CommandComplete arrived; `ROLLBACK` undoes what is pending.
    pub fn on_command_complete(&mut self, tag: &str) {
        if tag == "ROLLBACK" {
            self.failed = true;
        }
    }

    /// A ReadyForQuery arrived. When the session is idle again, pending settings took effect
    /// (no error, no rollback) or are dropped, leaving the connection unsure.
    pub fn on_ready(&mut self, status: u8) {
        if status != b'I' {
            return;
        }
        if self.failed {
            self.unsure |= !self.pending.is_empty();
        } else {
            for op in self.pending.drain(..) {
                match op {
                    Op::Set(s) => {
                        self.applied.retain(|a| a.name != s.name);
                        self.applied.push(s);
                    }
                    Op::Reset(name) => self.applied.retain(|a| a.name != name),
                    Op::ResetAll => self.applied.clear(),
                }
            }
        }
        self.pending.clear();
        self.failed = false;
    }

    /// Whether settings were dropped since the last call, so that the server connection may
    /// carry some that [`SessionState::applied`] does not list.
    pub fn take_unsure(&mut self) -> bool {
        std::mem::take(&mut self.unsure)
    }
}

/// The query that makes a server connection whose session has `server` settings carry
/// `wanted` instead, or `None` when they already match.
pub fn replay_query(server: &[Setting], wanted: &[Setting]) -> Option<String> {
    if server == wanted {
        return None;
    }
    let mut sql = String::new();
    if !server.is_empty() {
        sql.push_str("RESET SESSION AUTHORIZATION; RESET ALL;");
    }
    for s in wanted {
        sql.push_str(&s.sql);
        sql.push(';');
    }
    (!sql.is_empty()).then_some(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_counts_once_the_session_is_idle_without_errors() {
        let mut s = SessionState::default();
        s.set("search_path", "SET search_path TO app");
        assert!(s.applied().is_empty());
        s.on_ready(b'T');
        assert!(s.applied().is_empty());
        s.on_command_complete("COMMIT");
        s.on_ready(b'I');
        assert_eq!(s.applied().len(), 1);
        assert_eq!(s.applied()[0].sql, "SET search_path TO app");
    }

    #[test]
    fn errors_and_rollbacks_undo_pending_settings() {
        let mut s = SessionState::default();
        s.set("work_mem", "SET work_mem = '1MB'");
        s.on_error();
        s.on_ready(b'I');
        assert!(s.applied().is_empty());
        s.set("work_mem", "SET work_mem = '2MB'");
        s.on_command_complete("ROLLBACK");
        s.on_ready(b'I');
        assert!(s.applied().is_empty());
    }

    #[test]
    fn dropped_settings_leave_the_connection_unknown() {
        let mut s = SessionState::default();
        s.on_command_complete("ROLLBACK");
        s.on_ready(b'I');
        assert!(!s.take_unsure(), "nothing was pending");
        // ROLLBACK TO SAVEPOINT has the tag of a ROLLBACK; the SET before it commits.
        s.set("search_path", "SET search_path = a");
        s.on_command_complete("ROLLBACK");
        s.on_ready(b'T');
        s.on_ready(b'I');
        assert!(s.applied().is_empty());
        assert!(s.take_unsure());
        assert!(!s.take_unsure());
        assert_eq!(
            replay_query(&[Setting::unknown()], &[]).as_deref(),
            Some("RESET SESSION AUTHORIZATION; RESET ALL;")
        );
    }

    #[test]
    fn later_settings_replace_earlier_and_resets_remove() {
        let mut s = SessionState::default();
        s.set("work_mem", "SET work_mem = '1MB'");
        s.set("search_path", "SET search_path = a");
        s.set("work_mem", "SET work_mem = '2MB'");
        s.on_ready(b'I');
        assert_eq!(s.applied().len(), 2);
        assert_eq!(s.applied()[1].sql, "SET work_mem = '2MB'");
        s.reset("work_mem");
        s.on_ready(b'I');
        assert_eq!(s.applied().len(), 1);
        s.reset_all();
        s.on_ready(b'I');
        assert!(s.applied().is_empty());
    }

    #[test]
    fn tracked_parameters_are_left_to_parameter_status() {
        let mut s = SessionState::default();
        s.set("timezone", "SET TIME ZONE 'UTC'");
        s.on_ready(b'I');
        assert!(s.applied().is_empty());
    }

    #[test]
    fn replay_resets_first_when_the_server_carries_someone_elses_settings() {
        let a = Setting {
            name: "search_path".into(),
            sql: "SET search_path = a".into(),
        };
        assert_eq!(replay_query(&[], &[]), None);
        assert_eq!(
            replay_query(std::slice::from_ref(&a), std::slice::from_ref(&a)),
            None
        );
        assert_eq!(
            replay_query(&[], std::slice::from_ref(&a)).as_deref(),
            Some("SET search_path = a;")
        );
        assert_eq!(
            replay_query(&[a], &[]).as_deref(),
            Some("RESET SESSION AUTHORIZATION; RESET ALL;")
        );
    }
}
