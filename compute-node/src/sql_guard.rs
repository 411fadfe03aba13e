//! What SQL a client may run: nothing that could break durability or reach outside the volume.
//!
//! SQLite lets a connection turn off syncing (`PRAGMA synchronous=OFF`: the VFS then never sees
//! a commit, and an acknowledged transaction is silently lost), change journaling or locking,
//! write the schema table by hand, place files, attach other databases, write a copy of the
//! database anywhere (`VACUUM INTO`) or load native code. The checks run inside SQLite's
//! authorizer, which sees every statement as SQLite compiles it — whatever its case, comments or
//! place in a multi-statement string — plus one look at each statement for `VACUUM INTO`, which
//! the authorizer is not told of. Pragmas are an allow-list: read-only ones, and settings that
//! only change how this session's own SQL behaves; anything else is refused with SQLSTATE 42501
//! and a message that says what and why. The decisions are pure; `sql.rs` installs them.

use std::cell::RefCell;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Pragmas that only report (allowed with no value, or with the object they report on).
const REPORTING: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "compile_options",
    "database_list",
    "data_version",
    "freelist_count",
    "page_count",
    "stats",
];

/// Settings that may be read but not changed: the engine's durability, layout and memory depend
/// on them.
const READ_ONLY_SETTINGS: &[&str] = &[
    "page_size",
    "max_page_count",
    "cache_size",
    "journal_mode",
    "synchronous",
    "locking_mode",
    "encoding",
    "schema_version",
    "auto_vacuum",
    "busy_timeout",
    "temp_store",
    "mmap_size",
    "cache_spill",
    "secure_delete",
    "trusted_schema",
];

/// Settings a session may change: they shape its own SQL, not how data reaches storage.
const SESSION_SETTINGS: &[&str] = &[
    "foreign_keys",
    "defer_foreign_keys",
    "recursive_triggers",
    "case_sensitive_like",
    "reverse_unordered_selects",
    "automatic_index",
    "query_only",
    "legacy_alter_table",
    "user_version",
    "application_id",
    "optimize",
    "analysis_limit",
    "shrink_memory",
    "incremental_vacuum",
];

/// Functions that reach outside the volume or into the process.
const REFUSED_FUNCTIONS: &[&str] = &["load_extension", "fts3_tokenizer"];

/// Why a statement was refused: (SQLSTATE, message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refused(message: String) -> Refusal {
    Refusal {
        code: "42501",
        message,
    }
}

/// Whether `PRAGMA name` (`= value`, or `(value)`) may run.
pub fn pragma(name: &str, value: Option<&str>) -> Result<(), Refusal> {
    let name = name.to_ascii_lowercase();
    let n = name.as_str();
    if REPORTING.contains(&n) || SESSION_SETTINGS.contains(&n) {
        return Ok(());
    }
    if READ_ONLY_SETTINGS.contains(&n) {
        return match value {
            None => Ok(()),
            Some(v) => Err(refused(format!(
                "PRAGMA {n} = {v} is not allowed: logdb sets {n} itself, because syncing, \
                 journaling, locking, page layout and memory decide whether a commit is durable \
                 and what storage holds; reading it (PRAGMA {n}) is allowed"
            ))),
        };
    }
    Err(refused(format!(
        "PRAGMA {n} is not allowed: only pragmas that report (table_info, index_list, \
         integrity_check, ...) or change this session's own SQL (foreign_keys, user_version, \
         ...) may run; {n} could break durability, the schema's integrity or reach outside the \
         volume"
    )))
}

/// The decision for one authorizer callback.
pub fn authorize(action: &AuthAction<'_>) -> Result<(), Refusal> {
    match action {
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => pragma(pragma_name, *pragma_value),
        // A private temporary database (VACUUM attaches one to rebuild the volume's): like a
        // TEMP table, it never leaves the session.
        AuthAction::Attach { filename } if filename.is_empty() || *filename == ":memory:" => Ok(()),
        AuthAction::Attach { filename } => Err(refused(format!(
            "ATTACH {filename:?} is not allowed: a logdb session works on its volume only \
             (another database file would live outside storage, unreplicated)"
        ))),
        AuthAction::Function { function_name }
            if REFUSED_FUNCTIONS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(function_name)) =>
        {
            Err(refused(format!(
                "{function_name}() is not allowed: it reaches outside the volume, into the \
                 server process"
            )))
        }
        // SQLite names the file only when it is a plain literal: `ATTACH 'x' || ''`, `ATTACH ?1`
        // arrive without one — and anything the guard cannot read is refused.
        AuthAction::Unknown { code, .. } => Err(refused(format!(
            "this statement is not allowed: it asks for SQLite action {code} with arguments              logdb cannot check{}",
            if *code == rusqlite::ffi::SQLITE_ATTACH {
                " (ATTACH of a file named by an expression; a logdb session works on its                  volume only)"
            } else {
                ""
            }
        ))),
        _ => Ok(()),
    }
}

/// The statement-level check the authorizer cannot make: `VACUUM INTO` writes a copy of the
/// database to a file named by the client.
pub fn statement(sql: &str) -> Result<(), Refusal> {
    let words = words(sql);
    if words.first().is_some_and(|w| w == "VACUUM") && words.iter().any(|w| w == "INTO") {
        return Err(refused(
            "VACUUM INTO is not allowed: it writes a copy of the database to a file outside \
             the volume; take a copy with point-in-time restore instead"
                .into(),
        ));
    }
    Ok(())
}

/// The statement's keywords and names, upper-cased, without comments and string literals.
fn words(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b'[' => {
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(sql[start..i].to_ascii_uppercase());
            }
            _ => i += 1,
        }
    }
    out
}

thread_local! {
    /// The refusal of the statement being prepared on this thread (SQLite only says "not
    /// authorized"; `sql::map_error` takes this for the message).
    static LAST: RefCell<Option<Refusal>> = const { RefCell::new(None) };
}

/// The authorizer to install on a session's connection.
pub fn authorizer(ctx: AuthContext<'_>) -> Authorization {
    match authorize(&ctx.action) {
        Ok(()) => Authorization::Allow,
        Err(r) => {
            LAST.with(|l| *l.borrow_mut() = Some(r));
            Authorization::Deny
        }
    }
}

/// Forgets a refusal left on this thread (before a statement is prepared).
pub fn clear_refusal() {
    LAST.with(|l| l.borrow_mut().take());
}

/// The refusal behind the last "not authorized" on this thread.
pub fn take_refusal() -> Option<Refusal> {
    LAST.with(|l| l.borrow_mut().take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_decide_durability_are_read_only() {
        for p in [
            "synchronous",
            "journal_mode",
            "locking_mode",
            "mmap_size",
            "page_size",
        ] {
            assert!(pragma(p, None).is_ok(), "{p} can be read");
            let err = pragma(p, Some("OFF")).unwrap_err();
            assert_eq!(err.code, "42501");
            assert!(
                err.message.contains(&format!("PRAGMA {p} = OFF")),
                "{}",
                err.message
            );
        }
        assert!(pragma("SYNCHRONOUS", Some("0")).is_err(), "any case");
    }

    #[test]
    fn anything_not_on_the_lists_is_refused() {
        for p in [
            "writable_schema",
            "temp_store_directory",
            "data_store_directory",
            "wal_checkpoint",
            "journal_size_limit",
            "hard_heap_limit",
            "soft_heap_limit",
            "threads",
            "ignore_check_constraints",
            "fullfsync",
            "no_such_pragma",
        ] {
            assert!(pragma(p, None).is_err(), "{p}");
            assert!(pragma(p, Some("1")).is_err(), "{p} = 1");
        }
    }

    #[test]
    fn reporting_and_session_pragmas_run() {
        for (p, v) in [
            ("table_info", Some("t")),
            ("index_list", Some("t")),
            ("integrity_check", None),
            ("foreign_keys", Some("ON")),
            ("user_version", Some("7")),
            ("user_version", None),
        ] {
            assert!(pragma(p, v).is_ok(), "{p} {v:?}");
        }
    }

    #[test]
    fn vacuum_into_is_found_past_comments_and_case() {
        assert!(statement("VACUUM").is_ok());
        assert!(statement("vacuum main").is_ok());
        assert!(statement("SELECT 'VACUUM INTO x'").is_ok());
        for sql in [
            "VACUUM INTO '/tmp/copy.db'",
            "vacuum main into 'file:/tmp/x?vfs=unix'",
            "/* hi */ VaCuUm -- there\n INTO 'x'",
        ] {
            let err = statement(sql).unwrap_err();
            assert!(err.message.starts_with("VACUUM INTO"), "{sql}");
        }
        // A name that merely contains the word does not count.
        assert!(statement("VACUUM \"into\"").is_ok());
    }
}
