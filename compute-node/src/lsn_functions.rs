//! The LSN functions a client calls to read its own writes on a replica: on the writer
//! `SELECT logdb_commit_lsn()` (this session's last commit), on a replica
//! `SELECT logdb_wait_lsn(lsn [, timeout_ms])` (waits until the read point reaches it), and
//! `SELECT logdb_read_point()` on either (VDL on the writer). They are answered by the server,
//! outside SQLite: waiting inside a read transaction would hold back the very feed it waits for.

use std::time::Duration;

/// A call of one of the LSN functions, parsed from the statement text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LsnCall {
    CommitLsn,
    ReadPoint,
    WaitLsn { lsn: u64, timeout: Duration },
}

/// How long `logdb_wait_lsn` waits unless told.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// `Some` when `sql` is exactly `SELECT <function>(args)` (any case, optional `;`).
pub fn parse(sql: &str) -> Option<Result<LsnCall, String>> {
    let s = sql.trim().trim_end_matches(';').trim();
    let lower = s.to_ascii_lowercase();
    let rest = lower.strip_prefix("select")?.trim_start();
    if !rest.starts_with("logdb_") {
        return None;
    }
    let open = rest.find('(')?;
    let name = rest[..open].trim();
    let args = rest[open + 1..].strip_suffix(')')?;
    let args: Vec<&str> = args
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let num = |a: &str, what: &str| {
        a.parse::<u64>()
            .map_err(|_| format!("{name}: {what} must be a non-negative integer, not {a:?}"))
    };
    Some(match (name, args.as_slice()) {
        ("logdb_commit_lsn", []) => Ok(LsnCall::CommitLsn),
        ("logdb_read_point", []) => Ok(LsnCall::ReadPoint),
        ("logdb_wait_lsn", [lsn]) => num(lsn, "the LSN").map(|lsn| LsnCall::WaitLsn {
            lsn,
            timeout: DEFAULT_WAIT,
        }),
        ("logdb_wait_lsn", [lsn, ms]) => num(lsn, "the LSN").and_then(|lsn| {
            num(ms, "the timeout (ms)").map(|ms| LsnCall::WaitLsn {
                lsn,
                timeout: Duration::from_millis(ms),
            })
        }),
        ("logdb_commit_lsn" | "logdb_read_point" | "logdb_wait_lsn", _) => Err(format!(
            "{name}: wrong arguments (logdb_commit_lsn(), logdb_read_point(), logdb_wait_lsn(lsn [, timeout_ms]))"
        )),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_recognised() {
        assert_eq!(
            parse("SELECT logdb_commit_lsn()"),
            Some(Ok(LsnCall::CommitLsn))
        );
        assert_eq!(
            parse(" select LOGDB_READ_POINT() ; "),
            Some(Ok(LsnCall::ReadPoint))
        );
        assert_eq!(
            parse("SELECT logdb_wait_lsn(42, 500)"),
            Some(Ok(LsnCall::WaitLsn {
                lsn: 42,
                timeout: Duration::from_millis(500)
            }))
        );
        assert_eq!(
            parse("select logdb_wait_lsn(7)"),
            Some(Ok(LsnCall::WaitLsn {
                lsn: 7,
                timeout: DEFAULT_WAIT
            }))
        );
        assert!(parse("SELECT logdb_wait_lsn(x)")
            .unwrap()
            .unwrap_err()
            .contains("the LSN must be"));
        assert!(parse("SELECT logdb_commit_lsn(1)").unwrap().is_err());
        assert_eq!(parse("SELECT 1"), None);
        assert_eq!(parse("SELECT logdb_other()"), None);
        assert_eq!(parse("SELECT * FROM logdb_table"), None);
    }
}
