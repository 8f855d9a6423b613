//! openraft's storage conformance suite (`openraft::testing::Suite`) against [`LogStore`], on a
//! real temporary directory and on `CrashDisk`, with a minimal but real state machine: it
//! applies entries to an in-memory map and keeps the last applied log id, the membership and the
//! last snapshot (the encoded map).

use super::*;
use crate::raft::types::{GroupData, GroupNode, GroupResponse};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};
use sluice_proto::testing::CrashDisk;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Mutex;

#[derive(Default)]
struct MapState {
    last_applied: Option<GroupLogId>,
    membership: StoredMembership<u64, GroupNode>,
    data: BTreeMap<u64, Vec<u8>>,
    snapshot: Option<(SnapshotMeta<u64, GroupNode>, Vec<u8>)>,
    n_snapshots: u64,
}

/// The test state machine; clones share the state (the snapshot builder is a clone).
#[derive(Clone, Default)]
struct MapStateMachine {
    state: Arc<Mutex<MapState>>,
}

impl MapStateMachine {
    fn lock(&self) -> std::sync::MutexGuard<'_, MapState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn snapshot_of(meta: &SnapshotMeta<u64, GroupNode>, bytes: &[u8]) -> Snapshot<GroupConfig> {
    Snapshot {
        meta: meta.clone(),
        snapshot: Box::new(Cursor::new(bytes.to_vec())),
    }
}

impl RaftSnapshotBuilder<GroupConfig> for MapStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<GroupConfig>, GroupStorageError> {
        let mut state = self.lock();
        let data: Vec<(u64, Vec<u8>)> = state.data.clone().into_iter().collect();
        let bytes = codec::encode(&data)
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        state.n_snapshots += 1;
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("snapshot-{}", state.n_snapshots),
        };
        state.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(snapshot_of(&meta, &bytes))
    }
}

impl RaftStateMachine<GroupConfig> for MapStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<GroupLogId>, StoredMembership<u64, GroupNode>), GroupStorageError> {
        let state = self.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<GroupResponse>, GroupStorageError>
    where
        I: IntoIterator<Item = GroupEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.lock();
        let mut out = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(GroupResponse::default()),
                EntryPayload::Normal(GroupData(bytes)) => {
                    state.data.insert(entry.log_id.index, bytes);
                    out.push(GroupResponse(entry.log_id.index.to_le_bytes().to_vec()));
                }
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(GroupResponse::default());
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, GroupStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, GroupNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), GroupStorageError> {
        let bytes = snapshot.into_inner();
        let data: Vec<(u64, Vec<u8>)> = codec::decode(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        let mut state = self.lock();
        state.data = data.into_iter().collect();
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<GroupConfig>>, GroupStorageError> {
        let state = self.lock();
        Ok(state
            .snapshot
            .as_ref()
            .map(|(meta, bytes)| snapshot_of(meta, bytes)))
    }
}

fn suite_config() -> LogStoreConfig {
    // Small segments, so the suite's few entries span several and rolls and whole-segment
    // purges are exercised too.
    LogStoreConfig {
        segment_bytes_max: 256,
        entry_bytes_max: 1 << 10,
        // A point per entry here; the unit tests cover reading forward from sparse points.
        index_interval_bytes: 0,
    }
}

fn paths_under(root: &Path) -> LogStorePaths {
    LogStorePaths {
        dir: root.join("raft/7"),
        manifest: root.join("manifests/7.raft"),
    }
}

fn build_error(error: LogStoreError) -> GroupStorageError {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

/// A fresh store in a new temporary directory on the real disk.
struct RealDiskBuilder;

impl StoreBuilder<GroupConfig, LogStore, MapStateMachine, tempfile::TempDir> for RealDiskBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, MapStateMachine), GroupStorageError> {
        let dir = tempfile::tempdir()
            .map_err(|e| build_error(DiskError::io("tempdir", Path::new("."), e).into()))?;
        let disk: Arc<dyn Disk> = Arc::new(sluice_proto::os::FsDisk);
        let (store, _) =
        // The real disk through tokio's blocking pool, as in production.
            LogStore::open(
                disk,
                &paths_under(dir.path()),
                suite_config(),
                BlockingMode::ThreadPool,
            )
            .map_err(build_error)?;
        Ok((dir, store, MapStateMachine::default()))
    }
}

/// A fresh store on a new `CrashDisk`.
struct CrashDiskBuilder;

impl StoreBuilder<GroupConfig, LogStore, MapStateMachine, CrashDisk> for CrashDiskBuilder {
    async fn build(&self) -> Result<(CrashDisk, LogStore, MapStateMachine), GroupStorageError> {
        let disk = CrashDisk::new();
        let (store, _) = LogStore::open(
            Arc::new(disk.mount()),
            &paths_under(Path::new("/data")),
            suite_config(),
            BlockingMode::Inline,
        )
        .map_err(build_error)?;
        Ok((disk, store, MapStateMachine::default()))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_real_disk() {
    // Runs openraft's storage conformance suite against the log store in a temporary directory
    // (real files, real fdatasync); any failed check in the suite panics or returns an error.
    Suite::test_all(RealDiskBuilder).unwrap();
}

#[test]
fn openraft_storage_suite_passes_on_the_crash_disk() {
    // Runs the same suite on the simulator's disk (outside any simulated runtime).
    Suite::test_all(CrashDiskBuilder).unwrap();
}
