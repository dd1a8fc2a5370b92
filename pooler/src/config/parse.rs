//! Turns lexed ini lines into a [`Config`], section by section.
//!
//! Policy, in PgBouncer's footsteps where it has one: a bad value, an unknown section or an
//! unknown parameter inside a database or user entry is an error; an unknown `[pgbouncer]`
//! key, a PgBouncer feature weir lacks, or a key set twice (the later value wins) is a
//! warning. Where each key was set is remembered so cross-field errors can point at it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::database::{DatabaseEntry, UserEntry};
use super::error::{ConfigError, ConfigWarning};
use super::ini::{IniLine, LineKind};
use super::peers::{parse_peer_id, PeerEntry};
use super::settings::{is_unsupported_key, Settings, Support};
use super::validate::ADMIN_DATABASE;
use super::Config;

/// The sections weir reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Section {
    Pgbouncer,
    Databases,
    Users,
    Peers,
    Redis,
}

/// Where each (section, key) was last set.
pub(crate) type Locations = HashMap<(Section, String), (PathBuf, usize)>;

/// The result of reading all lines, before cross-field validation.
pub(crate) struct Built {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
    pub locations: Locations,
}

/// Which section the lines being read belong to.
enum Current {
    /// No section header seen yet.
    Nothing,
    /// A section weir reads.
    Known(Section),
}

/// Builds a config from `lines`; `main_file` is named in errors about the whole file.
pub(crate) fn build(lines: Vec<IniLine>, main_file: &Path) -> Result<Built, ConfigError> {
    let mut config = Config::default();
    let mut warnings = Vec::new();
    let mut locations = Locations::new();
    let mut current = Current::Nothing;
    let mut saw_main_section = false;

    for IniLine { file, line, kind } in lines {
        let (key, value) = match kind {
            LineKind::Section(name) => {
                current = match name.to_ascii_lowercase().as_str() {
                    "pgbouncer" => {
                        saw_main_section = true;
                        Current::Known(Section::Pgbouncer)
                    }
                    "databases" => Current::Known(Section::Databases),
                    "users" => Current::Known(Section::Users),
                    "peers" => Current::Known(Section::Peers),
                    "redis" => {
                        config.redis.get_or_insert_with(Default::default);
                        Current::Known(Section::Redis)
                    }
                    _ => {
                        return Err(ConfigError::at(
                            &file,
                            line,
                            None,
                            format!(
                                "unknown section [{name}]; expected [databases], [users], \
                                 [peers], [redis] or [pgbouncer]"
                            ),
                        ))
                    }
                };
                continue;
            }
            LineKind::Entry { key, value } => (key, value),
            // Includes were expanded by the lexer; one left here is a caller bug, and
            // ignoring it would silently drop configuration.
            LineKind::Include(_) => {
                return Err(ConfigError::at(&file, line, None, "unexpanded %include"))
            }
        };
        let section = match current {
            Current::Nothing => {
                return Err(ConfigError::at(
                    &file,
                    line,
                    Some(&key),
                    "setting outside of any section; put it under [pgbouncer], [databases] \
                     or [users]",
                ))
            }
            Current::Known(section) => section,
        };
        let key = match section {
            Section::Pgbouncer | Section::Redis => key.to_ascii_lowercase(),
            Section::Databases | Section::Users | Section::Peers => key,
        };
        let error = |message: String| ConfigError::at(&file, line, Some(&key), message);
        let mut warn = |message: String| {
            warnings.push(ConfigWarning::at(&file, line, Some(&key), message));
        };
        let ignored = match section {
            Section::Pgbouncer => match config.pgbouncer.apply(&key, &value) {
                Some(result) => {
                    result.map_err(|e| error(e.0))?;
                    // A default value asks for nothing weir lacks, so it stays quiet.
                    if let Some(Support::Ignored(why)) = Settings::support(&key) {
                        let default = Settings::default().render_value(&key);
                        if config.pgbouncer.render_value(&key) != default {
                            warn(ignored_setting(why));
                        }
                    }
                    Vec::new()
                }
                None => {
                    warn(if is_unsupported_key(&key) {
                        "not supported by weir, ignored".to_owned()
                    } else {
                        "unknown setting, ignored".to_owned()
                    });
                    continue;
                }
            },
            Section::Databases => {
                if key == ADMIN_DATABASE {
                    return Err(error(
                        "the name \"pgbouncer\" is reserved for the admin console".to_owned(),
                    ));
                }
                let parsed = DatabaseEntry::parse_conn_string(&value).map_err(|e| error(e.0))?;
                config.databases.insert(key.clone(), parsed.entry);
                parsed.ignored
            }
            Section::Users => {
                let parsed = UserEntry::parse_conn_string(&value).map_err(|e| error(e.0))?;
                config.users.insert(key.clone(), parsed.entry);
                parsed.ignored
            }
            Section::Redis => {
                let redis = config.redis.get_or_insert_with(Default::default);
                match redis.apply(&key, &value) {
                    Some(result) => result.map_err(|e| error(e.0))?,
                    None => {
                        warn("unknown [redis] setting, ignored".to_owned());
                        continue;
                    }
                }
                Vec::new()
            }
            Section::Peers => {
                let id = parse_peer_id(&key).map_err(|e| error(e.0))?;
                let entry = PeerEntry::parse_conn_string(&value)
                    .map_err(|e| error(format!("peer {id}: {}", e.0)))?;
                config.peers.insert(id, entry);
                Vec::new()
            }
        };
        for param in ignored {
            warn(format!(
                "parameter {param} is not supported by weir, ignored"
            ));
        }
        let previous = locations.insert((section, key.clone()), (file.clone(), line));
        if let Some((first_file, first_line)) = previous {
            warn(format!(
                "set more than once (also at {}:{first_line}); the later value wins",
                first_file.display()
            ));
        }
    }

    if !saw_main_section {
        return Err(ConfigError::in_file(
            main_file,
            "missing [pgbouncer] section",
        ));
    }
    Ok(Built {
        config,
        warnings,
        locations,
    })
}

/// The warning for a `[pgbouncer]` setting weir parses but does not act on.
pub(crate) fn ignored_setting(why: &str) -> String {
    format!("not supported by weir, ignored ({why})")
}
