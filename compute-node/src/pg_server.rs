//! The PostgreSQL wire protocol front (DESIGN.md §11), on `pgwire`: simple and extended query,
//! TLS and SCRAM-SHA-256 (or md5) authentication as `pg_auth` sets them, one SQLite connection
//! per client session, opened once the client authenticated. A statement runs on a
//! blocking thread; when it committed, the answer waits until VDL passes the commit LSN — the
//! client hears COMMIT only once the transaction is on a write quorum.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{stream, StreamExt};
use pgwire::api::auth::md5pass::Md5PasswordAuthStartupHandler;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{DefaultServerParameterProvider, LoginInfo, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{NoopQueryParser, StoredStatement};
use pgwire::api::{ClientInfo, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use rusqlite::types::Value;
use rusqlite::Connection;
use tokio::net::TcpListener;

use crate::lsn_functions::{self, LsnCall};
use crate::pg_auth::{Method, PgAuth};
use crate::session_settings::{self, Settings};
use crate::sql::{self, ColType, Outcome, SqlError};
use crate::vfs::{self, Engine};

/// What every session of the server shares.
pub struct ServerContext {
    pub engine: Arc<Engine>,
    pub db_name: String,
    /// How clients authenticate, and TLS.
    pub auth: Arc<PgAuth>,
    pub cache_pages: i64,
    /// One writing transaction at a time, first come first served.
    pub write_turn: Arc<tokio::sync::Mutex<()>>,
    /// A permit per client session; none left: the client is refused (53300).
    pub connections: Arc<tokio::sync::Semaphore>,
    pub max_connections: usize,
    /// Largest result a statement may buffer, in bytes (SQLSTATE 54000 past it).
    pub max_result_bytes: usize,
    /// A session idle this long inside a transaction that holds the write turn is rolled back
    /// and ended (PostgreSQL's `idle_in_transaction_session_timeout`, SQLSTATE 25P03); `None`:
    /// never.
    pub idle_in_transaction_timeout: Option<std::time::Duration>,
}

/// A session's SQLite connection, opened by its first statement — after the client has
/// authenticated, so an unauthenticated client costs no connection.
struct LazyConn {
    ctx: Arc<ServerContext>,
    conn: Mutex<Option<Connection>>,
    /// When the running statement is to be cancelled (`mono_ms`; 0: never):
    /// SQLite's progress handler checks it every few thousand steps on the statement's own
    /// thread, so a timeout can only ever cancel the statement it was set for.
    deadline_ms: Arc<AtomicU64>,
}

/// Milliseconds on a monotonic clock (clock steps cannot cancel a statement early or late).
fn mono_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl LazyConn {
    fn new(ctx: Arc<ServerContext>) -> LazyConn {
        LazyConn {
            ctx,
            conn: Mutex::new(None),
            deadline_ms: Arc::default(),
        }
    }

    /// Runs `f` on the connection, opening it first (on a blocking thread), cancelled once
    /// `timeout` has passed.
    fn with<R>(
        &self,
        timeout: Option<std::time::Duration>,
        f: impl FnOnce(&Connection) -> Result<R, SqlError>,
    ) -> Result<R, SqlError> {
        let mut g = self.conn.lock().expect("session connection");
        if g.is_none() {
            let ctx = &self.ctx;
            let mut c = sql::open(&ctx.db_name, &ctx.engine, ctx.cache_pages)?;
            let deadline = Arc::clone(&self.deadline_ms);
            c.progress_handler(
                4096,
                Some(move || {
                    let d = deadline.load(Ordering::Relaxed);
                    d != 0 && mono_ms() >= d
                }),
            )
            .map_err(|e| sql::map_error(e, &ctx.engine))?;
            *g = Some(c);
        }
        let deadline = timeout.map_or(0, |t| mono_ms() + t.as_millis().max(1) as u64);
        self.deadline_ms.store(deadline, Ordering::Relaxed);
        let out = f(g.as_ref().expect("opened above"));
        self.deadline_ms.store(0, Ordering::Relaxed);
        out
    }

    /// Whether the session is inside a transaction (not before its first statement).
    fn in_transaction(&self) -> bool {
        self.conn
            .lock()
            .expect("session connection")
            .as_ref()
            .is_some_and(|c| !c.is_autocommit())
    }

    /// Rolls back an open transaction (nothing to do before the first statement).
    fn roll_back(&self) {
        if let Some(c) = self.conn.lock().expect("session connection").as_ref() {
            if !c.is_autocommit() {
                let _ = c.execute_batch("ROLLBACK");
            }
        }
    }
}

/// SQLSTATE of a session ended by the idle-in-transaction timeout.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";

/// One client session: its own SQLite connection.
pub struct Session {
    ctx: Arc<ServerContext>,
    conn: Arc<LazyConn>,
    /// Held from the first statement that may write until the transaction ends.
    write_turn: tokio::sync::Mutex<Option<tokio::sync::OwnedMutexGuard<()>>>,
    parser: Arc<NoopQueryParser>,
    /// Commit LSN of this session's last acknowledged transaction.
    last_commit: std::sync::atomic::AtomicU64,
    /// Statements started (the idle watchdog's clock) and whether the session was ended.
    idle: Mutex<IdleState>,
    /// This session, for the idle watchdog.
    me: std::sync::Weak<Session>,
    /// What `SET` changed (statement_timeout, idle_in_transaction_session_timeout, ...).
    settings: Mutex<Settings>,
}

#[derive(Default)]
struct IdleState {
    /// A statement of the session is running (or waiting for the write turn).
    running: bool,
    /// When its last statement ended.
    last_end: Option<Instant>,
    /// The session is inside a transaction that holds the write turn.
    holding: bool,
    /// A watchdog task watches the session (one at most).
    watching: bool,
    /// The session was ended by the watchdog.
    ended: bool,
    /// A failed statement rolled back the session's open transaction (SQLite does so on an
    /// interrupt, a full disk, an I/O error): until the client ends the transaction block,
    /// every statement is refused (25P02), so nothing it sends runs outside the transaction it
    /// believes it is in.
    aborted: bool,
}

/// SQLSTATE of a statement refused inside an aborted transaction block.
const IN_FAILED_TRANSACTION: &str = "25P02";

/// Whether `sql` ends a transaction block (what an aborted block still accepts).
fn ends_block(sql: &str) -> bool {
    let word = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    matches!(word.as_str(), "ROLLBACK" | "COMMIT" | "END" | "ABORT")
}

fn user_error(e: SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        e.code.into(),
        e.message,
    )))
}

fn idle_timeout_error(after: Option<std::time::Duration>) -> SqlError {
    SqlError::new(
        IDLE_IN_TRANSACTION_TIMEOUT,
        format!(
            "terminating connection due to idle-in-transaction timeout: the session held the write turn for {} ms without a statement; its transaction was rolled back — reconnect",
            after.map_or(0, |d| d.as_millis())
        ),
    )
}

fn pg_type(t: ColType) -> Type {
    match t {
        ColType::Int => Type::INT8,
        ColType::Float => Type::FLOAT8,
        ColType::Text => Type::TEXT,
        ColType::Bytes => Type::BYTEA,
    }
}

/// Batches of a streamed result in flight between the statement's thread and the socket.
const STREAM_DEPTH: usize = 4;

/// What a statement's thread hands back: its outcome, the commit and read LSNs it left, and
/// whether the session is inside a transaction after it.
type Ran = (
    Result<Vec<Outcome>, SqlError>,
    (logdb_types::Lsn, logdb_types::Lsn),
    bool,
);

/// What a statement answers: outcomes gathered whole, or rows still coming.
enum Answer {
    Buffered(Vec<Outcome>),
    Streamed(RowStream),
}

/// The rows of a statement that is still running on its blocking thread: batches come over
/// `rx`, each sent on once what it read is durable; the task's own end (its error, if any)
/// comes last.
struct RowStream {
    columns: Vec<(String, ColType)>,
    rx: tokio::sync::mpsc::Receiver<sql::Streamed>,
    task: tokio::task::JoinHandle<Ran>,
    session: Arc<Session>,
    started: Instant,
    timeout: Option<Duration>,
}

impl RowStream {
    /// The response: the columns (as `fields`, or as text), then the rows as they come.
    fn into_response(self, fields: Option<Arc<Vec<FieldInfo>>>) -> Response {
        let fields = fields.unwrap_or_else(|| text_fields(&self.columns));
        let rows_fields = Arc::clone(&fields);
        let rows = stream::unfold(Some(self), move |state| {
            let fields = Arc::clone(&rows_fields);
            async move {
                let mut s = state?;
                match s.rx.recv().await {
                    Some(sql::Streamed::Rows { rows, read_lsn }) => {
                        let sent = match wait_read_durable(
                            &s.session.ctx.engine,
                            read_lsn,
                            s.started,
                            s.timeout,
                        )
                        .await
                        {
                            Ok(()) => encode_rows(&fields, rows),
                            Err(e) => Err(user_error(e)),
                        };
                        // An error ends the stream; the statement's thread stops once its next
                        // batch finds nobody listening.
                        let go_on = sent.is_ok();
                        Some((
                            stream::iter(sent.map_or_else(
                                |e| vec![Err(e)],
                                |r| r.into_iter().map(Ok).collect(),
                            )),
                            go_on.then_some(s),
                        ))
                    }
                    Some(sql::Streamed::Columns(_)) => Some((
                        stream::iter(vec![Err(user_error(SqlError::new(
                            "XX000",
                            "a streamed result sent its columns twice",
                        )))]),
                        None,
                    )),
                    None => {
                        let ended = (&mut s.task).await;
                        s.session.statement_ended(false);
                        let err = match ended {
                            Ok((Ok(_), _, _)) => return None,
                            Ok((Err(e), _, _)) => e,
                            Err(e) => SqlError::new("XX000", format!("statement task failed: {e}")),
                        };
                        Some((stream::iter(vec![Err(user_error(err))]), None))
                    }
                }
            }
        })
        .flatten();
        Response::Query(QueryResponse::new(fields, rows))
    }
}

/// Text-format fields of result columns (the simple protocol's).
fn text_fields(columns: &[(String, ColType)]) -> Arc<Vec<FieldInfo>> {
    Arc::new(
        columns
            .iter()
            .map(|(name, t)| {
                FieldInfo::new(name.clone(), None, None, pg_type(*t), FieldFormat::Text)
            })
            .collect(),
    )
}

/// Waits until `read_lsn` (what a statement read of others' commits) is durable, within what
/// is left of the statement's `timeout`: reads are linearizable. Replicas read only what is
/// durable already.
async fn wait_read_durable(
    engine: &Engine,
    read_lsn: logdb_types::Lsn,
    started: Instant,
    timeout: Option<Duration>,
) -> Result<(), SqlError> {
    let Some(shipper) = engine.writer() else {
        return Ok(());
    };
    if read_lsn.0 == 0 {
        return Ok(());
    }
    let wait = shipper.wait_durable(read_lsn);
    let waited = match timeout {
        None => Ok(wait.await),
        Some(t) => {
            let rest = t.saturating_sub(started.elapsed());
            tokio::time::timeout(rest, wait).await
        }
    };
    match waited {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SqlError::new(
            "58030",
            format!("what this statement read is not confirmed durable: {e}"),
        )),
        Err(_) => Err(SqlError::new(
            sql::STATEMENT_TIMEOUT,
            "canceling statement due to statement timeout (what it read was not durable yet)",
        )),
    }
}

impl Session {
    /// Runs SQL on the session's connection; waits for durability when it committed. With
    /// `stream`, a single read-only statement outside a write transaction answers with its
    /// rows as they come ([`Answer::Streamed`]); anything else is buffered.
    async fn run(
        &self,
        sql_text: String,
        params: Vec<Value>,
        typing: sql::Typing,
        stream: bool,
    ) -> Result<Answer, SqlError> {
        if self.idle.lock().expect("idle state").ended {
            return Err(idle_timeout_error(self.idle_timeout()));
        }
        if let Some(call) = lsn_functions::parse(&sql_text) {
            return self
                .lsn_call(call.map_err(|m| SqlError::new("42883", m))?)
                .await
                .map(Answer::Buffered);
        }
        if let Some(cmd) = session_settings::parse(&sql_text) {
            return self.setting(cmd).map(Answer::Buffered);
        }
        {
            let mut idle = self.idle.lock().expect("idle state");
            if idle.ended {
                return Err(idle_timeout_error(self.idle_timeout()));
            }
            if idle.aborted {
                if ends_block(&sql_text) {
                    idle.aborted = false;
                    return Ok(Answer::Buffered(vec![Outcome::Done {
                        tag: "ROLLBACK".into(),
                    }]));
                }
                return Err(SqlError::new(
                    IN_FAILED_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction \
                     block (an earlier statement failed and rolled it back; send ROLLBACK)",
                ));
            }
            idle.running = true;
        }
        let was_in_tx = self.conn.in_transaction();
        // A failed COMMIT or ROLLBACK ends the block itself (PostgreSQL answers it and goes on).
        let ending = ends_block(&sql_text);
        let timeout = self.settings.lock().expect("settings").statement_timeout;
        let conn = Arc::clone(&self.conn);
        let engine = Arc::clone(&self.ctx.engine);
        let max_result = self.ctx.max_result_bytes;
        let started = Instant::now();
        // Writers queue here, in order and without holding a thread, instead of spinning on
        // SQLite's lock; the turn ends when the transaction does (before the durability wait,
        // so commits pipeline).
        let mut turn = self.write_turn.lock().await;
        if turn.is_none() && sql::may_write(&sql_text) {
            // Waiting for the turn is part of the statement, as a lock wait is in PostgreSQL.
            let wait = Arc::clone(&self.ctx.write_turn).lock_owned();
            *turn = Some(match timeout {
                None => wait.await,
                Some(t) => match tokio::time::timeout(t, wait).await {
                    Ok(g) => g,
                    Err(_) => {
                        drop(turn);
                        self.statement_ended(false);
                        return Err(SqlError::new(
                            sql::STATEMENT_TIMEOUT,
                            "canceling statement due to statement timeout (waiting for the write turn)",
                        ));
                    }
                },
            });
        }
        // What is left of the statement's time after waiting for the turn.
        let left = timeout.map(|t| {
            t.saturating_sub(started.elapsed())
                .max(Duration::from_millis(1))
        });
        // Rows stream only where nothing else waits on the statement: no write turn held or
        // taken (so in autocommit, read-only).
        let (tx, rx) = match stream && turn.is_none() {
            true => {
                let (tx, rx) = tokio::sync::mpsc::channel(STREAM_DEPTH);
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let task = tokio::task::spawn_blocking(move || {
            let _ = vfs::take_read_lsn();
            let out = conn.with(left, |c| {
                sql::execute(
                    c,
                    &engine,
                    typing,
                    &sql_text,
                    &params,
                    max_result,
                    tx.as_ref(),
                )
            });
            let lsns = (vfs::take_commit_lsn(), vfs::take_read_lsn());
            (out, lsns, conn.in_transaction())
        });
        if let Some(mut rx) = rx {
            if let Some(sql::Streamed::Columns(columns)) = rx.recv().await {
                drop(turn);
                let session = self.me.upgrade().ok_or_else(|| {
                    SqlError::new("08006", "the session ended while its statement ran")
                })?;
                return Ok(Answer::Streamed(RowStream {
                    columns,
                    rx,
                    task,
                    session,
                    started,
                    timeout,
                }));
            }
            // Nothing streamed (the statement was not a single read, or failed first): its
            // outcome comes from the task as usual.
        }
        let ran = task.await;
        let in_tx = ran.as_ref().is_ok_and(|(_, _, in_tx)| *in_tx);
        if !in_tx {
            *turn = None;
        }
        if was_in_tx && !in_tx && !ending && ran.as_ref().is_ok_and(|(out, _, _)| out.is_err()) {
            self.idle.lock().expect("idle state").aborted = true;
        }
        self.statement_ended(in_tx && turn.is_some());
        drop(turn);
        let (out, (lsn, read_lsn), _) =
            ran.map_err(|e| SqlError::new("XX000", format!("statement task failed: {e}")))?;
        // What the statement read of other sessions' commits is answered only once durable
        // (a crash could still erase it): reads are linearizable.
        if read_lsn > lsn {
            wait_read_durable(&self.ctx.engine, read_lsn, started, timeout).await?;
        }
        if lsn.0 > 0 {
            let engine = &self.ctx.engine;
            let shipper = engine
                .writer()
                .ok_or_else(|| SqlError::new("25006", "a replica cannot commit writes"))?;
            shipper.wait_durable(lsn).await.map_err(|e| {
                SqlError::new("58030", format!("commit not confirmed durable: {e}"))
            })?;
            self.last_commit
                .store(lsn.0, std::sync::atomic::Ordering::Relaxed);
            engine.metrics.commits.inc();
            engine
                .metrics
                .commit_latency
                .observe(started.elapsed().as_secs_f64());
        }
        out.map(Answer::Buffered)
    }

    /// The idle-in-transaction timeout in force for this session.
    fn idle_timeout(&self) -> Option<std::time::Duration> {
        self.settings
            .lock()
            .expect("settings")
            .idle_timeout(self.ctx.idle_in_transaction_timeout)
    }

    /// Answers `SET`, `RESET` or `SHOW` (see [`session_settings`]).
    fn setting(&self, cmd: session_settings::Command) -> Result<Vec<Outcome>, SqlError> {
        let answer = self
            .settings
            .lock()
            .expect("settings")
            .apply(cmd, self.ctx.idle_in_transaction_timeout)
            .map_err(|m| {
                let code = if m.starts_with("unrecognized") {
                    "42704"
                } else if m.contains("must be sent alone") {
                    "0A000"
                } else {
                    "22023"
                };
                SqlError::new(code, m)
            })?;
        Ok(vec![match answer {
            session_settings::Answer::Tag(tag) => Outcome::Done { tag: tag.into() },
            session_settings::Answer::Show { name, value } => Outcome::Rows {
                columns: vec![(name, ColType::Text)],
                rows: vec![vec![Value::Text(value)]],
            },
        }])
    }

    /// Records the end of a statement; `holding`: the session stays inside a transaction that
    /// holds the write turn — then one watchdog watches it.
    fn statement_ended(&self, holding: bool) {
        let mut idle = self.idle.lock().expect("idle state");
        idle.running = false;
        idle.last_end = Some(Instant::now());
        idle.holding = holding;
        if let Some(after) = self.idle_timeout() {
            if holding && !idle.watching {
                idle.watching = true;
                tokio::spawn(Session::watch_idle(self.me.clone(), after));
            }
        }
    }

    /// The idle-in-transaction watchdog (one per session while it holds the write turn): once
    /// the session has been idle inside its transaction for `after`, the transaction is rolled
    /// back, the turn goes to the next writer, and the session answers 25P03 from then on. It
    /// holds the session weakly: a client that disconnects ends its session (its transaction,
    /// its turn) at once, as before.
    async fn watch_idle(me: std::sync::Weak<Session>, after: std::time::Duration) {
        let mut wait = after;
        loop {
            tokio::time::sleep(wait).await;
            let Some(this) = me.upgrade() else {
                return;
            };
            {
                let mut idle = this.idle.lock().expect("idle state");
                if !idle.holding || idle.ended {
                    idle.watching = false;
                    return;
                }
                let idle_for = idle.last_end.map_or(after, |t| t.elapsed());
                if idle.running || idle_for < after {
                    wait = if idle.running {
                        after
                    } else {
                        after - idle_for
                    };
                    continue;
                }
                idle.ended = true;
                idle.watching = false;
            }
            this.end_idle_transaction(after).await;
            return;
        }
    }

    async fn end_idle_transaction(&self, after: std::time::Duration) {
        let conn = Arc::clone(&self.conn);
        let _ = tokio::task::spawn_blocking(move || conn.roll_back()).await;
        *self.write_turn.lock().await = None;
        tracing::warn!(
            after_ms = after.as_millis() as u64,
            "session idle in a writing transaction: rolled back and ended (25P03)"
        );
    }

    /// Answers one of the LSN functions (see [`lsn_functions`]).
    async fn lsn_call(&self, call: LsnCall) -> Result<Vec<Outcome>, SqlError> {
        let engine = &self.ctx.engine;
        let (name, value) = match call {
            LsnCall::CommitLsn => (
                "logdb_commit_lsn",
                self.last_commit.load(std::sync::atomic::Ordering::Relaxed),
            ),
            LsnCall::ReadPoint => (
                "logdb_read_point",
                match (engine.writer(), engine.replica()) {
                    (Some(w), _) => w.vdl().0,
                    (_, Some(r)) => r.read_point().0,
                    _ => 0,
                },
            ),
            LsnCall::WaitLsn { lsn, timeout } => {
                let in_tx = self.conn.in_transaction();
                if in_tx {
                    return Err(SqlError::new(
                        "25001",
                        "logdb_wait_lsn cannot run inside a transaction (its read point is fixed); call it before BEGIN",
                    ));
                }
                let reached = match (engine.writer(), engine.replica()) {
                    (Some(w), _) => {
                        let lsn = logdb_types::Lsn(lsn);
                        match tokio::time::timeout(timeout, w.wait_durable(lsn)).await {
                            Ok(Ok(())) => Ok(w.vdl().0),
                            _ => Err(w.vdl().0),
                        }
                    }
                    (_, Some(r)) => r
                        .wait_for(logdb_types::Lsn(lsn), timeout)
                        .await
                        .map(|l| l.0)
                        .map_err(|l| l.0),
                    _ => Err(0),
                };
                match reached {
                    Ok(rp) => ("logdb_wait_lsn", rp),
                    Err(rp) => {
                        return Err(SqlError::new(
                            "57014",
                            format!(
                            "logdb_wait_lsn: the read point is {rp}, still below {lsn} after {} ms",
                            timeout.as_millis()
                        ),
                        ))
                    }
                }
            }
        };
        Ok(vec![Outcome::Rows {
            columns: vec![(name.to_string(), ColType::Int)],
            rows: vec![vec![Value::Integer(value as i64)]],
        }])
    }

    /// Parameter count and result columns of a statement, without running it. Preparing may read
    /// pages (the schema) from storage, so it runs on a blocking thread like statements do.
    async fn describe(
        &self,
        sql_text: &str,
        format: &Format,
    ) -> Result<(usize, Vec<FieldInfo>), SqlError> {
        if let Some(call) = lsn_functions::parse(sql_text) {
            let name = sql_text
                .trim()
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .trim()
                .split('(')
                .next()
                .unwrap_or("lsn")
                .to_ascii_lowercase();
            call.map_err(|m| SqlError::new("42883", m))?;
            let field = FieldInfo::new(name, None, None, Type::INT8, format.format_for(0));
            return Ok((0, vec![field]));
        }
        match session_settings::parse(sql_text) {
            Some(session_settings::Command::Show { name }) => {
                let field = FieldInfo::new(name, None, None, Type::TEXT, format.format_for(0));
                return Ok((0, vec![field]));
            }
            Some(_) => return Ok((0, Vec::new())),
            None => {}
        }
        let conn = Arc::clone(&self.conn);
        let engine = Arc::clone(&self.ctx.engine);
        let (sql_text, format) = (sql::rewrite_params(sql_text), format.clone());
        tokio::task::spawn_blocking(move || {
            conn.with(None, |c| {
                let stmt = c
                    .prepare(&sql_text)
                    .map_err(|e| sql::map_error(e, &engine))?;
                let fields = stmt
                    .columns()
                    .enumerate()
                    .map(|(i, col)| {
                        let t = sql::col_type(col.name(), col.decl_type(), None);
                        FieldInfo::new(
                            col.name().to_string(),
                            None,
                            None,
                            pg_type(t),
                            format.format_for(i),
                        )
                    })
                    .collect();
                Ok((stmt.parameter_count(), fields))
            })
        })
        .await
        .map_err(|e| SqlError::new("XX000", format!("describe task failed: {e}")))?
    }
}

fn encode(outcome: Outcome, fields: Option<Arc<Vec<FieldInfo>>>) -> PgWireResult<Response> {
    match outcome {
        Outcome::Done { tag } => {
            let word = tag.split(' ').next().unwrap_or("");
            Ok(match word {
                "BEGIN" => Response::TransactionStart(Tag::new(&tag)),
                "COMMIT" | "ROLLBACK" => Response::TransactionEnd(Tag::new(&tag)),
                _ => Response::Execution(Tag::new(&tag)),
            })
        }
        Outcome::Rows { columns, rows } => {
            let fields = fields.unwrap_or_else(|| text_fields(&columns));
            let out = encode_rows(&fields, rows)?;
            Ok(Response::Query(QueryResponse::new(
                fields,
                stream::iter(out.into_iter().map(Ok)),
            )))
        }
    }
}

/// The data rows of `rows` in the formats and types of `fields`.
fn encode_rows(
    fields: &Arc<Vec<FieldInfo>>,
    rows: Vec<Vec<Value>>,
) -> PgWireResult<Vec<pgwire::messages::data::DataRow>> {
    let mut encoder = DataRowEncoder::new(Arc::clone(fields));
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            let t = fields
                .get(i)
                .map(|f| f.datatype().clone())
                .unwrap_or(Type::TEXT);
            encode_value(&mut encoder, v, &t)?;
        }
        out.push(encoder.take_row());
    }
    Ok(out)
}

/// Encodes a SQLite value as the column's declared PostgreSQL type (SQLite typing is dynamic).
fn encode_value(enc: &mut DataRowEncoder, v: &Value, t: &Type) -> PgWireResult<()> {
    match (v, t) {
        (Value::Null, _) => enc.encode_field(&None::<i64>),
        (Value::Integer(i), &Type::INT8) => enc.encode_field(i),
        (Value::Real(f), &Type::INT8) => enc.encode_field(&(*f as i64)),
        (Value::Integer(i), &Type::FLOAT8) => enc.encode_field(&(*i as f64)),
        (Value::Real(f), &Type::FLOAT8) => enc.encode_field(f),
        (Value::Blob(b), &Type::BYTEA) => enc.encode_field(b),
        (Value::Integer(i), _) => enc.encode_field(&i.to_string()),
        (Value::Real(f), _) => enc.encode_field(&f.to_string()),
        (Value::Text(s), _) => enc.encode_field(s),
        (Value::Blob(b), _) => enc.encode_field(&String::from_utf8_lossy(b).into_owned()),
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if query.trim().is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        match self
            .run(query.to_string(), Vec::new(), sql::Typing::Sampled, true)
            .await
            .map_err(user_error)?
        {
            Answer::Buffered(outcomes) => outcomes.into_iter().map(|o| encode(o, None)).collect(),
            Answer::Streamed(rows) => Ok(vec![rows.into_response(None)]),
        }
    }
}

fn params(portal: &Portal<String>) -> PgWireResult<Vec<Value>> {
    let mut out = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let t = portal
            .statement
            .parameter_types
            .get(i)
            .cloned()
            .flatten()
            .unwrap_or(Type::TEXT);
        let v = match t {
            Type::INT2 => portal
                .parameter::<i16>(i, &t)?
                .map(|v| Value::Integer(v as i64)),
            Type::INT4 => portal
                .parameter::<i32>(i, &t)?
                .map(|v| Value::Integer(v as i64)),
            Type::INT8 => portal.parameter::<i64>(i, &t)?.map(Value::Integer),
            Type::FLOAT4 => portal
                .parameter::<f32>(i, &t)?
                .map(|v| Value::Real(v as f64)),
            Type::FLOAT8 => portal.parameter::<f64>(i, &t)?.map(Value::Real),
            Type::BOOL => portal
                .parameter::<bool>(i, &t)?
                .map(|v| Value::Integer(v as i64)),
            Type::BYTEA => portal.parameter::<Vec<u8>>(i, &t)?.map(Value::Blob),
            _ => portal.parameter::<String>(i, &Type::TEXT)?.map(Value::Text),
        };
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(out)
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = String;
    type QueryParser = NoopQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql_text = portal.statement.statement.clone();
        if sql_text.trim().is_empty() {
            return Ok(Response::EmptyQuery);
        }
        let values = params(portal)?;
        let mut outcomes = match self
            .run(sql_text, values, sql::Typing::Declared, true)
            .await
            .map_err(user_error)?
        {
            Answer::Buffered(outcomes) => outcomes,
            Answer::Streamed(rows) => {
                // Declared typing: the same columns Describe announced, in the portal's formats.
                let fields = rows
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (name, t))| {
                        let format = portal.result_column_format.format_for(i);
                        FieldInfo::new(name.clone(), None, None, pg_type(*t), format)
                    })
                    .collect();
                return Ok(rows.into_response(Some(Arc::new(fields))));
            }
        };
        let last = outcomes.pop().unwrap_or(Outcome::Done {
            tag: "SELECT 0".into(),
        });
        // Declared typing: the same columns Describe announced, in the portal's formats.
        let fields = match &last {
            Outcome::Rows { columns, .. } => columns
                .iter()
                .enumerate()
                .map(|(i, (name, t))| {
                    let format = portal.result_column_format.format_for(i);
                    FieldInfo::new(name.clone(), None, None, pg_type(*t), format)
                })
                .collect(),
            Outcome::Done { .. } => Vec::new(),
        };
        encode(last, (!fields.is_empty()).then(|| Arc::new(fields)))
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        stmt: &StoredStatement<Self::Statement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let (n, fields) = self
            .describe(&stmt.statement, &Format::UnifiedBinary)
            .await
            .map_err(user_error)?;
        let types = (0..n)
            .map(|i| {
                stmt.parameter_types
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        Ok(DescribeStatementResponse::new(types, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Self::Statement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let (_, fields) = self
            .describe(&portal.statement.statement, &portal.result_column_format)
            .await
            .map_err(user_error)?;
        Ok(DescribePortalResponse::new(fields))
    }
}

impl NoopStartupHandler for Session {}

struct Handlers {
    session: Arc<Session>,
}

/// What the server reports as `server_version`.
pub fn server_version() -> String {
    format!(
        "15.0 (logdb {}, SQLite {})",
        env!("CARGO_PKG_VERSION"),
        rusqlite::version()
    )
}

fn parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = server_version();
    p
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.session)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.session)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Auth::new(&self.session))
    }
}

/// The configured authentication: SCRAM-SHA-256, md5 or (only with `--insecure`) trust; with
/// TLS required, a plaintext client is refused first.
enum Auth {
    /// For a plaintext client and for a TLS one (which is also offered channel binding); a
    /// connection is one or the other from its first message on.
    Scram(
        Box<[SASLAuthStartupHandler<DefaultServerParameterProvider>; 2]>,
        Arc<PgAuth>,
    ),
    Md5(
        Md5PasswordAuthStartupHandler<crate::pg_auth::UserLookup, DefaultServerParameterProvider>,
        Arc<PgAuth>,
    ),
    Trust(Arc<Session>, Arc<PgAuth>),
}

impl Auth {
    fn new(session: &Arc<Session>) -> Self {
        let auth = Arc::clone(&session.ctx.auth);
        match auth.method {
            Method::ScramSha256 => {
                let handler = |secure| {
                    SASLAuthStartupHandler::new(Arc::new(parameters()))
                        .with_scram(auth.scram(secure))
                };
                Auth::Scram(Box::new([handler(false), handler(true)]), auth)
            }
            Method::Md5 => Auth::Md5(
                Md5PasswordAuthStartupHandler::new(auth.md5_source(), Arc::new(parameters())),
                auth,
            ),
            Method::Trust => Auth::Trust(Arc::clone(session), auth),
        }
    }

    fn config(&self) -> &PgAuth {
        match self {
            Auth::Scram(_, a) | Auth::Md5(_, a) | Auth::Trust(_, a) => a,
        }
    }
}

#[async_trait]
impl StartupHandler for Auth {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<pgwire::messages::PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as futures::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        if let pgwire::messages::PgWireFrontendMessage::Startup(startup) = &message {
            pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
            let login = LoginInfo::from_client_info(client);
            if let Some(refusal) = self.config().plaintext_refusal(client.is_secure(), &login) {
                tracing::warn!(
                    user = login.user().unwrap_or(""),
                    "plaintext client refused: TLS is required"
                );
                return Err(refusal);
            }
        }
        let result = match self {
            Auth::Scram(h, _) => {
                let secure = client.is_secure();
                h[usize::from(secure)].on_startup(client, message).await
            }
            Auth::Md5(h, _) => h.on_startup(client, message).await,
            Auth::Trust(s, _) => s.on_startup(client, message).await,
        };
        result.map_err(|e| match e {
            // Whatever fails before the client is in ends the connection: a non-fatal error
            // here would leave it at ReadyForQuery without having authenticated.
            e if !e.is_fatal() && !matches!(e, PgWireError::InvalidPassword(_)) => {
                PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".into(),
                    crate::pg_auth::INVALID_AUTHORIZATION.into(),
                    format!("authentication failed: {e}"),
                )))
            }
            // SCRAM names the user of its own message (empty from libpq): name the session's.
            PgWireError::InvalidPassword(_) => {
                let login = LoginInfo::from_client_info(client);
                let user = login.user().unwrap_or("");
                tracing::warn!(user, "password authentication failed");
                crate::pg_auth::password_failed(user)
            }
            e => e,
        })
    }
}

/// SQLSTATE of a client refused because `max_connections` sessions are open.
const TOO_MANY_CONNECTIONS: &str = "53300";

/// Answers a client that cannot be served with a FATAL error, as PostgreSQL does: its first
/// packet is read (an SSL request is accepted when TLS is configured — the error then goes over
/// TLS — and a GSS request declined), then the startup packet, so the error is what the client
/// reads back. Bounded in time.
async fn refuse(
    socket: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    code: &str,
    message: &str,
) {
    let answer = async {
        match startup_packet(socket, tls).await? {
            Refusable::Plain(mut s) => write_fatal(&mut s, code, message).await,
            Refusable::Tls(mut s) => write_fatal(&mut *s, code, message).await,
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), answer).await;
}

enum Refusable {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// Reads up to the client's startup packet, negotiating TLS on the way when offered.
async fn startup_packet(
    mut socket: tokio::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<Refusable> {
    use tokio::io::AsyncWriteExt;
    const SSL_REQUEST: i32 = 80_877_103;
    const GSS_REQUEST: i32 = 80_877_104;
    for _ in 0..3 {
        let kind = read_packet(&mut socket).await?;
        match kind {
            Some(SSL_REQUEST) => match &tls {
                Some(acceptor) => {
                    socket.write_all(b"S").await?;
                    let mut s = acceptor.accept(socket).await?;
                    read_packet(&mut s).await?;
                    return Ok(Refusable::Tls(Box::new(s)));
                }
                None => socket.write_all(b"N").await?,
            },
            Some(GSS_REQUEST) => socket.write_all(b"N").await?,
            _ => break,
        }
    }
    Ok(Refusable::Plain(socket))
}

/// Reads one length-prefixed startup-phase packet; its first word (the request code), or `None`
/// for a packet of an impossible size.
async fn read_packet(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Option<i32>> {
    use tokio::io::AsyncReadExt;
    let len = s.read_i32().await?;
    if !(8..=10_000).contains(&len) {
        return Ok(None);
    }
    let mut body = vec![0; len as usize - 4];
    s.read_exact(&mut body).await?;
    Ok(Some(i32::from_be_bytes(
        body[..4].try_into().expect("4 bytes"),
    )))
}

async fn write_fatal(
    s: &mut (impl tokio::io::AsyncWrite + Unpin),
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut fields = Vec::new();
    for (t, v) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(t);
        fields.extend_from_slice(v.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&((fields.len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(&fields);
    s.write_all(&msg).await?;
    s.shutdown().await
}

/// Accepts clients until the listener fails; each gets a session, up to `max_connections`
/// (then 53300). A session's SQLite connection opens with its first statement, after the
/// client authenticated.
pub async fn serve(listener: TcpListener, ctx: Arc<ServerContext>) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&ctx.connections).try_acquire_owned() else {
            let message = format!(
                "sorry, too many clients already: {} sessions are open (--max-connections)",
                ctx.max_connections
            );
            tracing::warn!(%peer, max = ctx.max_connections, "client refused: too many sessions");
            // At most 32 refusals at once (each may do a TLS handshake); past that the socket
            // is just closed.
            static REFUSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);
            if let Ok(slot) = REFUSING.try_acquire() {
                slot.forget();
                let tls = ctx.auth.tls.clone();
                tokio::spawn(async move {
                    refuse(socket, tls, TOO_MANY_CONNECTIONS, &message).await;
                    REFUSING.add_permits(1);
                });
            }
            continue;
        };
        let ctx = Arc::clone(&ctx);
        let tls = ctx.auth.tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = Arc::new(LazyConn::new(Arc::clone(&ctx)));
            let session = Arc::new_cyclic(|me| Session {
                ctx,
                conn,
                write_turn: tokio::sync::Mutex::new(None),
                parser: Arc::new(NoopQueryParser::new()),
                last_commit: Default::default(),
                idle: Mutex::new(IdleState::default()),
                me: me.clone(),
                settings: Mutex::default(),
            });
            let handlers = Arc::new(Handlers { session });
            if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                tracing::debug!(%peer, error = %e, "client connection ended");
            }
        });
    }
}
