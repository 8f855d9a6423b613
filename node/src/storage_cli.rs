//! `sluice storage check`: checks every partition log under a data directory without changing
//! anything, the way a node would recover it, and reports each one as clean or as corrupt with
//! the file and byte of the damage (a partition the node's catalog records whose directory and
//! manifest are both gone included). Refuses to run beside a node that holds the directory.

use crate::catalog;
use crate::env::FsDisk;
use crate::log::{self, LogConfig, Recovery};
use crate::node::partition_paths;
use anyhow::Context;
use sluice_proto::env::{Disk, DiskError};
use sluice_proto::os::DirLock;
use sluice_proto::segment::Corruption;
use sluice_proto::StreamName;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What `check` found for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReport {
    /// Stream.
    pub stream: String,
    /// Partition.
    pub partition: u32,
    /// What recovery would find (for a corrupt log: up to the damage).
    pub recovery: Recovery,
    /// The damage, if any.
    pub corruption: Option<Corruption>,
}

fn names(disk: &FsDisk, dir: &Path) -> Result<Vec<String>, DiskError> {
    match disk.list(dir) {
        Ok(names) => Ok(names),
        Err(DiskError::Io {
            kind: std::io::ErrorKind::NotFound,
            ..
        }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Every partition that has a manifest or a segment directory under `data_dir`, sorted.
fn partitions(disk: &FsDisk, data_dir: &Path) -> anyhow::Result<BTreeSet<(String, u32)>> {
    let mut out = BTreeSet::new();
    for (root, suffix) in [("manifests", ".manifest"), ("streams", "")] {
        for stream in names(disk, &data_dir.join(root))? {
            for entry in names(disk, &data_dir.join(root).join(&stream))? {
                let Some(number) = entry.strip_suffix(suffix) else {
                    continue;
                };
                if let Ok(partition) = number.parse::<u32>() {
                    out.insert((stream.clone(), partition));
                }
            }
        }
    }
    Ok(out)
}

/// Checks every partition under `data_dir` (taking the directory's shared lock, so never beside
/// a running node).
pub fn check(data_dir: &Path) -> anyhow::Result<Vec<PartitionReport>> {
    let _lock = DirLock::acquire(data_dir, false).with_context(|| {
        format!(
            "cannot lock data_dir {}; is a node running on it?",
            data_dir.display()
        )
    })?;
    let disk = FsDisk;
    let config = LogConfig {
        segment_bytes_max: u64::MAX,
        index_interval_bytes: 1 << 16,
        durable_record_interval: std::time::Duration::ZERO,
        entry_bytes_max: u32::MAX - 1,
    };
    let mut found = partitions(&disk, data_dir)?;
    // Partitions the catalog records must be there even when none of their files is.
    let on_disk: catalog::Created = found.iter().fold(BTreeMap::new(), |mut m, (s, p)| {
        let n = m.entry(s.clone()).or_insert(0);
        *n = (*n).max(p + 1);
        m
    });
    let (created, _) = catalog::known(&disk, data_dir, &on_disk)?;
    for (stream, n) in &created {
        found.extend((0..*n).map(|p| (stream.clone(), p)));
    }
    let mut reports = Vec::new();
    for (stream, partition) in found {
        let name = StreamName::new(stream.clone()).map_err(|e| {
            anyhow::anyhow!("{}: {e}", data_dir.join("streams").join(&stream).display())
        })?;
        let mut paths = partition_paths(data_dir, &name, partition);
        paths.created = created.get(&stream).is_some_and(|n| partition < *n);
        let (recovery, corruption) = log::check(&disk, &paths, config)
            .with_context(|| format!("cannot read partition {stream}/{partition}"))?;
        reports.push(PartitionReport {
            stream,
            partition,
            recovery,
            corruption,
        });
    }
    Ok(reports)
}

/// Runs `sluice storage check`: prints one line per partition; `Ok(false)` when any is corrupt.
pub fn run_check(data_dir: &Path) -> anyhow::Result<bool> {
    let reports = check(data_dir)?;
    if reports.is_empty() {
        println!("no partitions under {}", data_dir.display());
    }
    let mut clean = true;
    for r in &reports {
        let where_ = format!("{}/{}", r.stream, r.partition);
        match &r.corruption {
            None => println!(
                "{where_}: ok: {} segments, {} entries, next offset {}",
                r.recovery.n_segments, r.recovery.n_entries, r.recovery.next_offset
            ),
            Some(c) => {
                clean = false;
                println!(
                    "{where_}: CORRUPT: {c}; offsets below {} are readable",
                    r.recovery.next_offset
                );
            }
        }
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::PendingEntry;
    use sluice_proto::{
        codec, BootEpoch, Event, Identity, Offset, Payload, Role, SensorId, UnixMillis,
    };
    use std::sync::Arc;

    fn write_partition(data_dir: &Path, stream: &str, n: u64) {
        let paths = partition_paths(data_dir, &StreamName::new(stream).unwrap(), 0);
        let config = LogConfig {
            segment_bytes_max: 1 << 16,
            index_interval_bytes: 1024,
            durable_record_interval: std::time::Duration::ZERO,
            entry_bytes_max: 1 << 16,
        };
        let opened = log::open(Arc::new(FsDisk), &paths, config, None, |_, _| {}).unwrap();
        let mut writer = opened.writer.unwrap();
        for seq in 0..n {
            let event = Event {
                producer: Identity::new("t", Role::Edge, "p").unwrap(),
                sensor: SensorId::new("s").unwrap(),
                boot_epoch: BootEpoch(1),
                seq,
                device_time: UnixMillis(0),
                received_time: UnixMillis(0),
                payload: Payload::Json("{}".into()),
            };
            let entry = PendingEntry {
                base: Offset(seq),
                count: 1,
                body: codec::encode(&event).unwrap(),
            };
            writer.append(&[entry]).unwrap();
        }
        writer.close().unwrap();
    }

    #[test]
    fn check_names_the_corrupt_partition_and_byte_and_changes_nothing() {
        // Checks that `storage check` lists every partition, reports a clean one as clean and a
        // damaged one with its file, byte and readable prefix, and leaves the files untouched;
        // and that it refuses to run beside a node holding the directory.
        let dir = tempfile::tempdir().unwrap();
        write_partition(dir.path(), "a", 4);
        write_partition(dir.path(), "b", 4);
        let segment = partition_paths(dir.path(), &StreamName::new("b").unwrap(), 0)
            .dir
            .join("00000000000000000000.log");
        let mut bytes = std::fs::read(&segment).unwrap();
        let first = sluice_proto::segment::SEGMENT_HEADER_LEN as usize;
        let first_len = u32::from_le_bytes(bytes[first..first + 4].try_into().unwrap()) as usize;
        let second = first + sluice_proto::segment::ENTRY_HEADER_LEN as usize + first_len;
        bytes[second + 20] ^= 1;
        std::fs::write(&segment, &bytes).unwrap();

        let reports = check(dir.path()).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(
            (
                reports[0].stream.as_str(),
                reports[0].recovery.next_offset,
                &reports[0].corruption
            ),
            ("a", Offset(4), &None)
        );
        let c = reports[1]
            .corruption
            .clone()
            .expect("corruption not reported");
        assert_eq!(
            (c.path, c.pos),
            (segment.display().to_string(), second as u64)
        );
        assert_eq!(reports[1].recovery.next_offset, Offset(1));
        assert_eq!(std::fs::read(&segment).unwrap(), bytes);
        assert!(!run_check(dir.path()).unwrap());

        let _node = DirLock::acquire(dir.path(), true).unwrap();
        assert!(check(dir.path()).is_err(), "checked beside a running node");
    }
}
