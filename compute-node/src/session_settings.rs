//! `SET`, `RESET` and `SHOW` of PostgreSQL run-time settings, answered by the server (SQLite has
//! no such statements): `statement_timeout` and `idle_in_transaction_session_timeout` bound this
//! session as in PostgreSQL; other settings drivers send at connect time (`application_name`,
//! `extra_float_digits`, `DateStyle`, ...) are kept and shown back, and change nothing.
//! Parsing and the settings are pure; `pg_server` applies them.

use std::collections::BTreeMap;
use std::time::Duration;

/// One settings statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Set {
        name: String,
        value: String,
    },
    Reset {
        name: String,
    },
    Show {
        name: String,
    },
    /// A settings statement followed by others in one query string.
    Combined,
}

/// Whether `sql` holds more than one statement (a `;` outside quotes with text after it).
fn several_statements(sql: &str) -> bool {
    let mut quote = None;
    for (i, c) in sql.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == ';' => return !sql[i + 1..].trim().is_empty(),
            None => {}
        }
    }
    false
}

/// `Some` when `sql` is a single `SET`/`RESET`/`SHOW` of a setting (`SET LOCAL`/`SESSION` as
/// `SET`; `SET TIME ZONE x` as `timezone`). `SET TRANSACTION ...` is SQL for SQLite to refuse.
/// A settings statement with others after it in one string is `Command::Combined`: refused
/// whole, so nothing after it is silently dropped.
pub fn parse(sql: &str) -> Option<Command> {
    if several_statements(sql) {
        let first = sql.split(';').next().unwrap_or("");
        return parse_one(first).map(|_| Command::Combined);
    }
    parse_one(sql)
}

fn parse_one(sql: &str) -> Option<Command> {
    let s = sql.trim().trim_end_matches(';').trim();
    let mut words = s.split_whitespace();
    let verb = words.next()?.to_ascii_uppercase();
    let rest: Vec<&str> = words.collect();
    match verb.as_str() {
        "SET" => {
            let mut rest = rest.as_slice();
            if rest.first().is_some_and(|w| {
                w.eq_ignore_ascii_case("SESSION") || w.eq_ignore_ascii_case("LOCAL")
            }) {
                rest = &rest[1..];
            }
            let joined = rest.join(" ");
            if joined.to_ascii_uppercase().starts_with("TRANSACTION")
                || joined.to_ascii_uppercase().starts_with("CHARACTERISTICS")
            {
                return None;
            }
            if joined.to_ascii_uppercase().starts_with("TIME ZONE ") {
                return Some(Command::Set {
                    name: "timezone".into(),
                    value: unquote(joined[10..].trim()),
                });
            }
            let (name, value) = match joined.find('=') {
                Some(i) => (
                    joined[..i].trim().to_string(),
                    joined[i + 1..].trim().to_string(),
                ),
                None => {
                    let (n, v) = joined.split_once(char::is_whitespace)?;
                    let v = v.trim();
                    let v = v.strip_prefix("TO ").or_else(|| v.strip_prefix("to "))?;
                    (n.to_string(), v.trim().to_string())
                }
            };
            valid_name(&name).then(|| Command::Set {
                name: name.to_ascii_lowercase(),
                value: unquote(&value),
            })
        }
        "RESET" if rest.len() == 1 && valid_name(rest[0]) => Some(Command::Reset {
            name: rest[0].to_ascii_lowercase(),
        }),
        "SHOW" if rest.len() == 1 && valid_name(rest[0]) => Some(Command::Show {
            name: rest[0].to_ascii_lowercase(),
        }),
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    v.to_string()
}

/// A PostgreSQL duration setting: a number of milliseconds, or with a unit (`us`, `ms`, `s`,
/// `min`, `h`, `d`); 0 turns it off (`None`).
pub fn duration(name: &str, value: &str) -> Result<Option<Duration>, String> {
    let v = value.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid value for parameter \"{name}\": \"{value}\""))?;
    let ms = match unit.trim() {
        "" | "ms" => number,
        "us" => number / 1000.0,
        "s" => number * 1000.0,
        "min" => number * 60_000.0,
        "h" => number * 3_600_000.0,
        "d" => number * 86_400_000.0,
        _ => {
            return Err(format!(
                "invalid value for parameter \"{name}\": \"{value}\" (valid units: us, ms, s, min, h, d)"
            ))
        }
    };
    if !(0.0..=i32::MAX as f64).contains(&ms) {
        return Err(format!(
            "{ms} ms is outside the valid range for parameter \"{name}\" (0 .. 2147483647)"
        ));
    }
    Ok((ms >= 1.0).then(|| Duration::from_millis(ms as u64)))
}

fn show_duration(d: Option<Duration>) -> String {
    match d {
        None => "0".into(),
        Some(d) if d.as_millis() % 1000 == 0 => format!("{}s", d.as_secs()),
        Some(d) => format!("{}ms", d.as_millis()),
    }
}

/// One session's settings.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub statement_timeout: Option<Duration>,
    /// `None` until set: the server's default applies.
    pub idle_in_transaction: Option<Option<Duration>>,
    other: BTreeMap<String, String>,
}

/// What a settings statement answers: a command tag, or one row of `SHOW`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Tag(&'static str),
    Show { name: String, value: String },
}

impl Settings {
    /// Applies `cmd`; `default_idle` is the server's idle-in-transaction timeout (for SHOW and
    /// RESET).
    pub fn apply(
        &mut self,
        cmd: Command,
        default_idle: Option<Duration>,
    ) -> Result<Answer, String> {
        match cmd {
            Command::Set { name, value } => {
                match name.as_str() {
                    "statement_timeout" => self.statement_timeout = duration(&name, &value)?,
                    "idle_in_transaction_session_timeout" => {
                        self.idle_in_transaction = Some(duration(&name, &value)?)
                    }
                    _ => {
                        self.other.insert(name, value);
                    }
                }
                Ok(Answer::Tag("SET"))
            }
            Command::Reset { name } => {
                match name.as_str() {
                    "statement_timeout" => self.statement_timeout = None,
                    "idle_in_transaction_session_timeout" => self.idle_in_transaction = None,
                    "all" => *self = Settings::default(),
                    _ => {
                        self.other.remove(&name);
                    }
                }
                Ok(Answer::Tag("RESET"))
            }
            Command::Combined => Err(
                "SET, RESET and SHOW must be sent alone, not with other statements in one query \
                 string (nothing was run)"
                    .into(),
            ),
            Command::Show { name } => {
                let value = match name.as_str() {
                    "statement_timeout" => show_duration(self.statement_timeout),
                    "idle_in_transaction_session_timeout" => {
                        show_duration(self.idle_in_transaction.unwrap_or(default_idle))
                    }
                    "server_version" => crate::pg_server::server_version(),
                    "transaction_isolation" => "serializable".into(),
                    _ => match self.other.get(&name) {
                        Some(v) => v.clone(),
                        None => {
                            return Err(format!("unrecognized configuration parameter \"{name}\""))
                        }
                    },
                };
                Ok(Answer::Show { name, value })
            }
        }
    }

    /// The idle-in-transaction timeout in force: the session's, never longer than the
    /// server's (which exists so no session can hold every other writer back for ever).
    pub fn idle_timeout(&self, default_idle: Option<Duration>) -> Option<Duration> {
        match (self.idle_in_transaction, default_idle) {
            (None, d) | (Some(None), d) => d,
            (Some(Some(s)), Some(d)) => Some(s.min(d)),
            (Some(Some(s)), None) => Some(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_reset_and_show_parse_as_in_postgresql() {
        let set = |n: &str, v: &str| {
            Some(Command::Set {
                name: n.into(),
                value: v.into(),
            })
        };
        assert_eq!(
            parse("SET statement_timeout = 500"),
            set("statement_timeout", "500")
        );
        assert_eq!(
            parse("set Statement_Timeout TO '2s';"),
            set("statement_timeout", "2s")
        );
        assert_eq!(
            parse("SET SESSION application_name = 'x'"),
            set("application_name", "x")
        );
        assert_eq!(parse("SET TIME ZONE 'UTC'"), set("timezone", "UTC"));
        assert_eq!(parse("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), None);
        assert_eq!(
            parse("RESET statement_timeout"),
            Some(Command::Reset {
                name: "statement_timeout".into()
            })
        );
        assert_eq!(
            parse("show DateStyle"),
            Some(Command::Show {
                name: "datestyle".into()
            })
        );
        assert_eq!(parse("UPDATE t SET a = 1"), None);
        assert_eq!(
            parse("SET statement_timeout = 0; CREATE TABLE t(x)"),
            Some(Command::Combined)
        );
        assert_eq!(parse("SELECT 1; SET statement_timeout = 0"), None);
        assert_eq!(
            parse("SET application_name = 'a;b'"),
            set("application_name", "a;b")
        );
        assert_eq!(
            parse("SET statement_timeout = 5;"),
            set("statement_timeout", "5")
        );
        assert_eq!(parse("SELECT 1"), None);
    }

    #[test]
    fn durations_take_postgresql_units() {
        assert_eq!(
            duration("t", "250").unwrap(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(duration("t", "2s").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(
            duration("t", "1min").unwrap(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(duration("t", "0").unwrap(), None);
        assert!(duration("t", "soon").unwrap_err().contains("invalid value"));
        assert!(duration("t", "5 fortnights").is_err());
        assert!(duration("t", "3000000000").is_err());
    }

    #[test]
    fn settings_show_what_was_set() {
        let mut s = Settings::default();
        let idle = Some(Duration::from_secs(60));
        s.apply(parse("SET statement_timeout = '1500ms'").unwrap(), idle)
            .unwrap();
        assert_eq!(s.statement_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(
            s.apply(parse("SHOW statement_timeout").unwrap(), idle)
                .unwrap(),
            Answer::Show {
                name: "statement_timeout".into(),
                value: "1500ms".into()
            }
        );
        assert_eq!(s.idle_timeout(idle), idle);
        s.apply(
            parse("SET idle_in_transaction_session_timeout = 0").unwrap(),
            idle,
        )
        .unwrap();
        assert_eq!(s.idle_timeout(idle), idle, "cannot switch the server's off");
        let set_idle = |s: &mut Settings, v: &str| {
            let sql = format!("SET idle_in_transaction_session_timeout = {v}");
            s.apply(parse(&sql).unwrap(), idle).unwrap();
        };
        set_idle(&mut s, "'2h'");
        assert_eq!(s.idle_timeout(idle), idle, "nor lengthen it");
        set_idle(&mut s, "500");
        assert_eq!(s.idle_timeout(idle), Some(Duration::from_millis(500)));
        assert_eq!(s.idle_timeout(None), Some(Duration::from_millis(500)));
        s.apply(parse("SET extra_float_digits = 3").unwrap(), idle)
            .unwrap();
        assert!(s.apply(parse("SHOW nope").unwrap(), idle).is_err());
        s.apply(parse("RESET ALL").unwrap(), idle).unwrap();
        assert_eq!(s.statement_timeout, None);
        assert_eq!(s.idle_timeout(idle), idle);
    }
}
