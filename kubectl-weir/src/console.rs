//! `console`: which user logs in to the pods' admin console, and one table from every pod's
//! answer.

use std::collections::BTreeMap;

use anyhow::bail;
use weir_pooler::config::{secret_kind, SecretKind, Settings};

use crate::table::Table;

/// The admin console's database name.
pub const ADMIN_DATABASE: &str = "pgbouncer";

/// The console login: the first of the pool's `admin_users`, then `stats_users` (parsed by
/// the pooler's own settings code), whose clear-text password is in the operator's auth file.
pub fn login(
    pool: &str,
    parameters: Option<&BTreeMap<String, String>>,
    userlist: &BTreeMap<String, String>,
) -> anyhow::Result<(String, String)> {
    let mut settings = Settings::default();
    for key in ["admin_users", "stats_users"] {
        if let Some(value) = parameters.and_then(|p| p.get(key)) {
            if let Err(e) = settings.set(key, value) {
                bail!("spec.parameters.{key}: {}", e.0);
            }
        }
    }
    let candidates = settings.admin_users.iter().chain(&settings.stats_users);
    for user in candidates {
        if let Some(password) = userlist.get(user) {
            if secret_kind(password) == SecretKind::Plain {
                return Ok((user.clone(), password.clone()));
            }
        }
    }
    bail!(
        "no console user: ConnectionPool {pool} names none of its users in \
         spec.parameters.stats_users (SHOW commands) or admin_users (every command); e.g. \
         kubectl patch cpool {pool} --type=merge -p '{{\"spec\":{{\"parameters\":{{\"stats_users\":\"USER\"}}}}}}'"
    )
}

/// One pod's answer: the columns and rows of the last result set, and the command tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Column names (empty for commands without rows).
    pub columns: Vec<String>,
    /// The rows; NULL prints empty.
    pub rows: Vec<Vec<Option<String>>>,
    /// The CommandComplete tags (`SHOW`, `RELOAD`, …).
    pub tags: Vec<String>,
}

/// Every pod's answer merged into one table, a `pod` column first; pods whose columns differ
/// from the first answer's, and pods that failed, are listed below it.
pub fn merge(answers: &[(String, Result<Answer, String>)]) -> String {
    let columns = answers
        .iter()
        .find_map(|(_, a)| a.as_ref().ok().filter(|a| !a.columns.is_empty()))
        .map(|a| a.columns.clone());
    let mut out = String::new();
    let mut notes = Vec::new();
    match columns {
        Some(columns) => {
            let header: Vec<String> = std::iter::once("pod".to_owned())
                .chain(columns.iter().cloned())
                .collect();
            let mut table = Table::new(&header);
            for (pod, answer) in answers {
                match answer {
                    Ok(a) if a.columns == columns => {
                        for row in &a.rows {
                            table.row(
                                std::iter::once(pod.clone())
                                    .chain(row.iter().map(|c| c.clone().unwrap_or_default()))
                                    .collect(),
                            );
                        }
                    }
                    Ok(a) => notes.push(format!(
                        "{pod}: different columns ({}), left out",
                        a.columns.join(", ")
                    )),
                    Err(e) => notes.push(format!("{pod}: {e}")),
                }
            }
            out.push_str(&table.render());
        }
        None => {
            for (pod, answer) in answers {
                match answer {
                    Ok(a) => out.push_str(&format!("{pod}: {}\n", a.tags.join(", "))),
                    Err(e) => notes.push(format!("{pod}: {e}")),
                }
            }
        }
    }
    for note in notes {
        out.push_str(&format!("error: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn userlist() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app".to_owned(), "app-secret".to_owned()),
            (
                "hashed".to_owned(),
                "md5abcdefabcdefabcdefabcdefabcdefab".to_owned(),
            ),
            ("ops".to_owned(), "ops-secret".to_owned()),
        ])
    }

    #[test]
    fn admin_users_come_before_stats_users() {
        let params = BTreeMap::from([
            ("stats_users".to_owned(), "app".to_owned()),
            ("admin_users".to_owned(), "nobody, ops".to_owned()),
        ]);
        assert_eq!(
            login("p", Some(&params), &userlist()).expect("login"),
            ("ops".to_owned(), "ops-secret".to_owned())
        );
    }

    #[test]
    fn users_without_a_clear_text_password_are_skipped() {
        let params = BTreeMap::from([("stats_users".to_owned(), "hashed,app".to_owned())]);
        assert_eq!(
            login("p", Some(&params), &userlist()).expect("login").0,
            "app"
        );
    }

    #[test]
    fn no_console_user_says_how_to_name_one() {
        let e = login("orders", None, &userlist()).expect_err("no user");
        assert!(
            e.to_string().contains("kubectl patch cpool orders --type=merge -p '{\"spec\":{\"parameters\":{\"stats_users\":\"USER\"}}}'"),
            "{e}"
        );
    }

    fn answer(rows: &[&[&str]]) -> Answer {
        Answer {
            columns: vec!["database".into(), "user".into(), "cl_active".into()],
            rows: rows
                .iter()
                .map(|r| r.iter().map(|c| Some((*c).to_owned())).collect())
                .collect(),
            tags: vec!["SHOW".into()],
        }
    }

    #[test]
    fn rows_of_every_pod_are_merged_under_one_header() {
        let answers = vec![
            (
                "orders-a".to_owned(),
                Ok(answer(&[
                    &["orders", "app", "2"],
                    &["pgbouncer", "pgbouncer", "1"],
                ])),
            ),
            (
                "orders-b".to_owned(),
                Ok(answer(&[&["orders", "app", "10"]])),
            ),
            ("orders-c".to_owned(), Err("port-forward failed".to_owned())),
        ];
        assert_eq!(
            merge(&answers),
            "POD        DATABASE    USER        CL_ACTIVE\n\
             orders-a   orders      app         2\n\
             orders-a   pgbouncer   pgbouncer   1\n\
             orders-b   orders      app         10\n\
             error: orders-c: port-forward failed\n"
        );
    }

    #[test]
    fn commands_without_rows_show_each_pods_tag() {
        let done = Answer {
            tags: vec!["RELOAD".into()],
            ..Answer::default()
        };
        let answers = vec![
            ("a".to_owned(), Ok(done.clone())),
            ("b".to_owned(), Ok(done)),
        ];
        assert_eq!(merge(&answers), "a: RELOAD\nb: RELOAD\n");
    }
}
