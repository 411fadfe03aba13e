//! A storage node: the segments it holds (many volumes, many PGs), found on disk at start, and the
//! per-volume epochs they share. Layout: `<data>/node.json` (identity), then
//! `<data>/segments/<volume>/<segment>/{pages.redb, log/}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::disk_space::SpaceGuard;
use crate::fencing::VolumeEpochs;
use crate::metrics::Metrics;
use crate::page_store::Descriptor;
use crate::segment::{Segment, SegmentError};
use crate::segment_log::LogOptions;
use logdb_types::{Epoch, PageId, PgIndex, SegmentKey};

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub node_id: String,
    pub zone: String,
    /// Largest accepted WriteRecords batch (record bytes plus per-record overhead).
    pub max_batch_bytes: usize,
    /// Log files rotate at this size.
    pub log_file_bytes: u64,
    /// Retention used when a segment is created without one.
    pub default_retention_secs: u64,
    /// Free bytes of the data disk kept back from the logs (`None`: 2% of the disk within
    /// 4 MiB..1 GiB; `Some(0)`: no check). See `disk_space`.
    pub min_free_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Invalid(String),
    #[error("unknown segment {segment} of volume {volume} on this node")]
    UnknownSegment { volume: String, segment: String },
    #[error("volume {volume} has no segment holding page {page} on this node")]
    NoSegmentForPage { volume: String, page: PageId },
    #[error("segment {0} already exists with a different layout: {1}")]
    Exists(SegmentKey, String),
    #[error("data dir {dir}: {reason}")]
    DataDir { dir: PathBuf, reason: String },
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Debug)]
struct Identity {
    node_id: String,
    zone: String,
}

pub struct Node {
    cfg: NodeConfig,
    segments: RwLock<BTreeMap<SegmentKey, Arc<Segment>>>,
    epochs: Arc<VolumeEpochs>,
    create_lock: Mutex<()>,
    log: LogOptions,
    pub metrics: Metrics,
}

/// Volume and segment names become directory names: keep them to a safe alphabet.
pub fn validate_id(what: &str, id: &str) -> Result<(), NodeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "{what} {id:?} is not a valid name: use 1-128 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

pub fn validate_page_size(page_size: u32) -> Result<(), NodeError> {
    if !(4096..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(NodeError::Invalid(format!(
            "page size {page_size} is not a power of two in 4096..=65536"
        )));
    }
    Ok(())
}

impl Node {
    pub fn open(cfg: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let data_err = |reason: String| NodeError::DataDir {
            dir: cfg.data_dir.clone(),
            reason,
        };
        std::fs::create_dir_all(cfg.data_dir.join("segments"))
            .map_err(|e| data_err(e.to_string()))?;
        let identity_path = cfg.data_dir.join("node.json");
        let mine = Identity {
            node_id: cfg.node_id.clone(),
            zone: cfg.zone.clone(),
        };
        match std::fs::read(&identity_path) {
            Ok(raw) => {
                let theirs: Identity = serde_json::from_slice(&raw)
                    .map_err(|e| data_err(format!("node.json unreadable: {e}")))?;
                if theirs != mine {
                    return Err(data_err(format!(
                        "belongs to node {} in zone {}, not node {} in zone {}",
                        theirs.node_id, theirs.zone, mine.node_id, mine.zone
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                logdb_common::durable_file::write(
                    &identity_path,
                    &serde_json::to_vec_pretty(&mine).expect("json"),
                )
                .map_err(|e| data_err(e.to_string()))?;
            }
            Err(e) => return Err(data_err(e.to_string())),
        }
        let space = SpaceGuard::new(&cfg.data_dir, cfg.min_free_bytes)
            .map_err(|e| data_err(format!("reading its free space: {e}")))?;
        tracing::info!(dir = %cfg.data_dir.display(), reserve = space.reserve(), "free space kept back from the logs");
        let log = LogOptions {
            file_bytes: cfg.log_file_bytes,
            space: Arc::new(space),
        };
        let epochs = Arc::new(VolumeEpochs::default());
        let mut segments = BTreeMap::new();
        for dir in segment_dirs(&cfg.data_dir).map_err(|e| data_err(e.to_string()))? {
            match Segment::open_existing(&dir, &log, Arc::clone(&epochs))? {
                Some(seg) => {
                    segments.insert(seg.key().clone(), seg);
                }
                None => {
                    tracing::warn!(dir = %dir.display(), "segment creation never completed; removing");
                    std::fs::remove_dir_all(&dir).map_err(|e| data_err(e.to_string()))?;
                }
            }
        }
        let metrics = Metrics::new();
        for seg in segments.values() {
            metrics.corrupt_frames.inc_by(seg.corrupt_frames() as u64);
        }
        Ok(Arc::new(Node {
            cfg,
            segments: RwLock::new(segments),
            epochs,
            create_lock: Mutex::new(()),
            log,
            metrics,
        }))
    }

    /// The data disk's guard: its free space and the reserve kept back from the logs.
    pub fn space(&self) -> &SpaceGuard {
        &self.log.space
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Creates a segment, or returns the existing one when its layout is the same.
    #[allow(clippy::too_many_arguments)]
    pub fn create_segment(
        &self,
        volume: &str,
        segment: &str,
        pg: PgIndex,
        first_page: u64,
        page_count: u64,
        page_size: u32,
        retention_secs: u64,
        epoch: Epoch,
    ) -> Result<Arc<Segment>, NodeError> {
        validate_id("volume id", volume)?;
        validate_id("segment id", segment)?;
        validate_page_size(page_size)?;
        if page_count == 0 {
            return Err(NodeError::Invalid("page count must be at least 1".into()));
        }
        if first_page.checked_add(page_count).is_none() {
            return Err(NodeError::Invalid(format!(
                "pages {first_page}+{page_count} overflow the page space"
            )));
        }
        let descriptor = Descriptor {
            volume: volume.to_string(),
            segment: segment.to_string(),
            pg,
            first_page,
            page_count,
            page_size,
            retention_secs: if retention_secs == 0 {
                self.cfg.default_retention_secs
            } else {
                retention_secs
            },
        };
        let key = SegmentKey {
            volume: volume.into(),
            segment: segment.into(),
        };
        let _guard = self.create_lock.lock().expect("create lock");
        if let Some(existing) = self.segments.read().expect("segments lock").get(&key) {
            if existing.descriptor() != &descriptor {
                return Err(NodeError::Exists(
                    key,
                    format!("{:?}", existing.descriptor()),
                ));
            }
            // Re-opening changes nothing, so an older epoch is no threat here; a newer one is
            // installed like any other.
            if epoch > existing.status().epoch {
                existing.install_epoch("create segment", epoch)?;
            }
            return Ok(Arc::clone(existing));
        }
        let overlapping = self
            .segments
            .read()
            .expect("segments lock")
            .values()
            .find(|s| {
                let d = s.descriptor();
                d.volume == volume
                    && d.first_page < first_page + page_count
                    && first_page < d.first_page + d.page_count
            })
            .map(|s| s.key().clone());
        if let Some(other) = overlapping {
            return Err(NodeError::Invalid(format!(
                "pages {first_page}..{} overlap segment {other} on this node",
                first_page + page_count
            )));
        }
        self.epochs
            .check("create segment", volume, epoch)
            .map_err(SegmentError::from)?;
        let dir = self
            .cfg
            .data_dir
            .join("segments")
            .join(volume)
            .join(segment);
        let seg = Segment::create(&dir, descriptor, epoch, &self.log, Arc::clone(&self.epochs))?;
        // The new directories' entries must survive a crash too.
        for d in [dir.parent(), dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(|e| NodeError::DataDir {
                    dir: d.to_path_buf(),
                    reason: e.to_string(),
                })?;
        }
        tracing::info!(segment = %key, pg = %pg, first_page, page_count, page_size, "segment created");
        self.segments
            .write()
            .expect("segments lock")
            .insert(key, Arc::clone(&seg));
        Ok(seg)
    }

    pub fn segment(&self, volume: &str, segment: &str) -> Result<Arc<Segment>, NodeError> {
        let key = SegmentKey {
            volume: volume.into(),
            segment: segment.into(),
        };
        self.segments
            .read()
            .expect("segments lock")
            .get(&key)
            .cloned()
            .ok_or_else(|| NodeError::UnknownSegment {
                volume: volume.into(),
                segment: segment.into(),
            })
    }

    /// The segment of `volume` holding `page` (or the named one when `segment` is not empty).
    pub fn segment_for_page(
        &self,
        volume: &str,
        segment: &str,
        page: PageId,
    ) -> Result<Arc<Segment>, NodeError> {
        if !segment.is_empty() {
            return self.segment(volume, segment);
        }
        self.segments
            .read()
            .expect("segments lock")
            .values()
            .find(|s| s.descriptor().volume == volume && s.descriptor().holds(page))
            .cloned()
            .ok_or_else(|| NodeError::NoSegmentForPage {
                volume: volume.into(),
                page,
            })
    }

    pub fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .expect("segments lock")
            .values()
            .cloned()
            .collect()
    }

    /// Flushes and stops every segment's log.
    pub fn close(&self) {
        for s in self.segments() {
            s.close();
        }
    }
}

fn segment_dirs(data_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for vol in std::fs::read_dir(data_dir.join("segments"))? {
        let vol = vol?;
        if !vol.file_type()?.is_dir() {
            continue;
        }
        for seg in std::fs::read_dir(vol.path())? {
            let seg = seg?;
            if seg.file_type()?.is_dir() {
                out.push(seg.path());
            }
        }
    }
    out.sort();
    Ok(out)
}
