//! Password rotation with overlap: when a reload changes a user's secret, the previous one
//! keeps logging clients in for `auth_rotation_grace`, and every change is a new credential
//! generation (shown in SHOW USERS and the metrics). The grace in force is what counts, so a
//! reload that lowers it (to 0) ends the overlap of earlier rotations too.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Secret;

/// A user's secrets that no longer are in the auth file but still log in until a deadline.
#[derive(Debug, Default, Clone)]
struct History {
    /// 1 for the secret the pooler started with (or the first one seen), +1 per change.
    generation: u64,
    /// Replaced secrets, newest last, each with when it was replaced.
    previous: Vec<(Secret, Instant)>,
}

/// Credential generations and the secrets still in their grace, per user.
#[derive(Debug, Default)]
pub struct Rotations {
    users: HashMap<String, History>,
}

impl Rotations {
    /// Starts generation 1 for every user of `secrets`.
    pub fn new(secrets: &HashMap<String, Secret>) -> Rotations {
        let users = secrets
            .keys()
            .map(|u| {
                let h = History {
                    generation: 1,
                    previous: Vec::new(),
                };
                (u.clone(), h)
            })
            .collect();
        Rotations { users }
    }

    /// Takes in the auth file's secrets after a reload at `now`: a user whose secret changed
    /// moves to a new generation and keeps the old secret for `grace`; a user taken out of
    /// the file is revoked at once; a secret whose grace has ended is forgotten. Returns the
    /// users whose secret changed.
    pub fn update(
        &mut self,
        old: &HashMap<String, Secret>,
        new: &HashMap<String, Secret>,
        now: Instant,
        grace: Duration,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        let mut users: Vec<&String> = old.keys().chain(new.keys()).collect();
        users.sort();
        users.dedup();
        for user in users {
            let history = self.users.entry(user.clone()).or_default();
            history.previous.retain(|(_, at)| now < *at + grace);
            match (old.get(user), new.get(user)) {
                (Some(before), Some(after)) if after != before => {
                    history.generation += 1;
                    if !grace.is_zero() {
                        history.previous.push((before.clone(), now));
                    }
                    // A secret coming back is current again, not also a previous one.
                    history.previous.retain(|(s, _)| s != after);
                    changed.push(user.clone());
                }
                (None, Some(_)) => history.generation += 1,
                _ => {}
            }
        }
        self.users.retain(|u, _| new.contains_key(u));
        changed
    }

    /// The replaced secrets of `user` that still log in at `now` under `grace`, newest first.
    pub fn previous(&self, user: &str, now: Instant, grace: Duration) -> Vec<Secret> {
        let Some(history) = self.users.get(user) else {
            return Vec::new();
        };
        history
            .previous
            .iter()
            .rev()
            .filter(|(_, at)| now < *at + grace)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The credential generation of `user`'s current secret; 0 for a user never in the auth
    /// file.
    pub fn generation(&self, user: &str) -> u64 {
        self.users.get(user).map_or(0, |h| h.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> HashMap<String, Secret> {
        pairs
            .iter()
            .map(|(u, p)| (u.to_string(), Secret::Plain(p.to_string())))
            .collect()
    }

    #[test]
    fn a_replaced_secret_logs_in_until_its_grace_ends() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let v1 = secrets(&[("app", "old"), ("other", "x")]);
        let v2 = secrets(&[("app", "new"), ("other", "x")]);
        let mut r = Rotations::new(&v1);
        assert_eq!(r.generation("app"), 1);
        assert_eq!(r.update(&v1, &v2, t0, s(300)), vec!["app".to_string()]);
        assert_eq!(r.generation("app"), 2);
        assert_eq!(r.generation("other"), 1);
        assert_eq!(
            r.previous("app", t0, s(300)),
            vec![Secret::Plain("old".into())]
        );
        assert_eq!(
            r.previous("app", t0 + s(299), s(300)),
            vec![Secret::Plain("old".into())]
        );
        assert!(r.previous("app", t0 + s(300), s(300)).is_empty());
        assert!(r.previous("other", t0, s(300)).is_empty());
        // A reload that lowers the grace shortens the overlap already running.
        assert!(r.previous("app", t0 + s(10), s(5)).is_empty());
        assert_eq!(r.generation("nobody"), 0);
    }

    #[test]
    fn an_untouched_reload_changes_nothing_and_no_grace_keeps_nothing() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let v1 = secrets(&[("app", "old")]);
        let v2 = secrets(&[("app", "new")]);
        let mut r = Rotations::new(&v1);
        assert!(r.update(&v1, &v1, t0, s(300)).is_empty());
        assert_eq!(r.generation("app"), 1);
        r.update(&v1, &v2, t0, Duration::ZERO);
        assert_eq!(r.generation("app"), 2);
        assert!(r.previous("app", t0, s(300)).is_empty());
    }

    #[test]
    fn two_quick_rotations_keep_both_old_secrets_and_a_rollback_is_current_only() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let v1 = secrets(&[("app", "one")]);
        let v2 = secrets(&[("app", "two")]);
        let v3 = secrets(&[("app", "three")]);
        let mut r = Rotations::new(&v1);
        r.update(&v1, &v2, t0, s(60));
        r.update(&v2, &v3, t0 + s(10), s(60));
        assert_eq!(r.generation("app"), 3);
        let plain = |p: &str| Secret::Plain(p.into());
        assert_eq!(
            r.previous("app", t0 + s(20), s(60)),
            vec![plain("two"), plain("one")]
        );
        assert_eq!(r.previous("app", t0 + s(65), s(60)), vec![plain("two")]);
        // Rolling back to "two" makes it current; "three" is the one in its grace.
        r.update(&v3, &v2, t0 + s(20), s(60));
        assert_eq!(
            r.previous("app", t0 + s(20), s(60)),
            vec![plain("three"), plain("one")]
        );
    }

    #[test]
    fn a_removed_user_is_revoked_at_once_and_a_new_one_starts_at_one() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let v1 = secrets(&[("app", "pw")]);
        let mut r = Rotations::new(&v1);
        r.update(&v1, &HashMap::new(), t0, s(5));
        assert!(r.previous("app", t0, s(300)).is_empty());
        assert_eq!(r.generation("app"), 0);
        r.update(&HashMap::new(), &v1, t0, s(5));
        assert_eq!(r.generation("app"), 1);
    }
}
