//! Runs SQL on a SQLite connection opened on the `logdb` VFS and shapes the outcome for the wire:
//! rows with column types, or a PostgreSQL command tag; errors with SQLSTATE codes.
//!
//! Dialect notes: the SQL is SQLite's. `$1`-style parameters are accepted (rewritten to `?1`).
//! `BEGIN` starts an IMMEDIATE transaction: the single writer lock is taken up front, so two
//! sessions can never deadlock upgrading a read lock, and a waiting session queues instead of
//! failing.

use std::sync::Arc;

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{ffi, Connection, OpenFlags};

use crate::vfs::{self, Engine, VFS_NAME};

/// How a result column is presented to PostgreSQL clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColType {
    Int,
    Float,
    Text,
    Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Rows {
        columns: Vec<(String, ColType)>,
        rows: Vec<Vec<Value>>,
    },
    Done {
        tag: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    /// SQLSTATE
    pub code: &'static str,
    pub message: String,
}

impl SqlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        SqlError {
            code,
            message: message.into(),
        }
    }
}

/// SQLSTATE of a statement cancelled by `statement_timeout` (query_canceled).
pub const STATEMENT_TIMEOUT: &str = "57014";

/// Opens a connection to the volume registered as `name`.
pub fn open(name: &str, engine: &Arc<Engine>, cache_pages: i64) -> Result<Connection, SqlError> {
    let flags = if engine.replica().is_some() {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let mut conn = Connection::open_with_flags_and_vfs(name, flags, VFS_NAME)
        .map_err(|e| map_error(e, engine))?;
    conn.busy_handler(Some(vfs::busy_handler))
        .map_err(|e| map_error(e, engine))?;
    let page_size = engine.page_size;
    conn.execute_batch(&format!(
        "PRAGMA page_size = {page_size}; PRAGMA journal_mode = MEMORY; PRAGMA cache_size = {cache_pages}; PRAGMA synchronous = FULL;"
    ))
    .map_err(|e| map_error(e, engine))?;
    let actual: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|e| map_error(e, engine))?;
    if actual as usize != page_size {
        return Err(SqlError::new(
            "XX000",
            format!("volume holds a database of page size {actual}, the layout says {page_size}"),
        ));
    }
    // From here on the client's SQL runs: only what cannot break durability or leave the volume
    // (defensive mode: no raw writes to shadow tables or the schema, whatever else slips by).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(|e| map_error(e, engine))?;
    conn.authorizer(Some(crate::sql_guard::authorizer))
        .map_err(|e| map_error(e, engine))?;
    Ok(conn)
}

/// Rewrites `$N` parameters to SQLite's `?N`, leaving string literals and identifiers alone.
pub fn rewrite_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(ch) = chars.next() {
        match quote {
            Some(q) => {
                out.push(ch);
                if ch == q {
                    quote = None;
                }
            }
            None if ch == '\'' || ch == '"' => {
                quote = Some(ch);
                out.push(ch);
            }
            None if ch == '$' && chars.peek().is_some_and(|c| c.is_ascii_digit()) => out.push('?'),
            None => out.push(ch),
        }
    }
    out
}

/// Whether `sql` may write or open a transaction (anything but a plain read).
pub fn may_write(sql: &str) -> bool {
    !matches!(
        first_word(sql).as_str(),
        "SELECT" | "VALUES" | "EXPLAIN" | "SHOW" | ""
    )
}

fn first_word(sql: &str) -> String {
    sql.trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// The PostgreSQL command tag of a statement that returned no rows.
fn tag(sql: &str, changes: u64) -> String {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
        .collect();
    match words.first().map(String::as_str).unwrap_or("") {
        "INSERT" => format!("INSERT 0 {changes}"),
        "UPDATE" | "DELETE" => format!("{} {changes}", words[0]),
        "BEGIN" | "START" => "BEGIN".into(),
        "COMMIT" | "END" => "COMMIT".into(),
        "ROLLBACK" => "ROLLBACK".into(),
        "CREATE" | "DROP" | "ALTER" => words.join(" "),
        w => w.to_string(),
    }
}

/// The column's type from its declared type, else (expressions) from a sample value, else from
/// the expression: `count(...)` is an integer, anything else text.
pub fn col_type(name: &str, decl: Option<&str>, sample: Option<&Value>) -> ColType {
    if let Some(d) = decl {
        let d = d.to_ascii_uppercase();
        if d.contains("INT") {
            return ColType::Int;
        }
        if d.contains("REAL")
            || d.contains("FLOA")
            || d.contains("DOUB")
            || d.contains("NUMERIC")
            || d.contains("DECIMAL")
        {
            return ColType::Float;
        }
        if d.contains("BLOB") || d.contains("BYTEA") {
            return ColType::Bytes;
        }
        return ColType::Text;
    }
    match sample {
        Some(Value::Integer(_)) => ColType::Int,
        Some(Value::Real(_)) => ColType::Float,
        Some(Value::Blob(_)) => ColType::Bytes,
        Some(_) => ColType::Text,
        None if name.to_ascii_lowercase().starts_with("count(") => ColType::Int,
        None => ColType::Text,
    }
}

/// Runs every statement of `sql` (several may be separated by `;` when `params` is empty).
/// How result columns without a declared type are typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typing {
    /// From the first non-null value (text-format results: what psql shows).
    Sampled,
    /// From declarations only, so the types match what Describe announced before execution.
    Declared,
}

/// A streamed statement's answer on its way to the client: its columns first (typed from the
/// first batch), then its rows in batches, each with the highest not-yet-durable commit LSN
/// its rows were read from (what must be durable before they are sent).
#[derive(Debug)]
pub enum Streamed {
    Columns(Vec<(String, ColType)>),
    Rows {
        rows: Vec<Vec<Value>>,
        read_lsn: logdb_types::Lsn,
    },
}

/// A batch of a streamed result holds at most this many rows, or this many bytes.
pub const STREAM_BATCH_ROWS: usize = 256;
pub const STREAM_BATCH_BYTES: usize = 256 << 10;

/// Whether `sql` is one statement (and nothing after it but blanks and comments): only then
/// can its rows go to the client as they come. Preparing has no side effects.
fn single_statement(conn: &Connection, sql: &str) -> bool {
    let mut batch = rusqlite::Batch::new(conn, sql);
    matches!(batch.next(), Ok(Some(_))) && matches!(batch.next(), Ok(None))
}

/// The result columns of a statement: names with types from their declarations (and, with
/// `Typing::Sampled`, from the first non-null value among `rows`).
fn result_columns(
    names: Vec<(String, Option<String>)>,
    rows: &[Vec<Value>],
    typing: Typing,
) -> Vec<(String, ColType)> {
    names
        .into_iter()
        .enumerate()
        .map(|(i, (name, decl))| {
            let sample = rows
                .iter()
                .map(|r: &Vec<Value>| &r[i])
                .find(|v| typing == Typing::Sampled && **v != Value::Null);
            let t = col_type(&name, decl.as_deref(), sample);
            (name, t)
        })
        .collect()
}

fn too_large(max_result_bytes: usize, rows: usize) -> SqlError {
    SqlError::new(
        RESULT_TOO_LARGE,
        format!(
            "the result is too large: more than {max_result_bytes} bytes after {rows} rows (the server's --max-result-bytes); select fewer rows or columns (LIMIT/OFFSET, or a WHERE on a key)"
        ),
    )
}

/// SQLSTATE of a result larger than the server buffers (`program_limit_exceeded`).
pub const RESULT_TOO_LARGE: &str = "54000";

/// Bytes a value takes in a buffered result (what `--max-result-bytes` counts).
fn value_bytes(v: &Value) -> usize {
    match v {
        Value::Text(t) => t.len() + 8,
        Value::Blob(b) => b.len() + 8,
        _ => 16,
    }
}

/// Runs every statement of `sql`; the rows of all of them together may take at most
/// `max_result_bytes` (else 54000, before more memory is taken).
/// Runs `sql`. With `stream`, a single read-only statement's rows go there as they come (see
/// [`Streamed`]; the outcome is then `Done` with its tag) instead of being buffered; a
/// buffered result past `max_result_bytes` is refused.
pub fn execute(
    conn: &Connection,
    engine: &Engine,
    typing: Typing,
    sql: &str,
    params: &[Value],
    max_result_bytes: usize,
    stream: Option<&tokio::sync::mpsc::Sender<Streamed>>,
) -> Result<Vec<Outcome>, SqlError> {
    let sql = rewrite_params(sql);
    let mut result_bytes = 0usize;
    crate::sql_guard::clear_refusal();
    let mut outcomes = Vec::new();
    let stream = stream.filter(|_| single_statement(conn, &sql));
    let mut finishing: Option<BatchSender<'_>> = None;
    let mut batch = rusqlite::Batch::new(conn, &sql);
    loop {
        let next = batch.next().map_err(|e| map_error(e, engine))?;
        let Some(mut stmt) = next else { break };
        let text = stmt.expanded_sql().unwrap_or_default();
        crate::sql_guard::statement(&text).map_err(|r| SqlError::new(r.code, r.message))?;
        let word = first_word(&text);
        if engine.replica().is_some() {
            if !stmt.readonly() {
                return Err(SqlError::new(
                    "25006",
                    format!(
                        "cannot execute {word} on a read replica: it is read-only; send writes to the volume's writer"
                    ),
                ));
            }
        } else if (word == "BEGIN" || word == "START")
            && !text.to_ascii_uppercase().contains("IMMEDIATE")
            && !text.to_ascii_uppercase().contains("EXCLUSIVE")
        {
            drop(stmt);
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(|e| map_error(e, engine))?;
            outcomes.push(Outcome::Done {
                tag: "BEGIN".into(),
            });
            continue;
        }
        for (i, p) in params.iter().enumerate() {
            if i < stmt.parameter_count() {
                stmt.raw_bind_parameter(i + 1, p)
                    .map_err(|e| map_error(e, engine))?;
            }
        }
        if stmt.column_count() > 0 {
            let names: Vec<(String, Option<String>)> = stmt
                .columns()
                .map(|c| (c.name().to_string(), c.decl_type().map(str::to_string)))
                .collect();
            let n = names.len();
            let sink = stream.filter(|_| stmt.readonly());
            let mut names = Some(names);
            let mut rows = Vec::new();
            let mut batch_bytes = 0usize;
            let mut sent = 0usize;
            let mut handing = sink.map(|tx| BatchSender::new(tx, max_result_bytes));
            let mut raw = stmt.raw_query();
            // Hands over what is gathered (the columns before the first batch).
            let mut flush = |rows: &mut Vec<Vec<Value>>, names: &mut Option<_>, bytes: usize| {
                let Some(out) = handing.as_mut() else {
                    return Ok(());
                };
                if let Some(names) = names.take() {
                    out.send(Streamed::Columns(result_columns(names, rows, typing)), 0)?;
                }
                if !rows.is_empty() {
                    let read_lsn = vfs::take_read_lsn();
                    let rows = std::mem::take(rows);
                    out.send(Streamed::Rows { rows, read_lsn }, bytes)?;
                }
                Ok::<(), SqlError>(())
            };
            while let Some(row) = raw.next().map_err(|e| map_error(e, engine))? {
                let mut vals = Vec::with_capacity(n);
                for i in 0..n {
                    vals.push(match row.get_ref(i).map_err(|e| map_error(e, engine))? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(v) => Value::Integer(v),
                        ValueRef::Real(v) => Value::Real(v),
                        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                    });
                }
                let bytes = vals.iter().map(value_bytes).sum::<usize>();
                rows.push(vals);
                if sink.is_some() {
                    sent += 1;
                    batch_bytes += bytes;
                    if rows.len() >= STREAM_BATCH_ROWS || batch_bytes >= STREAM_BATCH_BYTES {
                        flush(&mut rows, &mut names, batch_bytes)?;
                        batch_bytes = 0;
                    }
                    continue;
                }
                result_bytes += bytes;
                if result_bytes > max_result_bytes {
                    return Err(too_large(max_result_bytes, rows.len()));
                }
            }
            if sink.is_some() {
                flush(&mut rows, &mut names, batch_bytes)?;
                outcomes.push(Outcome::Done {
                    tag: format!("SELECT {sent}"),
                });
                // The rest goes once the statement is over (its shared lock released).
                finishing = handing;
                continue;
            }
            let columns = result_columns(names.take().unwrap_or_default(), &rows, typing);
            outcomes.push(Outcome::Rows { columns, rows });
        } else {
            stmt.raw_execute().map_err(|e| map_error(e, engine))?;
            let changes = conn.changes();
            outcomes.push(Outcome::Done {
                tag: tag(&text, changes),
            });
        }
    }
    if let Some(rest) = finishing {
        rest.finish()?;
    }
    Ok(outcomes)
}

/// Hands a streamed statement's batches to the client's side without ever waiting for it
/// while the statement runs: the statement holds SQLite's shared lock, and the writer's next
/// commit (a replica's next feed batch) waits for that lock, so a slow client must not slow
/// the statement down. What the client has not taken yet waits here, at most `max_bytes` of
/// it, and is handed over (waiting for the client) once the statement has ended.
struct BatchSender<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Streamed>,
    waiting: std::collections::VecDeque<(Streamed, usize)>,
    waiting_bytes: usize,
    max_bytes: usize,
}

fn client_gone() -> SqlError {
    SqlError::new("08006", "the client went away")
}

impl<'a> BatchSender<'a> {
    fn new(tx: &'a tokio::sync::mpsc::Sender<Streamed>, max_bytes: usize) -> Self {
        BatchSender {
            tx,
            waiting: Default::default(),
            waiting_bytes: 0,
            max_bytes,
        }
    }

    /// Hands `msg` (`bytes` of rows) over, or keeps it behind what waits already.
    fn send(&mut self, msg: Streamed, bytes: usize) -> Result<(), SqlError> {
        use tokio::sync::mpsc::error::TrySendError;
        while let Some((m, b)) = self.waiting.pop_front() {
            match self.tx.try_send(m) {
                Ok(()) => self.waiting_bytes -= b,
                Err(TrySendError::Full(m)) => {
                    self.waiting.push_front((m, b));
                    break;
                }
                Err(TrySendError::Closed(_)) => return Err(client_gone()),
            }
        }
        let msg = if self.waiting.is_empty() {
            match self.tx.try_send(msg) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(m)) => m,
                Err(TrySendError::Closed(_)) => return Err(client_gone()),
            }
        } else {
            msg
        };
        self.waiting_bytes += bytes;
        if self.waiting_bytes > self.max_bytes {
            return Err(SqlError::new(
                RESULT_TOO_LARGE,
                format!(
                    "the result is made faster than the client reads it: more than {} bytes wait for the client (the server's --max-result-bytes); read it faster, or select fewer rows",
                    self.max_bytes
                ),
            ));
        }
        self.waiting.push_back((msg, bytes));
        Ok(())
    }

    /// After the statement: hands over what waits, as fast as the client takes it.
    fn finish(self) -> Result<(), SqlError> {
        for (m, _) in self.waiting {
            self.tx.blocking_send(m).map_err(|_| client_gone())?;
        }
        Ok(())
    }
}

/// SQLSTATEs SQLite only tells by its message.
fn code_from_message(text: &str) -> Option<&'static str> {
    Some(match text {
        _ if text.contains("syntax error") || text.contains("incomplete input") => "42601",
        _ if text.starts_with("no such table") => "42P01",
        _ if text.starts_with("no such column") => "42703",
        _ if text.starts_with("no such function") => "42883",
        _ if text.contains("already exists") => "42P07",
        _ if text.contains("cannot start a transaction within a transaction") => "25001",
        _ if text.contains("no transaction is active") => "25P01",
        _ => return None,
    })
}

/// Maps a SQLite error to a SQLSTATE and a message; storage-side failures carry their reason.
pub fn map_error(e: rusqlite::Error, engine: &Engine) -> SqlError {
    let msg = e.to_string();
    // The authorizer refused something in the statement (SQLITE_AUTH, or "not authorized to
    // use function"): say what and why.
    let denied = matches!(&e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied);
    if denied || msg.starts_with("not authorized to use function") {
        return match crate::sql_guard::take_refusal() {
            Some(r) => SqlError::new(r.code, r.message),
            None => SqlError::new("42501", msg),
        };
    }
    match &e {
        rusqlite::Error::SqliteFailure(f, m) => {
            let text = m.clone().unwrap_or_else(|| msg.clone());
            let code = match f.extended_code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => "23505",
                ffi::SQLITE_CONSTRAINT_NOTNULL => "23502",
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => "23503",
                ffi::SQLITE_CONSTRAINT_CHECK => "23514",
                _ => match f.code {
                    rusqlite::ErrorCode::ConstraintViolation => "23000",
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                        "40001"
                    }
                    rusqlite::ErrorCode::DiskFull => "53100",
                    // Only the session's statement_timeout interrupts a statement.
                    rusqlite::ErrorCode::OperationInterrupted => {
                        return SqlError::new(
                            STATEMENT_TIMEOUT,
                            "canceling statement due to statement timeout",
                        )
                    }
                    rusqlite::ErrorCode::ReadOnly => "25006",
                    rusqlite::ErrorCode::SystemIoFailure => "58030",
                    rusqlite::ErrorCode::TooBig => "54000",
                    _ => code_from_message(&text).unwrap_or("XX000"),
                },
            };
            let text = match engine.take_last_error() {
                Some(storage) if code == "58030" || code == "53100" || code == "XX000" => {
                    format!("{text}: {storage}")
                }
                _ => text,
            };
            SqlError::new(code, text)
        }
        rusqlite::Error::SqlInputError { msg, .. } => {
            SqlError::new(code_from_message(msg).unwrap_or("42601"), msg.clone())
        }
        _ if msg.contains("syntax error") => SqlError::new("42601", msg),
        _ => SqlError::new("XX000", msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_params_become_question_marks_outside_strings() {
        assert_eq!(
            rewrite_params("SELECT $1, '$2', \"$3\" WHERE a = $12"),
            "SELECT ?1, '$2', \"$3\" WHERE a = ?12"
        );
    }

    #[test]
    fn tags_follow_postgres() {
        assert_eq!(tag("insert into t values (1)", 1), "INSERT 0 1");
        assert_eq!(tag("UPDATE t SET a = 1", 3), "UPDATE 3");
        assert_eq!(tag("create table t (a int)", 0), "CREATE TABLE");
        assert_eq!(tag("commit;", 0), "COMMIT");
    }
}
