use super::*;
use crate::raft::types::GroupData;
use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};
use rand::Rng;
use sluice_proto::env::rng_for;
use sluice_proto::testing::{CrashDisk, CrashModel, Tear};

fn config() -> LogStoreConfig {
    // Small segments: a few entries each, so rolls, sealed segments and whole-segment purges
    // happen within a few operations.
    LogStoreConfig {
        segment_bytes_max: 512,
        entry_bytes_max: 256,
        // A sparse point every few entries, so reads seek and then read forward.
        index_interval_bytes: 120,
    }
}

fn paths() -> LogStorePaths {
    LogStorePaths {
        dir: PathBuf::from("/data/raft/3"),
        manifest: PathBuf::from("/data/manifests/3.raft"),
    }
}

fn open(disk: &CrashDisk) -> Result<LogStore, LogStoreError> {
    LogStore::open(
        Arc::new(disk.mount()),
        &paths(),
        config(),
        BlockingMode::Inline,
    )
    .map(|(store, _)| store)
}

fn log_id(term: u64, index: u64) -> GroupLogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> GroupEntry {
    // Payload sizes vary with the index; every third entry is blank.
    let payload = if index % 3 == 0 {
        EntryPayload::Blank
    } else {
        EntryPayload::Normal(GroupData(vec![
            index as u8 | 1;
            20 + (index % 7) as usize * 9
        ]))
    };
    GroupEntry {
        log_id: log_id(term, index),
        payload,
    }
}

/// The log ids the store holds after its purge point.
fn held(store: &LogStore) -> Vec<GroupLogId> {
    store
        .reader()
        .entries(0, u64::MAX)
        .unwrap()
        .iter()
        .map(|e| e.log_id)
        .collect()
}

fn segment_paths(disk: &CrashDisk) -> Vec<PathBuf> {
    disk.files()
        .keys()
        .filter(|p| p.extension().is_some_and(|e| e == "raft") && p.starts_with(&paths().dir))
        .cloned()
        .collect()
}

#[test]
fn a_restart_recovers_vote_committed_purge_truncation_and_entries() {
    // Checks that after a clean restart the store holds exactly what the calls left: the vote,
    // the committed id, the purge point, the entries across several segments up to a
    // truncation, and that appends continue from there.
    let disk = CrashDisk::new();
    let mut store = open(&disk).unwrap();
    let entries: Vec<GroupEntry> = (0..40).map(|i| entry(1 + i / 10, i)).collect();
    for chunk in entries.chunks(3) {
        store.append(chunk).unwrap();
    }
    store.save_vote(&Vote::new_committed(4, 1)).unwrap();
    store.save_committed(Some(log_id(3, 30))).unwrap();
    store.purge(log_id(2, 17)).unwrap();
    store.truncate(35).unwrap();
    let expected: Vec<GroupLogId> = (18..35).map(|i| log_id(1 + i / 10, i)).collect();
    assert_eq!(held(&store), expected);
    assert!(
        segment_paths(&disk).len() > 2,
        "entries span several segments"
    );
    drop(store);
    disk.close_all();
    let mut store = open(&disk).unwrap();
    assert_eq!(store.vote(), Some(Vote::new_committed(4, 1)));
    assert_eq!(store.committed(), Some(log_id(3, 30)));
    assert_eq!(
        store.log_state(),
        (Some(log_id(2, 17)), Some(log_id(4, 34)))
    );
    assert_eq!(held(&store), expected);
    store.append(&[entry(4, 35)]).unwrap();
    assert_eq!(store.log_state().1, Some(log_id(4, 35)));
    let entries = store.reader().entries(34, 36).unwrap();
    assert_eq!(entries, vec![entry(4, 34), entry(4, 35)]);
}

#[test]
fn a_purge_past_the_last_entry_starts_the_log_after_it() {
    // Checks that purging beyond the last entry (a snapshot installed ahead of the log) leaves
    // an empty log whose last id is the purge point, survives a restart, and takes the next
    // index only.
    let disk = CrashDisk::new();
    let mut store = open(&disk).unwrap();
    store
        .append(&(0..5).map(|i| entry(1, i)).collect::<Vec<_>>())
        .unwrap();
    store.purge(log_id(2, 20)).unwrap();
    assert_eq!(
        store.log_state(),
        (Some(log_id(2, 20)), Some(log_id(2, 20)))
    );
    drop(store);
    disk.close_all();
    let mut store = open(&disk).unwrap();
    assert_eq!(
        store.log_state(),
        (Some(log_id(2, 20)), Some(log_id(2, 20)))
    );
    assert!(held(&store).is_empty());
    assert!(matches!(
        store.append(&[entry(2, 22)]),
        Err(LogStoreError::NotContiguous {
            expected: 21,
            found: 22
        })
    ));
    store.append(&[entry(2, 21)]).unwrap();
    assert_eq!(held(&store), vec![log_id(2, 21)]);
}

#[test]
fn an_entry_too_large_is_refused_and_the_store_goes_on() {
    // Checks that an entry larger than an empty segment can hold is a typed refusal that
    // writes nothing and leaves the store writable.
    let disk = CrashDisk::new();
    let mut store = open(&disk).unwrap();
    let big = GroupEntry {
        log_id: log_id(1, 0),
        payload: EntryPayload::Normal(GroupData(vec![7; 600])),
    };
    assert!(matches!(
        store.append(&[big]),
        Err(LogStoreError::EntryTooLarge { index: 0, .. })
    ));
    store.append(&[entry(1, 0)]).unwrap();
    assert_eq!(held(&store), vec![log_id(1, 0)]);
}

/// A store of 30 entries (several segments), closed cleanly; returns the disk.
fn written() -> CrashDisk {
    let disk = CrashDisk::new();
    let mut store = open(&disk).unwrap();
    for i in 0..30 {
        store.append(&[entry(1, i)]).unwrap();
    }
    store.save_vote(&Vote::new(1, 1)).unwrap();
    drop(store);
    disk.close_all();
    disk
}

fn assert_corrupt(disk: &CrashDisk, what: &str) {
    match open(disk) {
        Err(LogStoreError::Corrupt(c)) => assert!(!c.path.is_empty(), "{what}: {c}"),
        Err(other) => panic!("{what}: not corruption: {other}"),
        Ok(store) => panic!("{what}: opened with {:?}", store.log_state()),
    }
}

#[test]
fn damage_is_reported_as_corruption_never_discarded() {
    // Checks that damage which cannot be a torn write (a flipped bit in a sealed segment, in
    // the last segment before a valid entry, a deleted segment, a zeroed manifest, a lost
    // directory) makes the open fail with a typed corruption naming a file, instead of
    // silently opening a shorter log.
    let disk = written();
    let segments = segment_paths(&disk);
    assert!(segments.len() >= 3);
    disk.flip_bit(&segments[0], SEGMENT_HEADER_LEN + 20, 3)
        .unwrap();
    assert_corrupt(&disk, "flip in a sealed segment");

    let disk = written();
    let last = segment_paths(&disk).pop().unwrap();
    disk.flip_bit(&last, SEGMENT_HEADER_LEN + 14, 0).unwrap();
    assert_corrupt(&disk, "flip in the last segment before a valid entry");

    let disk = written();
    let segments = segment_paths(&disk);
    disk.delete_file(&segments[1]).unwrap();
    assert_corrupt(&disk, "a segment in the middle deleted");

    let disk = written();
    let last = segment_paths(&disk).pop().unwrap();
    disk.delete_file(&last).unwrap();
    assert_corrupt(&disk, "the last segment deleted");

    let disk = written();
    disk.zero_range(&paths().manifest, 0, 2 * segment::SLOT_STRIDE)
        .unwrap();
    assert_corrupt(&disk, "both manifest slots zeroed");

    let disk = written();
    for segment in segment_paths(&disk) {
        disk.delete_file(&segment).unwrap();
    }
    assert_corrupt(&disk, "every segment gone");

    let disk = written();
    disk.delete_file(&paths().manifest).unwrap();
    assert_corrupt(&disk, "the manifest gone, segments holding entries");
}

#[test]
fn what_a_failed_fdatasync_left_readable_is_durable_once_the_store_reopens() {
    // Checks the Linux failed-fsync case: an append and a vote whose fdatasync failed stay
    // readable from the page cache; the reopened store acts on them, so they must survive the
    // next power cut too (written again and synced at open).
    let disk = CrashDisk::new();
    let mut store = open(&disk).unwrap();
    store
        .append(&(0..5).map(|i| entry(1, i)).collect::<Vec<_>>())
        .unwrap();
    store.save_vote(&Vote::new(1, 1)).unwrap();
    disk.arm_sync_failure(0);
    assert!(store.append(&[entry(1, 5)]).is_err());
    assert!(
        store.append(&[entry(1, 6)]).is_err(),
        "a broken store refuses writes"
    );
    drop(store);
    disk.close_all();
    let mut store = open(&disk).unwrap();
    disk.arm_sync_failure(0);
    assert!(store.save_vote(&Vote::new(2, 1)).is_err());
    drop(store);
    disk.close_all();
    let store = open(&disk).unwrap();
    let seen = Model::of(&store);
    assert_eq!(seen.vote, Some(Vote::new(2, 1)));
    assert_eq!(seen.entries.last(), Some(&log_id(1, 5)));
    drop(store);
    disk.power_cut(&mut rng_for(1, 2, 3));
    assert_eq!(Model::of(&open(&disk).unwrap()), seen);
}

/// What the store must hold: the acknowledged vote, committed id, purge point and entries.
#[derive(Debug, Clone, PartialEq)]
struct Model {
    vote: Option<GroupVote>,
    committed: Option<GroupLogId>,
    purged: Option<GroupLogId>,
    entries: Vec<GroupLogId>,
}

impl Model {
    fn last(&self) -> Option<GroupLogId> {
        self.entries.last().copied().max(self.purged)
    }

    fn next_index(&self) -> u64 {
        self.last().map_or(0, |l| l.index + 1)
    }

    fn of(store: &LogStore) -> Model {
        Model {
            vote: store.vote(),
            committed: store.committed(),
            purged: store.log_state().0,
            entries: held(store),
        }
    }
}

/// One operation of the random history.
#[derive(Debug, Clone)]
enum Op {
    Append(Vec<GroupEntry>),
    Vote(GroupVote),
    Committed(GroupLogId),
    Truncate(u64),
    Purge(GroupLogId),
}

/// The next operation, valid for raft: appends in the vote's term, truncations only above the
/// committed index, purges only up to it.
fn next_op(rng: &mut impl Rng, model: &Model) -> Op {
    let term = model.vote.map_or(1, |v| v.leader_id.term);
    let next = model.next_index();
    let floor = model.committed.map_or(0, |c| c.index + 1);
    // Truncations start at a held entry above the committed one.
    let low = model.entries.first().map(|l| l.index.max(floor));
    match rng.random_range(0..10) {
        0 => Op::Vote(Vote::new(term + rng.random_range(0..2), 1)),
        1 if low.is_some_and(|low| low < next) => {
            Op::Truncate(rng.random_range(low.unwrap_or(0)..next))
        }
        2 if !model.entries.is_empty() => {
            let at = rng.random_range(0..model.entries.len());
            let id = model.entries[at];
            if model.committed.is_none_or(|c| c.index < id.index) {
                Op::Committed(id)
            } else {
                Op::Purge(model.committed.unwrap_or(id))
            }
        }
        3 if model
            .committed
            .is_some_and(|c| model.purged.is_none_or(|p| p < c)) =>
        {
            let committed = model.committed.unwrap_or(log_id(0, 0));
            if rng.random_bool(0.2) {
                // A snapshot installed ahead of the log.
                Op::Purge(log_id(term, next + rng.random_range(0..4)))
            } else {
                Op::Purge(committed)
            }
        }
        _ => {
            let n = rng.random_range(1..5);
            Op::Append((next..next + n).map(|i| entry(term, i)).collect())
        }
    }
}

/// The model after `op` returned.
fn apply(model: &Model, op: &Op) -> Model {
    let mut after = model.clone();
    match op {
        Op::Append(entries) => after.entries.extend(entries.iter().map(|e| e.log_id)),
        Op::Vote(vote) => after.vote = Some(*vote),
        Op::Committed(id) => after.committed = Some(*id),
        Op::Truncate(index) => after.entries.retain(|l| l.index < *index),
        Op::Purge(id) => {
            after.purged = Some(*id);
            after.entries.retain(|l| l.index > id.index);
        }
    }
    after
}

fn run(store: &mut LogStore, op: &Op) -> Result<(), LogStoreError> {
    match op {
        Op::Append(entries) => store.append(entries),
        Op::Vote(vote) => store.save_vote(vote),
        Op::Committed(id) => store.save_committed(Some(*id)),
        Op::Truncate(index) => store.truncate(*index),
        Op::Purge(id) => store.purge(*id),
    }
}

/// What a power cut inside `op` may leave: the state before it, after it, or for an append the
/// state before with a prefix of its entries.
fn check_recovered(seed: u64, before: &Model, op: &Op, got: &Model) {
    let after = apply(before, op);
    if got == before || got == &after {
        return;
    }
    if let Op::Append(entries) = op {
        let n = got.entries.len().saturating_sub(before.entries.len());
        let mut partial = before.clone();
        partial
            .entries
            .extend(entries.iter().take(n).map(|e| e.log_id));
        if got == &partial {
            return;
        }
    }
    panic!("seed {seed}: a power cut inside {op:?} left {got:?}, before {before:?}");
}

/// Runs seeded random histories on a disk of `crash_model`, cutting the power inside the n-th
/// disk operation, and checks each reopened store against the model (see the tests below).
/// Returns how many cuts fired inside a call, and how many opens reported corruption (allowed
/// only with `corruption_allowed`, and then only right after a cut inside a call).
fn crash_histories(
    crash_model: CrashModel,
    store_config: LogStoreConfig,
    seeds: std::ops::Range<u64>,
    corruption_allowed: bool,
) -> (u32, u32) {
    let open = |disk: &CrashDisk| {
        LogStore::open(
            Arc::new(disk.mount()),
            &paths(),
            store_config,
            BlockingMode::Inline,
        )
        .map(|(store, _)| store)
    };
    let (mut n_cuts, mut n_corrupt) = (0, 0);
    for seed in seeds {
        let mut rng = rng_for(seed, 0, 0x7261_6674);
        let disk = CrashDisk::with_model(crash_model);
        let mut model = Model::of(&open(&disk).unwrap());
        for _round in 0..3 {
            let mounted = disk.mount();
            let reopened = LogStore::open(
                Arc::new(mounted.clone()),
                &paths(),
                store_config,
                BlockingMode::Inline,
            );
            let mut store = reopened.unwrap_or_else(|e| panic!("seed {seed}: {e}")).0;
            assert_eq!(Model::of(&store), model, "seed {seed}: reopen");
            let cut_at = rng.random_range(1..60);
            disk.arm_power_cut(cut_at, rng_for(seed, cut_at.into(), 1));
            let mut interrupted = None;
            for _ in 0..40 {
                let op = next_op(&mut rng, &model);
                match run(&mut store, &op) {
                    Ok(()) => model = apply(&model, &op),
                    Err(error) => {
                        assert!(!mounted.is_alive(), "seed {seed}: {op:?} failed: {error}");
                        interrupted = Some(op);
                        break;
                    }
                }
                assert_eq!(Model::of(&store), model, "seed {seed}: after {op:?}");
            }
            drop(store);
            let Some(op) = interrupted else {
                disk.disarm_power_cut();
                disk.power_cut(&mut rng_for(seed, 2, 2));
                let store = open(&disk).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                assert_eq!(Model::of(&store), model, "seed {seed}: cut between calls");
                continue;
            };
            n_cuts += 1;
            let store = match open(&disk) {
                Ok(store) => store,
                Err(LogStoreError::Corrupt(c)) if corruption_allowed => {
                    // A write whose later sectors landed without its earlier ones looks like
                    // damage followed by valid data: refused, the replica is rebuilt.
                    n_corrupt += 1;
                    assert!(matches!(op, Op::Append(_)), "seed {seed}: {op:?}: {c}");
                    break;
                }
                Err(e) => panic!("seed {seed}: after {op:?}: {e}"),
            };
            let got = Model::of(&store);
            check_recovered(seed, &model, &op, &got);
            model = got;
        }
    }
    (n_cuts, n_corrupt)
}

#[test]
fn power_cuts_at_seeded_points_keep_every_returned_call() {
    // Runs seeded random histories of appends, votes, commits, truncations and purges, cuts
    // the power inside the n-th disk operation (a write, allocation, sync, removal; the last
    // unsynced write torn to a prefix), reopens and checks against a model of the calls that
    // returned: the vote never goes back, no entry after a returned truncation survives, every
    // flushed entry survives, and the interrupted call left its state before, after, or (an
    // append) a prefix of its entries. Every reopen succeeds.
    let (n_cuts, _) = crash_histories(CrashModel::default(), config(), 0..300, false);
    assert!(n_cuts > 300, "only {n_cuts} power cuts fired inside a call");
}

#[test]
fn power_cuts_tearing_sectors_in_any_order_never_open_a_wrong_log() {
    // The same histories on a disk whose torn write keeps any subset of its sectors: a reopen
    // either gives a state the model allows or, only after a cut inside an append, reports
    // corruption (a bad entry followed by a valid one); it never opens anything else.
    let model = CrashModel {
        tear: Tear::Sectors,
        ..CrashModel::default()
    };
    // Segments of several sectors, so that writes cross sector boundaries.
    let store_config = LogStoreConfig {
        segment_bytes_max: 4096,
        ..config()
    };
    let (n_cuts, n_corrupt) = crash_histories(model, store_config, 1000..1200, true);
    assert!(n_cuts > 200, "only {n_cuts} power cuts fired inside a call");
    assert!(
        n_corrupt < n_cuts,
        "{n_corrupt} of {n_cuts} cuts reported corruption"
    );
}

// Checks the sparse index: with a point per 1 KiB of entries, 2,000 entries in 1 MiB segments
// keep a few dozen points, not one per entry, and every entry and every range (across segment
// rolls, after a truncation in the middle of an index interval and after a reopen) still reads
// back exactly.
#[test]
fn a_sparse_index_keeps_a_point_per_interval_and_reads_every_entry() {
    let disk = CrashDisk::new();
    let sparse = LogStoreConfig {
        segment_bytes_max: 1 << 16,
        entry_bytes_max: 256,
        index_interval_bytes: 1 << 10,
    };
    let open = |disk: &CrashDisk| {
        LogStore::open(
            Arc::new(disk.mount()),
            &paths(),
            sparse,
            BlockingMode::Inline,
        )
        .map(|(store, _)| store)
        .unwrap()
    };
    let mut store = open(&disk);
    let all: Vec<GroupEntry> = (0..2000).map(|i| entry(1, i)).collect();
    for chunk in all.chunks(37) {
        store.append(chunk).unwrap();
    }
    let check = |store: &LogStore, n: u64| {
        let shared = store.shared.read().unwrap();
        let points: usize = shared.segments.iter().map(|s| s.index.points()).sum();
        let held: u64 = shared.segments.iter().map(|s| s.count).sum();
        assert_eq!(held, n);
        assert!(
            shared.segments.len() > 1,
            "the entries should span segments"
        );
        assert!(
            points < n as usize / 8,
            "{points} index points for {n} entries"
        );
        drop(shared);
        let reader = store.reader();
        for i in (0..n).step_by(7) {
            let got = reader.entries(i, i + 1).unwrap();
            assert_eq!(got, vec![entry(1, i)], "entry {i}");
        }
        let got = reader.entries(13, n).unwrap();
        assert_eq!(got.len() as u64, n - 13);
        assert!(got.iter().zip(13..).all(|(e, i)| *e == entry(1, i)));
    };
    check(&store, 2000);
    // A cut between two index points, then new entries of another term after it.
    store.truncate(1503).unwrap();
    check(&store, 1503);
    store
        .append(&(1503..1600).map(|i| entry(2, i)).collect::<Vec<_>>())
        .unwrap();
    let got = store.reader().entries(1490, 1510).unwrap();
    let want: Vec<GroupEntry> = (1490..1503)
        .map(|i| entry(1, i))
        .chain((1503..1510).map(|i| entry(2, i)))
        .collect();
    assert_eq!(got, want);
    drop(store);
    let store = open(&disk);
    assert_eq!(store.reader().entries(1490, 1510).unwrap(), want);
    assert_eq!(store.log_state().1, Some(log_id(2, 1599)));
}
