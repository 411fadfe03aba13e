//! What a local data dir remembers between runs: which volume it holds, its spec, its node and
//! compute names, and the two user-facing PostgreSQL ports. No other port is remembered or picked
//! ahead: every process binds its own listeners on port 0 and announces them, and a storage node
//! is known by its id and data dir, never by its address (it re-registers wherever it lands).
//! Also the lock that keeps two `logdb up` off one data dir, and the runtime file through which
//! `logdb status`/`down`/`node` find the running `logdb up`.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LocalError;
use crate::spec::LogVolumeSpec;

const STATE_FILE: &str = "volume.json";
const RUNTIME_FILE: &str = "up.json";
const LOCK_FILE: &str = "lock";
const FORMAT: u32 = 3;
/// Format 2 also stored every process's port; those fields are ignored now.
const OLDER_FORMATS: [u32; 1] = [2];

/// The PostgreSQL port of a new local volume's read-write endpoint unless told otherwise; its
/// read-only endpoint is the next port.
pub const DEFAULT_PG_PORT: u16 = 5433;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalState {
    pub format: u32,
    pub volume: String,
    pub spec: LogVolumeSpec,
    /// The read-write endpoint: always forwards to the current writer (like `<name>-rw`). 0
    /// until the endpoint is first bound (a new volume started with `--port 0`).
    pub rw_port: u16,
    /// The read-only endpoint: spreads connections over the replicas (like `<name>-ro`).
    pub ro_port: u16,
    /// Compute nodes; `compute-0` starts as the writer, the config store decides after that.
    pub computes: Vec<ComputeEntry>,
    pub nodes: Vec<NodeEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeEntry {
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// `a1`, `a2`, `b1`, ...: the zone's letter and the node's number in it.
    pub id: String,
    pub zone: String,
}

/// The running `logdb up`: where its control endpoint listens.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Runtime {
    pub pid: u32,
    pub control: SocketAddr,
}

impl LocalState {
    /// A new volume's state: node names from the zones, the read-write endpoint on `pg_port`
    /// and the read-only one on the next port (`pg_port` 0: both on any free port, chosen when
    /// they are bound).
    pub fn new(volume: &str, spec: &LogVolumeSpec, pg_port: u16) -> Result<LocalState, LocalError> {
        let mut nodes = Vec::new();
        for (z, zone) in spec.zones.iter().enumerate() {
            for n in 1..=2 {
                nodes.push(NodeEntry {
                    id: format!("{}{n}", (b'a' + z as u8) as char),
                    zone: zone.clone(),
                });
            }
        }
        let (rw_port, ro_port) = match pg_port {
            0 => (0, 0),
            p => (
                p,
                p.checked_add(1).ok_or_else(|| {
                    LocalError::Refused(format!(
                        "--port {p}: the read-only endpoint needs the next port"
                    ))
                })?,
            ),
        };
        let mut state = LocalState {
            format: FORMAT,
            volume: volume.to_string(),
            spec: spec.clone(),
            rw_port,
            ro_port,
            computes: Vec::new(),
            nodes,
        };
        state.ensure_computes();
        Ok(state)
    }

    /// One compute node per replica the spec asks for, plus the writer.
    pub fn ensure_computes(&mut self) {
        while self.computes.len() < 1 + self.spec.replicas as usize {
            self.computes.push(ComputeEntry {
                id: format!("compute-{}", self.computes.len()),
            });
        }
    }

    pub fn load(dir: &Path) -> Result<Option<LocalState>, LocalError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LocalError::io(format!("reading {}", path.display()))(e)),
        };
        let mut state: LocalState = serde_json::from_slice(&text).map_err(|e| {
            LocalError::Refused(format!(
                "{} is not a logdb data dir state file: {e}",
                path.display()
            ))
        })?;
        if OLDER_FORMATS.contains(&state.format) {
            state.format = FORMAT;
        }
        if state.format != FORMAT {
            return Err(LocalError::Refused(format!(
                "{}: format {} is not the {FORMAT} this logdb understands",
                path.display(),
                state.format
            )));
        }
        Ok(Some(state))
    }

    pub fn save(&self, dir: &Path) -> Result<(), LocalError> {
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        logdb_common::durable_file::write(&path, &bytes)
            .map_err(LocalError::io(format!("writing {}", path.display())))
    }

    /// Refuses a manifest this data dir cannot run: another volume, or a change of something
    /// fixed at creation (page size, segment size, zones).
    pub fn check_same_volume(
        &self,
        dir: &Path,
        name: &str,
        spec: &LogVolumeSpec,
    ) -> Result<(), LocalError> {
        if self.volume != name {
            return Err(LocalError::Refused(format!(
                "data dir {} holds volume {:?}, not {name:?}: pass another --data-dir, or `logdb up` without a manifest to resume {:?}",
                dir.display(),
                self.volume,
                self.volume
            )));
        }
        let fixed = [
            (
                "spec.pageSize",
                self.spec.page_size.to_string(),
                spec.page_size.to_string(),
            ),
            (
                "spec.segmentSize",
                self.spec.segment_size.0.clone(),
                spec.segment_size.0.clone(),
            ),
            (
                "spec.zones",
                self.spec.zones.join(","),
                spec.zones.join(","),
            ),
        ];
        for (field, was, now) in fixed {
            if was != now {
                return Err(LocalError::Refused(format!(
                    "{field} is immutable: volume {name:?} was created with {was}, the manifest says {now}"
                )));
            }
        }
        Ok(())
    }

    pub fn node(&self, id: &str) -> Result<&NodeEntry, LocalError> {
        self.nodes.iter().find(|n| n.id == id).ok_or_else(|| {
            let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
            LocalError::Refused(format!(
                "no storage node {id:?} in volume {:?} (its nodes: {})",
                self.volume,
                ids.join(" ")
            ))
        })
    }
}

/// Binds `port` on loopback (0: any free port) and keeps it; the error says who needs it.
pub fn bind_port(port: u16, who: &str) -> Result<TcpListener, LocalError> {
    TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
        LocalError::Refused(format!(
            "port {port} on 127.0.0.1 ({who}) is taken: {e}. Stop what listens there{}",
            if who.contains("endpoint") {
                ", or pass --port (first run only)"
            } else {
                ""
            }
        ))
    })
}

/// Held while `logdb up` runs on a data dir; a second one is refused.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, LocalError> {
        let path = dir.join(LOCK_FILE);
        let file =
            File::create(&path).map_err(LocalError::io(format!("creating {}", path.display())))?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let pid = Runtime::load(dir).ok().flatten().map(|r| r.pid);
            return Err(LocalError::Refused(format!(
                "another `logdb up`{} is running on data dir {}: use `logdb status`, or `logdb down` first",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                dir.display()
            )));
        }
        Ok(DirLock { _file: file })
    }
}

impl Runtime {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(RUNTIME_FILE)
    }

    pub fn load(dir: &Path) -> Result<Option<Runtime>, LocalError> {
        match std::fs::read(Self::path(dir)) {
            Ok(t) => Ok(serde_json::from_slice(&t).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LocalError::io(format!(
                "reading {}",
                Self::path(dir).display()
            ))(e)),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), LocalError> {
        let bytes = serde_json::to_vec(self).expect("runtime serializes");
        logdb_common::durable_file::write(&Self::path(dir), &bytes).map_err(LocalError::io(
            format!("writing {}", Self::path(dir).display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LogVolumeSpec {
        serde_yaml::from_str("{}").unwrap()
    }

    #[test]
    fn nodes_are_named_by_zone_letter() {
        let s = LocalState::new("v", &spec(), 0).unwrap();
        let ids: Vec<&str> = s.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a1", "a2", "b1", "b2", "c1", "c2"]);
        assert_eq!(s.nodes[2].zone, "zone-b");
        // No port is picked ahead: the endpoints get theirs when bound.
        assert_eq!((s.rw_port, s.ro_port), (0, 0));
        let fixed = LocalState::new("v", &spec(), 7000).unwrap();
        assert_eq!((fixed.rw_port, fixed.ro_port), (7000, 7001));
        let err = LocalState::new("v", &spec(), 65535)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--port 65535: the read-only endpoint needs the next port"
        );
        let mut two = spec();
        two.replicas = 2;
        let s = LocalState::new("v", &two, 0).unwrap();
        let ids: Vec<&str> = s.computes.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["compute-0", "compute-1", "compute-2"]);
    }

    #[test]
    fn another_volume_or_a_changed_page_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalState::new("v", &spec(), 0).unwrap();
        s.save(dir.path()).unwrap();
        let back = LocalState::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, s);
        let err = back
            .check_same_volume(dir.path(), "w", &spec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds volume \"v\", not \"w\""), "{err}");
        let mut other = spec();
        other.page_size = 16384;
        let err = back
            .check_same_volume(dir.path(), "v", &other)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "spec.pageSize is immutable: volume \"v\" was created with 8192, the manifest says 16384"
        );
        other = spec();
        other.replicas = 3;
        back.check_same_volume(dir.path(), "v", &other).unwrap();
    }

    #[test]
    fn a_format_2_state_file_resumes_without_its_old_ports() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalState::new("v", &spec(), 7000).unwrap();
        let mut old = serde_json::to_value(&s).unwrap();
        old["format"] = 2.into();
        old["config_port"] = 41000.into();
        old["nodes"][0]["port"] = 41001.into();
        old["nodes"][0]["metrics_port"] = 41002.into();
        old["computes"][0]["port"] = 41003.into();
        std::fs::write(dir.path().join(STATE_FILE), old.to_string()).unwrap();
        let back = LocalState::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, s);
        old["format"] = 9.into();
        std::fs::write(dir.path().join(STATE_FILE), old.to_string()).unwrap();
        let err = LocalState::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("format 9 is not the 3 this logdb understands"),
            "{err}"
        );
    }

    #[test]
    fn a_taken_port_and_a_held_lock_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let err = bind_port(port, "the read-write PostgreSQL endpoint")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "port {port} on 127.0.0.1 (the read-write PostgreSQL endpoint) is taken"
            )),
            "{err}"
        );
        assert!(err.ends_with("or pass --port (first run only)"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(
            err.starts_with("another `logdb up` is running on data dir"),
            "{err}"
        );
        drop(held);
        DirLock::acquire(dir.path()).unwrap();
    }
}
