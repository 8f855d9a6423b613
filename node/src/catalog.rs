//! The node's partition catalog: a durable record, in the data directory's root, of every
//! partition the node ever created, so that a partition whose segment directory and manifest
//! are both gone is detected as corruption (read-only, named in the `Storage` refusal and in
//! `sluice storage check`) instead of starting empty and handing its offsets to new records.
//!
//! The catalog is a [`SlotFile`] (`<data_dir>/partitions.catalog`, the segment layer's two-slot
//! record file) whose body lists, per stream, how many partitions (`0..n`) were created. A
//! partition is recorded, and the record synced, before it takes its first write (and before
//! a new partition's directory is first created). A data
//! directory without a catalog (of an earlier release) adopts one at start: every partition
//! that has a manifest or a segment directory is recorded as created. A catalog none of whose
//! slots checks is logged and adopted again the same way (it held nothing but this record).
//!
//! Not here: which partitions a node should have (its configuration; in the cluster, the
//! metadata group's partition map will replace this record).

use crate::log::LogPaths;
use sluice_proto::env::{Disk, DiskError};
use sluice_proto::segment::{SegmentError, SlotFile, SlotKind, SLOT_OVERHEAD};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The catalog's file name in the data directory.
pub const CATALOG_NAME: &str = "partitions.catalog";

/// The kind of the catalog: a [`SlotFile`] of page-long slots.
const CATALOG_KIND: SlotKind = SlotKind {
    magic: *b"SLUICEPC",
    version: 1,
    slot_len: 4096,
};

/// Bytes of a slot body.
const BODY_BYTES_MAX: usize = CATALOG_KIND.slot_len - SLOT_OVERHEAD;

/// Partitions created, per stream: partitions `0..n` of each.
pub type Created = BTreeMap<String, u32>;

/// The catalog could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The disk refused.
    #[error("partition catalog {path}: {error}")]
    Disk {
        /// The catalog file.
        path: String,
        /// What failed.
        error: SegmentError,
    },
    /// The streams' names do not fit one record.
    #[error(
        "partition catalog {path}: {bytes} bytes of stream names and counts, at most {max} fit"
    )]
    Full {
        /// The catalog file.
        path: String,
        /// Bytes needed.
        bytes: usize,
        /// Bytes a record holds.
        max: usize,
    },
}

/// The catalog's path under `data_dir`.
pub fn catalog_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CATALOG_NAME)
}

/// The body recording `created`: the number of streams (u32), then per stream its name's
/// length (u8), the name and its partition count (u32), little endian, in name order.
fn encode(created: &Created) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(created.len() as u32).to_le_bytes());
    for (name, n) in created {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

fn decode(body: &[u8]) -> Option<Created> {
    let n_streams = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    let mut pos = 4;
    let mut out = Created::new();
    for _ in 0..n_streams {
        let len = usize::from(*body.get(pos)?);
        let name = std::str::from_utf8(body.get(pos + 1..pos + 1 + len)?).ok()?;
        pos += 1 + len;
        let n = u32::from_le_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        out.insert(name.to_owned(), n);
    }
    Some(out)
}

/// What the catalog held at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The partitions it records.
    Recorded(Created),
    /// There is none (a data directory of an earlier release, or a new one).
    Absent,
    /// One exists but no slot of it checks.
    Damaged(String),
}

/// Reads the catalog of `data_dir`, changing nothing.
pub fn read(disk: &dyn Disk, data_dir: &Path) -> Result<Found, CatalogError> {
    let path = catalog_path(data_dir);
    match SlotFile::open(disk, &path, CATALOG_KIND) {
        Ok(None) => Ok(Found::Absent),
        Ok(Some((_, body))) => Ok(match decode(&body) {
            Some(created) => Found::Recorded(created),
            None => Found::Damaged(format!(
                "{}: a slot that does not hold a catalog",
                path.display()
            )),
        }),
        Err(SegmentError::Corrupt(c)) => Ok(Found::Damaged(c.to_string())),
        Err(error) => Err(CatalogError::Disk {
            path: path.display().to_string(),
            error,
        }),
    }
}

/// What an earlier release created under `data_dir`: every partition of `streams` with a
/// manifest or a segment directory (partitions `0..=highest` of a stream are then recorded).
pub fn adopt(
    data_dir: &Path,
    streams: &Created,
    exists: impl Fn(&str, u32) -> Result<bool, DiskError>,
) -> Result<Created, CatalogError> {
    let mut out = Created::new();
    for (name, n) in streams {
        for partition in (0..*n).rev() {
            let found = exists(name, partition).map_err(|e| CatalogError::Disk {
                path: catalog_path(data_dir).display().to_string(),
                error: e.into(),
            })?;
            if found {
                out.insert(name.clone(), partition + 1);
                break;
            }
        }
    }
    Ok(out)
}

/// Records `created` (one slot write and `fdatasync`; the file is created when there is none
/// or it is damaged).
pub fn record(
    disk: &dyn Disk,
    data_dir: &Path,
    created: &Created,
    replace: bool,
) -> Result<(), CatalogError> {
    let path = catalog_path(data_dir);
    let body = encode(created);
    if body.len() > BODY_BYTES_MAX {
        return Err(CatalogError::Full {
            path: path.display().to_string(),
            bytes: body.len(),
            max: BODY_BYTES_MAX,
        });
    }
    let disk_error = |error| CatalogError::Disk {
        path: path.display().to_string(),
        error,
    };
    let existing = if replace {
        None
    } else {
        SlotFile::open(disk, &path, CATALOG_KIND).map_err(disk_error)?
    };
    match existing {
        Some((mut slots, _)) => slots.write(&body).map_err(disk_error),
        None => SlotFile::create(disk, &path, CATALOG_KIND, &body)
            .map(|_| ())
            .map_err(disk_error),
    }
}

/// Whether partition `partition` of `stream` has a manifest or a segment directory.
pub fn has_files(
    disk: &dyn Disk,
    data_dir: &Path,
    stream: &str,
    partition: u32,
) -> Result<bool, DiskError> {
    paths_have_files(
        disk,
        &crate::node::partition_paths_of(data_dir, stream, partition),
    )
}

/// Whether the partition at `paths` has a manifest or a segment directory.
pub fn paths_have_files(disk: &dyn Disk, paths: &LogPaths) -> Result<bool, DiskError> {
    let found = |r: Result<(), DiskError>| match r {
        Ok(()) => Ok(true),
        Err(DiskError::Io {
            kind: std::io::ErrorKind::NotFound,
            ..
        }) => Ok(false),
        Err(e) => Err(e),
    };
    Ok(found(disk.open(&paths.manifest, false).map(|_| ()))?
        || found(disk.list(&paths.dir).map(|_| ()))?)
}

/// What the catalog of `data_dir` records, without changing anything: adopted from the files
/// of `streams` when there is none or it is damaged (the second value says which, for the log).
pub fn known(
    disk: &dyn Disk,
    data_dir: &Path,
    streams: &Created,
) -> Result<(Created, Found), CatalogError> {
    let found = read(disk, data_dir)?;
    let known = match &found {
        Found::Recorded(created) => created.clone(),
        Found::Absent | Found::Damaged(_) => adopt(data_dir, streams, |stream, partition| {
            has_files(disk, data_dir, stream, partition)
        })?,
    };
    Ok((known, found))
}

/// What [`prepare`] found and did.
#[derive(Debug)]
pub struct Prepared {
    /// What the catalog recorded before (adopted as in [`known`]): the partitions whose files
    /// recovery must find.
    pub known: Created,
    /// What the catalog durably records now: every configured partition when recording
    /// succeeded; otherwise what a catalog read whole held, nothing when there was none.
    pub durable: Created,
    /// Whether recording succeeded.
    pub result: Result<(), CatalogError>,
}

impl Prepared {
    /// Whether the catalog durably records partition `partition` of `stream`.
    pub fn records(&self, stream: &str, partition: u32) -> bool {
        self.durable.get(stream).is_some_and(|n| partition < *n)
    }
}

/// At start: what the catalog records (adopted as in [`known`]), then the configured `streams`
/// recorded too (synced) before any of their partitions is written. A catalog that cannot be
/// read or written (a full disk, a failing one) must not stop the node: the caller logs it and
/// the partitions it does not durably record refuse writes until a [`PendingRecord`] succeeds.
pub fn prepare(disk: &dyn Disk, data_dir: &Path, streams: &Created) -> Prepared {
    let (known, found) = match known(disk, data_dir, streams) {
        Ok(known) => known,
        Err(e) => {
            return Prepared {
                known: Created::new(),
                durable: Created::new(),
                result: Err(e),
            }
        }
    };
    match &found {
        Found::Damaged(why) => tracing::error!(
            %why,
            "partition catalog damaged: adopting it again from the partitions' files"
        ),
        Found::Absent if !known.is_empty() => tracing::info!(
            n_streams = known.len(),
            "no partition catalog: adopting the partitions found"
        ),
        _ => {}
    }
    let mut wanted = known.clone();
    for (name, n) in streams {
        let entry = wanted.entry(name.clone()).or_default();
        *entry = (*entry).max(*n);
    }
    let recorded = matches!(found, Found::Recorded(_));
    let result = if wanted != known || !recorded {
        disk.create_dir_all(data_dir)
            .map_err(|e| CatalogError::Disk {
                path: catalog_path(data_dir).display().to_string(),
                error: e.into(),
            })
            .and_then(|()| record(disk, data_dir, &wanted, !recorded))
    } else {
        Ok(())
    };
    let durable = match (&result, recorded) {
        (Ok(()), _) => wanted,
        (Err(_), true) => known.clone(),
        (Err(_), false) => Created::new(),
    };
    Prepared {
        known,
        durable,
        result,
    }
}

/// The catalog record that failed at start, tried again by each partition it leaves
/// unrecorded before that partition takes writes (on the partition's write-retry backoff):
/// the first success records every configured partition, and later calls return at once.
pub struct PendingRecord {
    disk: Arc<dyn Disk>,
    data_dir: PathBuf,
    streams: Created,
    recorded: Mutex<bool>,
}

impl fmt::Debug for PendingRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRecord")
            .field("data_dir", &self.data_dir)
            .field("streams", &self.streams)
            .finish()
    }
}

impl PendingRecord {
    /// A record of the configured `streams` still to be made.
    pub fn new(disk: Arc<dyn Disk>, data_dir: PathBuf, streams: Created) -> PendingRecord {
        PendingRecord {
            disk,
            data_dir,
            streams,
            recorded: Mutex::new(false),
        }
    }

    /// Records the configured partitions unless that was done (blocking IO: call it on the
    /// blocking pool). `Err` while the catalog still cannot be read or written.
    pub fn ensure(&self) -> Result<(), CatalogError> {
        let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
        if !*recorded {
            prepare(&*self.disk, &self.data_dir, &self.streams).result?;
            tracing::info!("partition catalog recorded");
            *recorded = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::testing::CrashDisk;

    #[test]
    fn catalog_round_trips_and_refuses_what_does_not_fit() {
        // Checks that a recorded catalog reads back, that a second record replaces the first,
        // that one none of whose slots checks reads as damaged, and that more stream names than
        // a record holds are refused with a typed error instead of being cut.
        let disk = CrashDisk::new();
        let root = Path::new("/data");
        disk.create_dir_all(root).unwrap();
        assert_eq!(read(&disk, root).unwrap(), Found::Absent);
        let created = Created::from([("a".to_owned(), 3), ("bb".to_owned(), 1)]);
        record(&disk, root, &created, false).unwrap();
        assert_eq!(read(&disk, root).unwrap(), Found::Recorded(created.clone()));
        let more = Created::from([("a".to_owned(), 4), ("c".to_owned(), 2)]);
        record(&disk, root, &more, false).unwrap();
        assert_eq!(read(&disk, root).unwrap(), Found::Recorded(more));
        let path = catalog_path(root);
        disk.flip_bit(&path, 30, 1).unwrap();
        disk.flip_bit(&path, 4096 + 30, 1).unwrap();
        assert!(matches!(read(&disk, root).unwrap(), Found::Damaged(_)));
        let huge: Created = (0..40).map(|i| (format!("{i:0>120}"), 1)).collect();
        assert!(matches!(
            record(&disk, root, &huge, true),
            Err(CatalogError::Full { .. })
        ));
    }
}
