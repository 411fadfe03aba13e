//! A segment's durable log: append-only files of frames, made durable by a group-commit flusher.
//!
//! Writers push encoded frames and get a ticket; one flusher thread per segment writes everything
//! pushed so far, fsyncs once, and publishes the highest durable ticket. Requests that arrive while
//! an fsync is running share the next one, so concurrent streams pay for one fsync per round, not
//! one each. Nothing is acknowledged before its ticket is durable. Files rotate at a size limit so
//! the coalescer can delete whole files once their records are materialized and out of retention.
//!
//! A full disk is not a failure of the log: pushes are refused while the node's `SpaceGuard`
//! says the reserve is taken, and if a round still meets ENOSPC the flusher cuts what it wrote of
//! the round back off, reports every ticket of it (and of what was queued behind it) as lost —
//! none was acknowledged — rotates to a fresh file and goes on. Other write errors (EIO) fail the
//! log for good: after a failed fsync nothing written to that disk can be trusted.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use crate::disk_space::{self, NoSpace, SpaceGuard};
use crate::frame::{self, LoggedRecord};
use logdb_types::Lsn;

/// Where a frame sits: file sequence number, byte offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub file: u64,
    pub offset: u64,
    pub len: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("log of this segment failed earlier and accepts no more writes: {0}")]
    Failed(String),
    #[error("corrupt log frame at {path}:{offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("log file {0} is gone (removed by retention)")]
    Missing(u64),
    #[error(transparent)]
    NoSpace(#[from] NoSpace),
}

/// How a segment's log is written: its file size and the node's disk guard.
#[derive(Clone)]
pub struct LogOptions {
    pub file_bytes: u64,
    pub space: Arc<SpaceGuard>,
}

impl LogOptions {
    /// Files of `file_bytes`, no space check (tests of other parts).
    pub fn unguarded(file_bytes: u64) -> LogOptions {
        LogOptions {
            file_bytes,
            space: Arc::new(SpaceGuard::off(Path::new("/"))),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug, Default)]
struct Durable {
    /// Every ticket up to this one is durable, except those in `lost`.
    ticket: u64,
    /// Tickets of rounds the disk refused (first, last): never written, never acknowledged.
    lost: Vec<(u64, u64)>,
    /// Why the log takes no more writes (a write error other than a full disk).
    failed: Option<String>,
    /// The refusal the lost rounds met.
    no_space: Option<NoSpace>,
}

impl Durable {
    fn lost(&self, ticket: u64) -> bool {
        self.lost.iter().any(|(a, b)| (*a..=*b).contains(&ticket))
    }
}

struct Appender {
    chunks: Vec<(u64, Vec<u8>)>,
    cur_file: u64,
    cur_len: u64,
    next_ticket: u64,
    closed: bool,
}

struct FileInfo {
    min_lsn: Lsn,
    max_lsn: Lsn,
    reader: Option<Arc<File>>,
}

/// What replay found in the log files.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub frames: u64,
    /// Damaged frames with valid frames after them: records this node had and lost.
    pub corrupt: Vec<String>,
    /// Bytes cut from the end of the last file (a write the crash interrupted; never acked).
    pub torn_tail_bytes: u64,
}

pub struct SegmentLog {
    dir: PathBuf,
    max_file_bytes: u64,
    space: Arc<SpaceGuard>,
    appender: Mutex<Appender>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    files: Mutex<BTreeMap<u64, FileInfo>>,
    fsyncs: AtomicU64,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn file_name(seq: u64) -> String {
    format!("log-{seq:016}.seg")
}

impl SegmentLog {
    /// Opens the log in `dir`, replaying every frame through `visit` in file order, then starts
    /// the flusher. New appends go to a fresh file.
    pub fn open(
        dir: &Path,
        options: &LogOptions,
        mut visit: impl FnMut(LoggedRecord, Loc),
    ) -> Result<(Arc<SegmentLog>, ReplayReport), LogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut seqs: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("log-")?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()
            })
            .collect();
        seqs.sort_unstable();
        // What a crashed process wrote may still be only in the page cache: make every file (and
        // the directory) durable before replay trusts a frame of it, since whatever replay reads
        // is acknowledged as held from now on.
        for &seq in &seqs {
            let path = dir.join(file_name(seq));
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        let mut report = ReplayReport::default();
        let mut files = BTreeMap::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let path = dir.join(file_name(seq));
            let (min_lsn, max_lsn) = replay_file(&path, seq, last, &mut report, &mut visit)?;
            files.insert(
                seq,
                FileInfo {
                    min_lsn,
                    max_lsn,
                    reader: None,
                },
            );
        }
        let first_new = seqs.last().map_or(1, |s| s + 1);
        let log = Arc::new(SegmentLog {
            dir: dir.to_path_buf(),
            max_file_bytes: options.file_bytes,
            space: Arc::clone(&options.space),
            appender: Mutex::new(Appender {
                chunks: Vec::new(),
                cur_file: first_new,
                cur_len: 0,
                next_ticket: 1,
                closed: false,
            }),
            wake: Condvar::new(),
            durable: watch::Sender::new(Durable::default()),
            files: Mutex::new(files),
            fsyncs: AtomicU64::new(0),
            flusher: Mutex::new(None),
        });
        let worker = Arc::clone(&log);
        let handle = std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || worker.flush_loop())
            .map_err(io_err(dir))?;
        *log.flusher.lock().expect("flusher lock") = Some(handle);
        Ok((log, report))
    }

    /// Queues `frames` (one encoded frame per record, with the record's LSN) for the next fsync.
    /// Returns the ticket to wait for and where each frame will sit.
    pub fn push(&self, frames: &[(Lsn, Vec<u8>)]) -> Result<(u64, Vec<Loc>), LogError> {
        if let Some(err) = self.durable.borrow().failed.clone() {
            return Err(LogError::Failed(err));
        }
        let total: u64 = frames.iter().map(|(_, f)| f.len() as u64).sum();
        self.space.admit(total)?;
        let max_lsn = frames.iter().map(|(l, _)| *l).max().unwrap_or_default();
        let min_lsn = frames.iter().map(|(l, _)| *l).min().unwrap_or_default();
        let mut a = self.appender.lock().expect("appender lock");
        if a.cur_len > 0 && a.cur_len + total > self.max_file_bytes {
            a.cur_file += 1;
            a.cur_len = 0;
        }
        let file = a.cur_file;
        let mut locs = Vec::with_capacity(frames.len());
        let mut bytes = Vec::with_capacity(total as usize);
        for (_, f) in frames {
            locs.push(Loc {
                file,
                offset: a.cur_len + bytes.len() as u64,
                len: f.len() as u32,
            });
            bytes.extend_from_slice(f);
        }
        a.cur_len += total;
        match a.chunks.last_mut() {
            Some((f, buf)) if *f == file => buf.extend_from_slice(&bytes),
            _ => a.chunks.push((file, bytes)),
        }
        let ticket = a.next_ticket;
        a.next_ticket += 1;
        {
            let mut files = self.files.lock().expect("files lock");
            let info = files.entry(file).or_insert(FileInfo {
                min_lsn,
                max_lsn: Lsn::ZERO,
                reader: None,
            });
            info.min_lsn = info.min_lsn.min(min_lsn);
            info.max_lsn = info.max_lsn.max(max_lsn);
        }
        drop(a);
        self.wake.notify_one();
        Ok((ticket, locs))
    }

    /// The ticket of the newest push (0: none yet).
    #[cfg(test)]
    pub(crate) fn last_ticket(&self) -> u64 {
        self.appender.lock().expect("appender lock").next_ticket - 1
    }

    /// Resolves once `ticket` is fsynced.
    pub async fn wait_durable(&self, ticket: u64) -> Result<(), LogError> {
        let mut rx = self.durable.subscribe();
        let d = rx
            .wait_for(|d| d.lost(ticket) || d.ticket >= ticket || d.failed.is_some())
            .await
            .map_err(|_| LogError::Failed("log closed".into()))?;
        if d.lost(ticket) {
            let refusal = d.no_space.clone().expect("lost rounds say why");
            return Err(LogError::NoSpace(refusal));
        }
        match &d.failed {
            Some(e) if d.ticket < ticket => Err(LogError::Failed(e.clone())),
            _ => Ok(()),
        }
    }

    fn flush_loop(&self) {
        // Open files and how much of each is durable.
        let mut open: BTreeMap<u64, (File, u64)> = BTreeMap::new();
        let mut first = 1;
        loop {
            let (chunks, ticket) = {
                let mut a = self.appender.lock().expect("appender lock");
                while a.chunks.is_empty() && !a.closed {
                    a = self.wake.wait(a).expect("appender lock");
                }
                if a.chunks.is_empty() && a.closed {
                    return;
                }
                (std::mem::take(&mut a.chunks), a.next_ticket - 1)
            };
            match self.write_and_sync(&mut open, chunks) {
                Ok(()) => {}
                Err((e, true)) => match self.undo_round(&mut open, first) {
                    Ok(last) => {
                        first = last + 1;
                        continue;
                    }
                    Err(undo) => {
                        let msg = format!("{e}; then, undoing the round: {undo}");
                        tracing::error!(dir = %self.dir.display(), error = %msg, "segment log write failed");
                        self.durable.send_modify(|d| d.failed = Some(msg));
                        return;
                    }
                },
                Err((e, false)) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "segment log write failed");
                    self.durable.send_modify(|d| d.failed = Some(e.to_string()));
                    return;
                }
            }
            first = ticket + 1;
            self.durable.send_modify(|d| d.ticket = ticket);
        }
    }

    /// The disk refused part of a round: cuts every file back to what was durable, drops what
    /// was queued behind the round (its frames' places assumed the round's bytes), moves new
    /// appends to a fresh file and reports tickets `first..` up to the last queued as lost.
    fn undo_round(
        &self,
        open: &mut BTreeMap<u64, (File, u64)>,
        first: u64,
    ) -> Result<u64, LogError> {
        for (seq, (f, durable)) in open.iter() {
            let path = self.dir.join(file_name(*seq));
            f.set_len(*durable).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }

        self.space.exhausted();
        let free = self.space.space().free;
        let mut a = self.appender.lock().expect("appender lock");
        a.chunks.clear();
        // Files the lost pushes were headed for that were never created: not part of the log.
        self.files
            .lock()
            .expect("files lock")
            .retain(|seq, _| self.dir.join(file_name(*seq)).exists());
        let last = a.next_ticket - 1;
        a.cur_file = a
            .cur_file
            .max(open.keys().next_back().copied().unwrap_or(0))
            + 1;
        a.cur_len = 0;
        open.clear();
        let refusal = NoSpace {
            dir: self.dir.clone(),
            free,
            reserve: self.space.reserve(),
        };
        tracing::warn!(dir = %self.dir.display(), tickets = ?(first, last), "the disk is full: the log's round was cut back, its writes refused; writes resume when space returns");
        self.durable.send_modify(|d| {
            d.ticket = d.ticket.max(first - 1);
            match d.lost.last_mut() {
                Some(range) if range.1 + 1 == first => range.1 = last,
                _ => d.lost.push((first, last)),
            }
            d.no_space = Some(refusal);
        });
        drop(a);
        Ok(last)
    }

    /// Writes and fsyncs a round; an error says whether it was the disk being full.
    fn write_and_sync(
        &self,
        open: &mut BTreeMap<u64, (File, u64)>,
        chunks: Vec<(u64, Vec<u8>)>,
    ) -> Result<(), (LogError, bool)> {
        let full = |e: LogError| {
            let no_space =
                matches!(&e, LogError::Io { source, .. } if disk_space::is_no_space(source));
            (e, no_space)
        };
        let mut touched = Vec::new();
        for (seq, bytes) in chunks {
            let (f, _) = match open.entry(seq) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let path = self.dir.join(file_name(seq));
                    let f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(io_err(&path))
                        .map_err(full)?;
                    // The new file's directory entry must be durable too.
                    File::open(&self.dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io_err(&self.dir))
                        .map_err(full)?;
                    let len = f.metadata().map_err(io_err(&path)).map_err(full)?.len();
                    v.insert((f, len))
                }
            };
            f.write_all(&bytes)
                .map_err(io_err(&self.dir))
                .map_err(full)?;
            if !touched.contains(&seq) {
                touched.push(seq);
            }
        }
        // Every file this round wrote is synced before the round counts as durable — also one
        // that a rotation in this round completed; only then are completed files closed.
        for seq in &touched {
            let (f, _) = open.get(seq).expect("touched files are open");
            f.sync_data().map_err(io_err(&self.dir)).map_err(full)?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        for seq in touched {
            let (f, durable) = open.get_mut(&seq).expect("touched files are open");
            *durable = f
                .metadata()
                .map_err(io_err(&self.dir))
                .map_err(|e| (e, false))?
                .len();
        }
        if let Some(&newest) = open.keys().next_back() {
            open.retain(|s, _| *s == newest);
        }
        Ok(())
    }

    /// Reads back one durable frame.
    pub fn read(&self, loc: Loc) -> Result<LoggedRecord, LogError> {
        let path = self.dir.join(file_name(loc.file));
        let reader = {
            let mut files = self.files.lock().expect("files lock");
            let info = files
                .get_mut(&loc.file)
                .ok_or(LogError::Missing(loc.file))?;
            match &info.reader {
                Some(r) => Arc::clone(r),
                None => {
                    let r = Arc::new(File::open(&path).map_err(io_err(&path))?);
                    info.reader = Some(Arc::clone(&r));
                    r
                }
            }
        };
        let mut buf = vec![0; loc.len as usize];
        reader
            .read_exact_at(&mut buf, loc.offset)
            .map_err(io_err(&path))?;
        frame::parse(&buf)
            .map(|(f, _)| f)
            .map_err(|e| LogError::Corrupt {
                path,
                offset: loc.offset,
                reason: e.to_string(),
            })
    }

    /// Visits every durable frame with an LSN in `[from, to]`, file by file (a file's frames
    /// in the order they were appended; only files whose LSN range meets `[from, to]` are
    /// read). What the flusher has not written yet is not visited.
    pub fn scan(
        &self,
        from: Lsn,
        to: Lsn,
        mut visit: impl FnMut(LoggedRecord),
    ) -> Result<(), LogError> {
        for seq in self.files_where(|i| i.max_lsn >= from && i.min_lsn <= to) {
            self.scan_file(seq, |f| {
                if f.record.lsn >= from && f.record.lsn <= to {
                    visit(f);
                }
            })?;
        }
        Ok(())
    }

    /// The durable frame with the highest LSN at or below `at` that `keep` accepts.
    pub fn highest_at_or_below(
        &self,
        at: Lsn,
        keep: impl Fn(&LoggedRecord) -> bool,
    ) -> Result<Option<LoggedRecord>, LogError> {
        let mut best: Option<LoggedRecord> = None;
        let mut seqs = self.files_where(|i| i.min_lsn <= at);
        // Newest files first: once the best found is above a file's highest LSN, it is out.
        seqs.reverse();
        for seq in seqs {
            let max = self
                .files
                .lock()
                .expect("files lock")
                .get(&seq)
                .map(|i| i.max_lsn);
            if best
                .as_ref()
                .is_some_and(|b| max.is_none_or(|m| m <= b.record.lsn))
            {
                continue;
            }
            self.scan_file(seq, |f| {
                if f.record.lsn <= at
                    && keep(&f)
                    && best.as_ref().is_none_or(|b| f.record.lsn > b.record.lsn)
                {
                    best = Some(f);
                }
            })?;
        }
        Ok(best)
    }

    fn files_where(&self, pred: impl Fn(&FileInfo) -> bool) -> Vec<u64> {
        self.files
            .lock()
            .expect("files lock")
            .iter()
            .filter(|(_, i)| pred(i))
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Reads the durable part of one file (a file retention removed meanwhile reads as empty).
    fn scan_file(&self, seq: u64, mut visit: impl FnMut(LoggedRecord)) -> Result<(), LogError> {
        let path = self.dir.join(file_name(seq));
        let buf = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(LogError::Io { path, source: e }),
        };
        let mut at = 0usize;
        while at < buf.len() {
            match frame::parse(&buf[at..]) {
                Ok((f, used)) => {
                    visit(f);
                    at += used;
                }
                // A frame the flusher is writing, or one replay reported as damaged.
                Err(_) => match frame::resync(&buf, at + 1) {
                    Some(next) => at = next,
                    None => break,
                },
            }
        }
        Ok(())
    }

    /// Bytes of the log files on disk.
    pub fn bytes_on_disk(&self) -> u64 {
        let seqs = self.files_where(|_| true);
        seqs.iter()
            .filter_map(|seq| fs::metadata(self.dir.join(file_name(*seq))).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Deletes every file whose records are all at or below `horizon`, except the one being
    /// appended to. Returns how many were removed.
    pub fn remove_files_through(&self, horizon: Lsn) -> Result<usize, LogError> {
        let current = self.appender.lock().expect("appender lock").cur_file;
        let doomed: Vec<u64> = {
            let files = self.files.lock().expect("files lock");
            files
                .iter()
                .filter(|(seq, info)| **seq < current && info.max_lsn <= horizon)
                .map(|(seq, _)| *seq)
                .collect()
        };
        for seq in &doomed {
            // Out of the map first: a reader then gets `Missing` (and retries on a fresh
            // snapshot), never an I/O error for a file retention took.
            self.files.lock().expect("files lock").remove(seq);
            let path = self.dir.join(file_name(*seq));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::Io { path, source: e }),
            }
        }
        Ok(doomed.len())
    }

    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    pub fn file_count(&self) -> usize {
        self.files.lock().expect("files lock").len()
    }

    /// Stops the flusher after it has written and fsynced everything pushed.
    pub fn close(&self) {
        self.appender.lock().expect("appender lock").closed = true;
        self.wake.notify_all();
        if let Some(h) = self.flusher.lock().expect("flusher lock").take() {
            let _ = h.join();
        }
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        self.appender.lock().expect("appender lock").closed = true;
        self.wake.notify_all();
    }
}

/// Replays one file; returns the highest LSN in it.
fn replay_file(
    path: &Path,
    seq: u64,
    last: bool,
    report: &mut ReplayReport,
    visit: &mut impl FnMut(LoggedRecord, Loc),
) -> Result<(Lsn, Lsn), LogError> {
    let buf = fs::read(path).map_err(io_err(path))?;
    let mut at = 0usize;
    let mut max_lsn = Lsn::ZERO;
    let mut min_lsn = Lsn(u64::MAX);
    while at < buf.len() {
        match frame::parse(&buf[at..]) {
            Ok((f, used)) => {
                max_lsn = max_lsn.max(f.record.lsn);
                min_lsn = min_lsn.min(f.record.lsn);
                report.frames += 1;
                visit(
                    f,
                    Loc {
                        file: seq,
                        offset: at as u64,
                        len: used as u32,
                    },
                );
                at += used;
            }
            Err(e) => match frame::resync(&buf, at + 1) {
                Some(next) => {
                    let msg = format!("{}:{at}: {e}; skipped {} bytes", path.display(), next - at);
                    tracing::error!(%msg, "corrupt log frame: the record is lost on this node");
                    report.corrupt.push(msg);
                    at = next;
                }
                None if last => {
                    // A torn tail: an append the crash interrupted, never acknowledged.
                    let cut = (buf.len() - at) as u64;
                    tracing::warn!(file = %path.display(), bytes = cut, reason = %e, "cutting torn log tail");
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_err(path))?;
                    f.set_len(at as u64).map_err(io_err(path))?;
                    f.sync_all().map_err(io_err(path))?;
                    report.torn_tail_bytes += cut;
                    break;
                }
                None => {
                    let msg = format!("{}:{at}: {e}; rest of file unreadable", path.display());
                    tracing::error!(%msg, "corrupt log frame: the records are lost on this node");
                    report.corrupt.push(msg);
                    break;
                }
            },
        }
    }
    Ok((min_lsn.min(max_lsn), max_lsn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdb_types::record::{RecordKind, RedoRecord};
    use logdb_types::{Epoch, PageId};

    fn frame_for(lsn: u64) -> (Lsn, Vec<u8>) {
        frame_of(lsn, 100)
    }

    fn frame_of(lsn: u64, len: usize) -> (Lsn, Vec<u8>) {
        let r = RedoRecord::new(
            Lsn(lsn),
            Lsn(lsn - 1),
            1,
            PageId(0),
            0,
            RecordKind::Delta,
            0,
            0,
            vec![1; len],
        );
        let mut buf = Vec::new();
        frame::encode_record(Epoch(1), &r, &mut buf);
        (Lsn(lsn), buf)
    }

    #[tokio::test]
    async fn a_round_that_rotates_syncs_the_file_it_completed() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) =
            SegmentLog::open(dir.path(), &LogOptions::unguarded(1000), |_, _| {}).unwrap();
        // One flush round holding the end of file 1 and the start of file 2.
        let (_, a) = frame_for(1);
        let (_, b) = frame_for(2);
        let mut open = BTreeMap::new();
        let before = log.fsyncs();
        log.write_and_sync(&mut open, vec![(1, a), (2, b)]).unwrap();
        assert_eq!(log.fsyncs() - before, 2, "both files synced");
        assert_eq!(
            open.keys().copied().collect::<Vec<_>>(),
            [2],
            "only the newest stays open"
        );
        log.close();
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) =
            SegmentLog::open(dir.path(), &LogOptions::unguarded(1000), |_, _| {}).unwrap();
        let mut last = 0;
        for lsn in 1..=20 {
            let (t, locs) = log.push(&[frame_for(lsn)]).unwrap();
            assert_eq!(locs.len(), 1);
            last = t;
        }
        log.wait_durable(last).await.unwrap();
        assert!(log.file_count() > 1, "rotated at 1000 bytes");
        log.close();
        drop(log);
        let mut seen = Vec::new();
        let (_log, report) = SegmentLog::open(dir.path(), &LogOptions::unguarded(1000), |f, _| {
            seen.push(f.record.lsn.0)
        })
        .unwrap();
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
        assert!(report.corrupt.is_empty());
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_corruption_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) =
            SegmentLog::open(dir.path(), &LogOptions::unguarded(1 << 20), |_, _| {}).unwrap();
        let (t, _) = log
            .push(&[frame_for(1), frame_for(2), frame_for(3)])
            .unwrap();
        log.wait_durable(t).await.unwrap();
        log.close();
        drop(log);
        let path = dir.path().join(file_name(1));
        let mut bytes = fs::read(&path).unwrap();
        let one = frame_for(1).1.len();
        bytes[one + 50] ^= 0xff; // damage record 2
        bytes.extend_from_slice(&frame_for(4).1[..30]); // torn append
        fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        let (_log, report) =
            SegmentLog::open(dir.path(), &LogOptions::unguarded(1 << 20), |f, _| {
                seen.push(f.record.lsn.0)
            })
            .unwrap();
        assert_eq!(seen, vec![1, 3]);
        assert_eq!(report.corrupt.len(), 1, "{:?}", report.corrupt);
        assert_eq!(report.torn_tail_bytes, 30);
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            bytes.len() - 30
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_loses_only_the_refused_round_and_the_log_goes_on_when_space_returns() {
        let disk = crate::testkit::SmallDisk::mount(1 << 20);
        let options = LogOptions {
            file_bytes: 256 << 10,
            space: Arc::new(SpaceGuard::new(&disk.dir, Some(0)).unwrap()),
        };
        let (log, _) = SegmentLog::open(&disk.dir, &options, |_, _| {}).unwrap();
        let mut acked = Vec::new();
        let mut refusal = None;
        for lsn in 1..=1000u64 {
            let (ticket, _) = match log.push(&[frame_of(lsn, 16 << 10)]) {
                Ok(t) => t,
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            };
            match log.wait_durable(ticket).await {
                Ok(()) => acked.push(lsn),
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            }
        }
        let refusal = refusal.expect("a 1 MiB disk fills");
        assert!(
            matches!(refusal, LogError::NoSpace(_)),
            "refused as a full disk, not failed: {refusal}"
        );
        assert!(acked.len() > 20, "{} records fit", acked.len());
        // Still full: refused again at once, and nothing half-written is left to replay.
        let next = *acked.last().unwrap() + 1;
        assert!(matches!(
            log.push(&[frame_of(next, 16 << 10)]),
            Err(LogError::NoSpace(_))
        ));

        disk.resize(4 << 20);
        let (ticket, _) = log
            .push(&[frame_of(next, 16 << 10)])
            .expect("space returned: the log takes writes again");
        log.wait_durable(ticket).await.expect("durable");
        acked.push(next);
        log.close();
        drop(log);

        let mut seen = Vec::new();
        let (_log, report) =
            SegmentLog::open(&disk.dir, &options, |f, _| seen.push(f.record.lsn.0)).unwrap();
        assert_eq!(seen, acked, "exactly the acknowledged records, in order");
        assert!(report.corrupt.is_empty(), "{:?}", report.corrupt);
        assert_eq!(report.torn_tail_bytes, 0);
    }
}
