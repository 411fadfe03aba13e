//! The `logdb` SQLite VFS (DESIGN.md §3): the main database file is the volume. Reads come from
//! the shared buffer pool or, on a miss, from storage. Writes of a transaction collect in a
//! per-connection overlay and leave only at the commit point — the batch-atomic-write commit
//! (`SQLITE_FCNTL_COMMIT_ATOMIC_WRITE`) or, when SQLite spilled its cache and fell back to the
//! classic path, the `xSync` of the database file — as redo records diffed against the previous
//! images. Journals and temp files are delegated to the default VFS (the journal mode is MEMORY,
//! so no rollback journal is ever written anywhere, least of all to storage).
//!
//! The commit hands the redo to the shipper and returns at once; the SQL session waits for VDL
//! (`take_commit_lsn`), so SQLite's write lock is never held across a network round trip.
//!
//! The new images go into the shared buffer pool at once, so other sessions read them while
//! the commit may not be durable yet. Reads stay linearizable anyway: each such page remembers
//! its commit LSN until VDL passes it, a read of one raises the thread's read LSN
//! (`take_read_lsn`), and the session answers its client only once VDL has passed that — no
//! client is ever answered with a row a crash could erase.
//!
//! Locking between the connections of the process follows SQLite's five levels over one
//! in-process lock table per volume.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use logdb_types::{Lsn, PageId};
use rusqlite::ffi;

use crate::buffer_pool::BufferPool;
use crate::metrics::ComputeMetrics;
use crate::page_diff;
use crate::replica::Replica;
use crate::shipper::{ShipError, Shipper};

pub const VFS_NAME: &str = "logdb";

/// What the engine is to its volume: the writer (ships redo) or a replica (follows the feed).
pub enum Role {
    Writer(Arc<Shipper>),
    Replica(Arc<Replica>),
}

/// One volume as seen by SQLite: shared by every connection of the process.
pub struct Engine {
    pub page_size: usize,
    pub role: Role,
    pub pool: BufferPool,
    pub metrics: Arc<ComputeMetrics>,
    rt: tokio::runtime::Handle,
    locks: Mutex<LockTable>,
    /// Committed size of the database file, in pages.
    db_pages: Mutex<u64>,
    /// Pages at or above this index were never written: their first write is a PAGE_IMAGE.
    high_water: Mutex<u64>,
    last_error: Mutex<Option<String>>,
    /// Pages in the pool whose commit may not be durable yet, with its LSN, and the highest
    /// such LSN (reads skip the map once VDL has passed it).
    undurable: Mutex<HashMap<u64, Lsn>>,
    undurable_top: AtomicU64,
}

#[derive(Default)]
struct LockTable {
    shared: usize,
    reserved: bool,
    pending: bool,
    exclusive: bool,
}

static LOCK_RELEASED: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// SQLite busy handler: waits for a lock release instead of sleeping blindly. Gives up after
/// about 30 s (SQLITE_BUSY reaches the client as a serialization failure).
pub fn busy_handler(attempt: i32) -> bool {
    if attempt > 30_000 {
        return false;
    }
    let (m, cv) = &LOCK_RELEASED;
    let g = m.lock().expect("lock release");
    let _ = cv
        .wait_timeout(g, Duration::from_millis(1))
        .expect("lock release");
    true
}

fn lock_released() {
    let (m, cv) = &LOCK_RELEASED;
    *m.lock().expect("lock release") += 1;
    cv.notify_all();
}

thread_local! {
    static COMMIT_LSN: Cell<u64> = const { Cell::new(0) };
    static READ_LSN: Cell<u64> = const { Cell::new(0) };
}

/// The highest commit LSN of a page this thread read while that commit was not yet known
/// durable, since the previous call (0: none): what must be durable before an answer.
pub fn take_read_lsn() -> Lsn {
    Lsn(READ_LSN.with(|c| c.replace(0)))
}

/// The commit LSN of the last transaction this thread committed since the previous call.
pub fn take_commit_lsn() -> Lsn {
    Lsn(COMMIT_LSN.with(|c| c.replace(0)))
}

static ENGINES: OnceLock<Mutex<HashMap<String, Arc<Engine>>>> = OnceLock::new();

fn engines() -> &'static Mutex<HashMap<String, Arc<Engine>>> {
    ENGINES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Engine {
    /// Reads the committed database size from page 1's header and makes the engine available to
    /// SQLite under `name` (the path to open with the `logdb` VFS).
    pub fn register(
        name: &str,
        shipper: Arc<Shipper>,
        pool_pages: usize,
        metrics: Arc<ComputeMetrics>,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Engine>, ShipError> {
        Self::register_role(name, Role::Writer(shipper), pool_pages, metrics, rt)
    }

    /// Like [`Engine::register`], for a replica following the writer's feed.
    pub fn register_replica(
        name: &str,
        replica: Arc<Replica>,
        pool_pages: usize,
        metrics: Arc<ComputeMetrics>,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Engine>, ShipError> {
        Self::register_role(name, Role::Replica(replica), pool_pages, metrics, rt)
    }

    fn register_role(
        name: &str,
        role: Role,
        pool_pages: usize,
        metrics: Arc<ComputeMetrics>,
        rt: tokio::runtime::Handle,
    ) -> Result<Arc<Engine>, ShipError> {
        register_vfs();
        let page_size = match &role {
            Role::Writer(s) => s.layout().page_size,
            Role::Replica(r) => r.layout().page_size,
        } as usize;
        let engine = Arc::new(Engine {
            page_size,
            role,
            pool: BufferPool::new(pool_pages),
            metrics,
            rt,
            locks: Mutex::new(LockTable::default()),
            db_pages: Mutex::new(0),
            high_water: Mutex::new(0),
            last_error: Mutex::new(None),
            undurable: Mutex::new(HashMap::new()),
            undurable_top: AtomicU64::new(0),
        });
        let pages = engine.committed_pages()?;
        *engine.db_pages.lock().expect("size") = pages;
        *engine.high_water.lock().expect("hwm") = pages;
        engines()
            .lock()
            .expect("engines")
            .insert(name.to_string(), Arc::clone(&engine));
        Ok(engine)
    }

    /// The database size in pages, from page 1's header (bytes 28..32, big endian).
    fn committed_pages(&self) -> Result<u64, ShipError> {
        let first = self.read_committed(0)?;
        Ok(if first.iter().all(|b| *b == 0) {
            0
        } else {
            u32::from_be_bytes(first[28..32].try_into().expect("4 bytes")) as u64
        })
    }

    /// The writer's shipper (`None` on a replica).
    pub fn writer(&self) -> Option<&Arc<Shipper>> {
        match &self.role {
            Role::Writer(s) => Some(s),
            Role::Replica(_) => None,
        }
    }

    /// The replica's feed state (`None` on the writer).
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        match &self.role {
            Role::Writer(_) => None,
            Role::Replica(r) => Some(r),
        }
    }

    pub fn epoch(&self) -> logdb_types::Epoch {
        match &self.role {
            Role::Writer(s) => s.epoch(),
            Role::Replica(r) => r.epoch(),
        }
    }

    /// Runs `f` holding the volume's exclusive lock: no read transaction is open meanwhile (new
    /// ones wait). A replica applies its feed this way.
    pub fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        loop {
            let mut t = self.locks.lock().expect("locks");
            if !t.pending && !t.exclusive && !t.reserved {
                t.pending = true;
                break;
            }
            drop(t);
            busy_handler(0);
        }
        loop {
            let mut t = self.locks.lock().expect("locks");
            if t.shared == 0 {
                t.exclusive = true;
                break;
            }
            drop(t);
            busy_handler(0);
        }
        let out = f();
        {
            let mut t = self.locks.lock().expect("locks");
            t.exclusive = false;
            t.pending = false;
        }
        lock_released();
        out
    }

    /// Re-reads the database size after the replica moved its read point.
    pub fn refresh_size(&self) {
        match self.committed_pages() {
            Ok(p) => *self.db_pages.lock().expect("size") = p,
            Err(e) => self.set_error(&e),
        }
    }

    /// The committed image of a page: buffer pool, else storage.
    fn read_committed(&self, page: u64) -> Result<Arc<Vec<u8>>, ShipError> {
        if let Some(p) = self.pool.get(PageId(page)) {
            self.metrics.pool_hits.inc();
            self.note_read(page);
            return Ok(p);
        }
        self.metrics.pool_misses.inc();
        let read = match &self.role {
            Role::Writer(s) => self.rt.block_on(s.read_page(PageId(page))),
            Role::Replica(r) => self.rt.block_on(r.read_page(PageId(page))),
        };
        let data = Arc::new(read?);
        // A page evicted before its commit was durable comes back from storage just as new.
        self.note_read(page);
        self.pool.put(PageId(page), Arc::clone(&data));
        Ok(data)
    }

    /// A read of `page` from the pool: if its commit is not known durable, this thread's answer
    /// must wait for it.
    fn note_read(&self, page: u64) {
        let Some(shipper) = self.writer() else {
            return;
        };
        if self.undurable_top.load(Ordering::Acquire) <= shipper.vdl().0 {
            return;
        }
        if let Some(lsn) = self.undurable.lock().expect("undurable").get(&page) {
            if *lsn > shipper.vdl() {
                READ_LSN.with(|c| c.set(c.get().max(lsn.0)));
            }
        }
    }

    /// A commit at `lsn` put `pages` into the pool before it is durable.
    fn committed_undurable(&self, pages: impl Iterator<Item = u64>, lsn: Lsn, vdl: Lsn) {
        let mut map = self.undurable.lock().expect("undurable");
        map.retain(|_, l| *l > vdl);
        for page in pages {
            map.insert(page, lsn);
        }
        self.undurable_top.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// Bytes of the database file as committed (what the volume uses).
    pub fn used_bytes(&self) -> u64 {
        *self.db_pages.lock().expect("size") * self.page_size as u64
    }

    /// The writing transaction ended: what it reached no longer counts as wanted space.
    fn transaction_ended(&self) {
        if let Some(s) = self.writer() {
            s.forget_wanted_pages();
        }
    }

    /// The last storage-side error a VFS call hit (for the SQL error message).
    pub fn take_last_error(&self) -> Option<String> {
        self.last_error.lock().expect("last error").take()
    }

    fn set_error(&self, e: &ShipError) {
        tracing::error!(error = %e, "VFS call failed");
        *self.last_error.lock().expect("last error") = Some(e.to_string());
    }
}

/// Per-connection state of the open main database file.
struct Conn {
    engine: Arc<Engine>,
    lock: c_int,
    overlay: BTreeMap<u64, Arc<Vec<u8>>>,
    /// Size set by this transaction (writes past the end, truncation), in pages.
    size: Option<u64>,
    in_batch: bool,
}

#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    conn: *mut Conn,
}

impl Conn {
    fn size_pages(&self) -> u64 {
        self.size
            .unwrap_or_else(|| *self.engine.db_pages.lock().expect("size"))
    }

    /// The page as this connection sees it: its own uncommitted write, else the committed one.
    fn page(&self, page: u64) -> Result<Arc<Vec<u8>>, ShipError> {
        if let Some(p) = self.overlay.get(&page) {
            return Ok(Arc::clone(p));
        }
        self.engine.read_committed(page)
    }

    /// Ships the overlay as one transaction: diff → redo → shipper; the pool gets the new images.
    fn commit(&mut self) -> Result<(), ShipError> {
        let result = self.ship();
        self.engine.transaction_ended();
        result
    }

    fn ship(&mut self) -> Result<(), ShipError> {
        let overlay = std::mem::take(&mut self.overlay);
        let size = self.size.take();
        if overlay.is_empty() {
            if let Some(s) = size {
                *self.engine.db_pages.lock().expect("size") = s;
            }
            return Ok(());
        }
        let hwm = *self.engine.high_water.lock().expect("hwm");
        let mut changes = Vec::new();
        for (page, new) in &overlay {
            let old = if *page >= hwm {
                None
            } else {
                Some(self.engine.read_committed(*page)?)
            };
            changes.extend(page_diff::diff(
                PageId(*page),
                old.as_deref().map(|v| v.as_slice()),
                new,
            ));
        }
        let Some(shipper) = self.engine.writer() else {
            return Err(ShipError::ReadOnly);
        };
        let lsn = shipper.append(changes)?;
        // Known as not durable before any other session can read the new images.
        self.engine
            .committed_undurable(overlay.keys().copied(), lsn, shipper.vdl());
        for (page, new) in overlay {
            self.engine.pool.put(PageId(page), new);
        }
        let new_size = size.unwrap_or_else(|| *self.engine.db_pages.lock().expect("size"));
        *self.engine.db_pages.lock().expect("size") = new_size;
        let mut h = self.engine.high_water.lock().expect("hwm");
        *h = (*h).max(new_size);
        drop(h);
        if lsn > Lsn::ZERO {
            COMMIT_LSN.with(|c| c.set(c.get().max(lsn.0)));
        }
        Ok(())
    }
}

unsafe fn conn<'a>(f: *mut ffi::sqlite3_file) -> &'a mut Conn {
    // SAFETY: SQLite passes back the file it had us open; `conn` was set in x_open.
    unsafe { &mut *(*(f as *mut File)).conn }
}

const MAIN_IO: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

struct VfsPtrs {
    default: *mut ffi::sqlite3_vfs,
}
// SAFETY: the pointer is set once and points at the default VFS, which lives for the process.
unsafe impl Send for VfsPtrs {}
unsafe impl Sync for VfsPtrs {}

static VFS: OnceLock<VfsPtrs> = OnceLock::new();

fn register_vfs() {
    VFS.get_or_init(|| unsafe {
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, valid for the process.
        let default = ffi::sqlite3_vfs_find(std::ptr::null());
        assert!(!default.is_null(), "SQLite has no default VFS");
        let mut ours: ffi::sqlite3_vfs = *default;
        ours.iVersion = (*default).iVersion.min(3);
        ours.szOsFile = (*default)
            .szOsFile
            .max(std::mem::size_of::<File>() as c_int);
        ours.zName = c"logdb".as_ptr();
        ours.pNext = std::ptr::null_mut();
        ours.pAppData = std::ptr::null_mut();
        ours.xOpen = Some(x_open);
        ours.xFullPathname = Some(x_full_pathname);
        let ours = Box::into_raw(Box::new(ours));
        let rc = ffi::sqlite3_vfs_register(ours, 0);
        assert_eq!(rc, ffi::SQLITE_OK, "registering the logdb VFS");
        VfsPtrs { default }
    });
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let ptrs = VFS.get().expect("registered");
    let is_main = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
    if !is_main || name.is_null() {
        // SAFETY: the default VFS accepts the same arguments; our szOsFile is at least its own.
        return unsafe {
            ((*ptrs.default).xOpen.expect("xOpen"))(ptrs.default, name, file, flags, out_flags)
        };
    }
    // SAFETY: SQLite hands a NUL-terminated name.
    let key = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    let Some(engine) = engines().lock().expect("engines").get(&key).cloned() else {
        tracing::error!(name = %key, "no logdb volume registered under this name");
        return ffi::SQLITE_CANTOPEN;
    };
    let c = Box::new(Conn {
        engine,
        lock: ffi::SQLITE_LOCK_NONE,
        overlay: BTreeMap::new(),
        size: None,
        in_batch: false,
    });
    // SAFETY: `file` points at szOsFile bytes owned by SQLite.
    unsafe {
        let f = file as *mut File;
        (*f).base.pMethods = &MAIN_IO;
        (*f).conn = Box::into_raw(c);
        if !out_flags.is_null() {
            *out_flags = flags;
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    // Volume names are not file system paths: keep them as they are.
    // SAFETY: SQLite passes a NUL-terminated name and an output buffer of n_out bytes.
    unsafe {
        let bytes = CStr::from_ptr(name).to_bytes_with_nul();
        if bytes.len() > n_out as usize {
            return ffi::SQLITE_CANTOPEN;
        }
        std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, bytes.len());
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `conn` came from Box::into_raw in x_open and is closed once.
    unsafe {
        let file = f as *mut File;
        let c = Box::from_raw((*file).conn);
        release(&c.engine, c.lock, ffi::SQLITE_LOCK_NONE);
        (*file).conn = std::ptr::null_mut();
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_read(
    f: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    let c = unsafe { conn(f) };
    // SAFETY: SQLite gives a buffer of `amt` bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, amt as usize) };
    let ps = c.engine.page_size as u64;
    let size = c.size_pages() * ps;
    let mut done = 0usize;
    while done < out.len() {
        let pos = off as u64 + done as u64;
        if pos >= size {
            out[done..].fill(0);
            return ffi::SQLITE_IOERR_SHORT_READ;
        }
        let page = pos / ps;
        let within = (pos % ps) as usize;
        let n = (ps as usize - within).min(out.len() - done);
        match c.page(page) {
            Ok(p) => out[done..done + n].copy_from_slice(&p[within..within + n]),
            Err(e) => {
                c.engine.set_error(&e);
                return ffi::SQLITE_IOERR_READ;
            }
        }
        done += n;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: i64,
) -> c_int {
    let c = unsafe { conn(f) };
    // SAFETY: SQLite gives `amt` readable bytes.
    let data = unsafe { std::slice::from_raw_parts(buf as *const u8, amt as usize) };
    let ps = c.engine.page_size;
    let mut done = 0usize;
    while done < data.len() {
        let pos = off as u64 + done as u64;
        let page = pos / ps as u64;
        let within = (pos % ps as u64) as usize;
        let n = (ps - within).min(data.len() - done);
        let image = if within == 0 && n == ps {
            Arc::new(data[done..done + n].to_vec())
        } else {
            // A partial write patches the page as this connection sees it (copy on write).
            let current = if let Some(own) = c.overlay.remove(&page) {
                Ok(own)
            } else if page < c.size_pages() {
                c.engine.read_committed(page)
            } else {
                Ok(Arc::new(vec![0; ps]))
            };
            let mut image = match current {
                Ok(p) => p,
                Err(e) => {
                    c.engine.set_error(&e);
                    return ffi::SQLITE_IOERR_WRITE;
                }
            };
            Arc::make_mut(&mut image)[within..within + n].copy_from_slice(&data[done..done + n]);
            image
        };
        c.overlay.insert(page, image);
        if page + 1 > c.size_pages() {
            c.size = Some(page + 1);
            if let Some(s) = c.engine.writer() {
                // Growth on demand: the PGs this transaction will need are asked for now.
                s.want_pages(page + 1);
            }
        }
        done += n;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let c = unsafe { conn(f) };
    let pages = size as u64 / c.engine.page_size as u64;
    c.overlay.retain(|p, _| *p < pages);
    c.size = Some(pages);
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    let c = unsafe { conn(f) };
    if c.in_batch {
        return ffi::SQLITE_OK;
    }
    commit_rc(c)
}

fn commit_rc(c: &mut Conn) -> c_int {
    match c.commit() {
        Ok(()) => ffi::SQLITE_OK,
        Err(e) => {
            c.engine.set_error(&e);
            match e {
                ShipError::VolumeFull(..)
                | ShipError::VolumeMax { .. }
                | ShipError::GrowthTimeout { .. } => ffi::SQLITE_FULL,
                _ => ffi::SQLITE_IOERR_WRITE,
            }
        }
    }
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, out: *mut i64) -> c_int {
    let c = unsafe { conn(f) };
    // SAFETY: SQLite passes a valid out pointer.
    unsafe { *out = (c.size_pages() * c.engine.page_size as u64) as i64 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let c = unsafe { conn(f) };
    if c.lock >= level {
        return ffi::SQLITE_OK;
    }
    let mut t = c.engine.locks.lock().expect("locks");
    match level {
        ffi::SQLITE_LOCK_SHARED => {
            if t.pending || t.exclusive {
                return ffi::SQLITE_BUSY;
            }
            t.shared += 1;
            c.lock = level;
        }
        ffi::SQLITE_LOCK_RESERVED => {
            if t.reserved || t.pending || t.exclusive {
                return ffi::SQLITE_BUSY;
            }
            t.reserved = true;
            c.lock = level;
        }
        ffi::SQLITE_LOCK_EXCLUSIVE => {
            if c.lock < ffi::SQLITE_LOCK_PENDING {
                if t.pending || t.exclusive {
                    return ffi::SQLITE_BUSY;
                }
                t.pending = true;
                c.lock = ffi::SQLITE_LOCK_PENDING;
            }
            // Our own SHARED lock is one of the holders.
            if t.shared > 1 {
                return ffi::SQLITE_BUSY;
            }
            t.exclusive = true;
            c.lock = level;
        }
        _ => return ffi::SQLITE_MISUSE,
    }
    ffi::SQLITE_OK
}

fn release(engine: &Engine, from: c_int, to: c_int) {
    if from <= to {
        return;
    }
    let mut t = engine.locks.lock().expect("locks");
    if from >= ffi::SQLITE_LOCK_EXCLUSIVE && to < ffi::SQLITE_LOCK_EXCLUSIVE {
        t.exclusive = false;
    }
    if from >= ffi::SQLITE_LOCK_PENDING && to < ffi::SQLITE_LOCK_PENDING {
        t.pending = false;
    }
    if from >= ffi::SQLITE_LOCK_RESERVED && to < ffi::SQLITE_LOCK_RESERVED {
        t.reserved = false;
    }
    if from >= ffi::SQLITE_LOCK_SHARED && to < ffi::SQLITE_LOCK_SHARED {
        t.shared -= 1;
    }
    drop(t);
    lock_released();
}

unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let c = unsafe { conn(f) };
    if level < ffi::SQLITE_LOCK_RESERVED && !c.overlay.is_empty() && !c.in_batch {
        // The transaction ended without a sync: a rollback of spilled pages. Nothing leaves.
        c.overlay.clear();
        c.size = None;
        c.engine.transaction_ended();
    }
    release(&c.engine, c.lock, level);
    c.lock = c.lock.min(level);
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let c = unsafe { conn(f) };
    let t = c.engine.locks.lock().expect("locks");
    // SAFETY: valid out pointer from SQLite.
    unsafe { *out = (t.reserved || t.pending || t.exclusive) as c_int };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_file_control(
    f: *mut ffi::sqlite3_file,
    op: c_int,
    _arg: *mut c_void,
) -> c_int {
    let c = unsafe { conn(f) };
    match op {
        ffi::SQLITE_FCNTL_BEGIN_ATOMIC_WRITE => {
            c.in_batch = true;
            ffi::SQLITE_OK
        }
        ffi::SQLITE_FCNTL_COMMIT_ATOMIC_WRITE => {
            c.in_batch = false;
            commit_rc(c)
        }
        ffi::SQLITE_FCNTL_ROLLBACK_ATOMIC_WRITE => {
            c.in_batch = false;
            c.overlay.clear();
            c.size = None;
            c.engine.transaction_ended();
            ffi::SQLITE_OK
        }
        _ => ffi::SQLITE_NOTFOUND,
    }
}

unsafe extern "C" fn x_sector_size(_f: *mut ffi::sqlite3_file) -> c_int {
    4096
}

unsafe extern "C" fn x_device_characteristics(_f: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_BATCH_ATOMIC | ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
}

/// Waits (bounded) until no connection holds a lock — used by tests and shutdown.
pub fn wait_idle(engine: &Engine, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let t = engine.locks.lock().expect("locks");
            if t.shared == 0 && !t.reserved && !t.pending && !t.exclusive {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        busy_handler(0);
    }
}
