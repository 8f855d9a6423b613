use super::*;
use rand::SeedableRng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn read_all(file: &dyn DiskFile) -> Vec<u8> {
    let mut buf = vec![0u8; file.size().unwrap() as usize];
    file.read_at(0, &mut buf).unwrap();
    buf
}

fn path() -> &'static Path {
    Path::new("/d/f")
}

fn setup_with(model: CrashModel) -> (CrashDisk, Arc<dyn DiskFile>) {
    let disk = CrashDisk::with_model(model);
    let process = disk.mount();
    process.create_dir_all(Path::new("/d")).unwrap();
    let file = process.open(path(), true).unwrap();
    process.sync_dir(Path::new("/d")).unwrap();
    (disk, file)
}

fn setup() -> (CrashDisk, Arc<dyn DiskFile>) {
    setup_with(CrashModel::default())
}

/// The file's bytes as the next process sees them.
fn reopened(disk: &CrashDisk) -> Vec<u8> {
    read_all(&*disk.mount().open(path(), false).unwrap())
}

#[test]
fn synced_data_survives_and_unsynced_data_does_not() {
    // Checks the basic power-cut model: synced bytes survive, a write after the last sync
    // survives only as a (possibly empty or full) prefix, and old handles die.
    for seed in 0..64 {
        let (disk, file) = setup();
        file.write_at(0, b"durable!").unwrap();
        file.sync_data().unwrap();
        file.write_at(8, &[7u8; 2000]).unwrap();
        disk.power_cut(&mut rng(seed));
        let content = reopened(&disk);
        assert_eq!(&content[..8], b"durable!");
        assert!(
            content[8..].iter().all(|b| *b == 7),
            "seed {seed}: only a prefix of the last write"
        );
        assert!(
            file.write_at(0, b"zombie").is_err(),
            "a dead handle must not write"
        );
        assert!(file.size().is_err());
    }
}

#[test]
fn only_the_last_unsynced_write_may_survive() {
    // Checks that earlier unsynced writes and size changes never reach the medium: only the
    // last write of a file is a candidate for tearing.
    for seed in 0..64 {
        let (disk, file) = setup();
        file.write_at(0, &[1u8; 100]).unwrap();
        file.allocate(4096).unwrap();
        file.write_at(200, &[2u8; 100]).unwrap();
        disk.power_cut(&mut rng(seed));
        let content = reopened(&disk);
        assert!(content.len() <= 300, "seed {seed}: {}", content.len());
        assert!(content[..content.len().min(200)].iter().all(|b| *b == 0));
    }
}

#[test]
fn torn_writes_cover_none_all_and_partial() {
    // Checks that across seeds a last unsynced write survives not at all, fully, and
    // partially, under both tear models.
    for tear in [Tear::Prefix, Tear::Sectors] {
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let model = CrashModel {
                tear,
                ..CrashModel::default()
            };
            let (disk, file) = setup_with(model);
            file.write_at(100, &[1u8; 3000]).unwrap();
            disk.power_cut(&mut rng(seed));
            let kept = reopened(&disk).iter().filter(|b| **b == 1).count();
            seen.insert(match kept {
                0 => "none",
                3000 => "all",
                _ => "partial",
            });
        }
        assert_eq!(seen.len(), 3, "{tear:?}: {seen:?}");
    }
}

#[test]
fn sector_tears_persist_later_sectors_without_earlier_ones() {
    // Checks `Tear::Sectors`: some seed keeps a later sector of a write while losing an
    // earlier one (the hole keeps the old durable bytes), surviving pieces are whole sectors of
    // the file, and the same seed always tears the same way.
    let mut out_of_order = false;
    for seed in 0..100 {
        let tear = |seed| {
            let model = CrashModel {
                tear: Tear::Sectors,
                ..CrashModel::default()
            };
            let (disk, file) = setup_with(model);
            file.write_at(0, &[9u8; 2048]).unwrap();
            file.sync_data().unwrap();
            file.write_at(256, &[1u8; 1536]).unwrap();
            disk.power_cut(&mut rng(seed));
            reopened(&disk)
        };
        let content = tear(seed);
        assert_eq!(content, tear(seed), "seed {seed}: not deterministic");
        // Pieces: bytes 256..512 (part of sector 0), then sectors 1, 2, and 1536..1792.
        let kept: Vec<bool> = [(256, 512), (512, 1024), (1024, 1536), (1536, 1792)]
            .iter()
            .map(|&(start, end)| {
                let piece = &content[start..end];
                assert!(
                    piece.iter().all(|b| *b == 1) || piece.iter().all(|b| *b == 9),
                    "seed {seed}: a piece is torn inside a sector"
                );
                piece[0] == 1
            })
            .collect();
        out_of_order |= kept.windows(2).any(|w| !w[0] && w[1]);
    }
    assert!(out_of_order, "no seed reordered sectors");
}

#[test]
fn unsynced_directory_entries_may_vanish() {
    // Checks that a created file whose directory was never synced disappears on some
    // power cuts and survives on others; a synced one always survives.
    let mut outcomes = BTreeSet::new();
    for seed in 0..64 {
        let (disk, _file) = setup();
        let process = disk.mount();
        let g = process.open(Path::new("/d/g"), true).unwrap();
        g.write_at(0, b"x").unwrap();
        g.sync_data().unwrap();
        disk.power_cut(&mut rng(seed));
        let names = disk.mount().list(Path::new("/d")).unwrap();
        assert!(names.contains(&"f".to_owned()));
        outcomes.insert(names.contains(&"g".to_owned()));
    }
    assert_eq!(outcomes.len(), 2);
}

#[test]
fn armed_power_cut_fires_inside_the_operation() {
    // Checks that an armed power cut fails the operation it fires in, tears nothing that was
    // synced, and that a clean process exit keeps unsynced data but kills old handles.
    let (disk, file) = setup();
    file.write_at(0, b"abc").unwrap();
    file.sync_data().unwrap();
    disk.arm_power_cut(2, rng(1));
    file.write_at(3, b"def").unwrap();
    assert!(file.sync_data().is_err(), "the second operation crashes");
    assert!(!disk.disarm_power_cut(), "it fired, nothing is pending");
    assert_eq!(disk.stats().n_crashes_mid_io, 1);
    let process = disk.mount();
    let f = process.open(path(), false).unwrap();
    assert!(read_all(&*f).starts_with(b"abc"));
    f.write_at(0, b"xyz").unwrap();
    disk.close_all();
    assert!(f.read_at(0, &mut [0u8; 3]).is_err());
    assert!(
        reopened(&disk).starts_with(b"xyz"),
        "exit keeps the page cache"
    );
    assert_eq!(disk.stats().n_ops_after_exit, 1);
}

#[test]
fn a_removal_is_a_crash_point_only_when_the_model_says_so() {
    // Checks `remove_is_crash_point`: with it an armed cut fires in `remove` (which removes
    // nothing); without it the cut waits for the next write.
    for remove_is_crash_point in [true, false] {
        let model = CrashModel {
            remove_is_crash_point,
            ..CrashModel::default()
        };
        let (disk, file) = setup_with(model);
        disk.arm_power_cut(1, rng(2));
        let removed = disk.mount().remove(path());
        assert_eq!(removed.is_err(), remove_is_crash_point);
        assert_eq!(disk.disarm_power_cut(), !remove_is_crash_point);
        drop(file);
    }
}

#[test]
fn a_cut_that_fired_unwatched_is_returned_by_the_next_wait() {
    // Checks `wait_power_cut`: a cut that fired while nobody waited is remembered, so the next
    // wait returns its report at once.
    let (disk, file) = setup();
    file.write_at(0, b"abc").unwrap();
    disk.arm_power_cut(1, rng(4));
    assert!(file.sync_data().is_err());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let report = runtime.block_on(disk.wait_power_cut());
    assert_eq!(report.n_files_reverted, 1);
}

#[test]
fn failed_sync_drops_pages_but_reads_still_see_them() {
    // Checks the Linux fsync-failure model: the failing sync returns EIO, reads keep
    // returning the written bytes (page cache), a later successful sync does not persist
    // them, and a power cut loses them.
    let (disk, file) = setup();
    file.write_at(0, b"synced").unwrap();
    file.sync_data().unwrap();
    disk.arm_sync_failure(0);
    file.write_at(6, b"dropped").unwrap();
    assert!(file.sync_data().is_err());
    assert_eq!(read_all(&*file), b"synceddropped".to_vec());
    file.write_at(13, b"later").unwrap();
    file.sync_data().unwrap();
    assert!(!disk.disarm_sync_failures(), "the one failure was used");
    disk.power_cut(&mut rng(3));
    assert_eq!(reopened(&disk), b"synced\0\0\0\0\0\0\0later".to_vec());
}

#[test]
fn sync_failures_follow_the_plan() {
    // Checks `fail_syncs`: `n_ok` syncs succeed, then `n_fail` fail, then syncs work again;
    // `u32::MAX` failures last until disarmed.
    let (disk, file) = setup();
    disk.fail_syncs(2, 3);
    let results: Vec<bool> = (0..7).map(|_| file.sync_data().is_ok()).collect();
    assert_eq!(results, [true, true, false, false, false, true, true]);
    disk.fail_syncs(0, u32::MAX);
    assert!((0..50).all(|_| file.sync_data().is_err()));
    assert!(disk.disarm_sync_failures());
    file.sync_data().unwrap();
    assert_eq!(disk.stats().n_sync_failures, 53);
}

#[test]
fn a_full_disk_refuses_growth_until_space_returns() {
    // Checks the full-disk model: growing a file fails with ENOSPC and changes nothing,
    // writes inside the file's size still work, and clearing it lets the file grow again.
    let (disk, file) = setup();
    file.allocate(8).unwrap();
    disk.set_full(true);
    let error = file.write_at(6, b"abcd").unwrap_err();
    assert!(error.is_no_space(), "{error}");
    assert!(file.allocate(64).is_err());
    assert_eq!(file.size().unwrap(), 8);
    file.write_at(0, b"inside").unwrap();
    disk.set_full(false);
    file.write_at(6, b"abcd").unwrap();
    assert_eq!(read_all(&*file), b"insideabcd".to_vec());
    assert_eq!(disk.stats().n_no_space, 2);
}

#[test]
fn a_partial_allocation_grows_the_file_half_way_then_fails() {
    // Checks `set_partial_allocate`: on a full disk `fallocate` leaves the file at half the
    // requested length and reports ENOSPC.
    let (disk, file) = setup();
    disk.set_full(true);
    disk.set_partial_allocate(true);
    assert!(file.allocate(1000).unwrap_err().is_no_space());
    assert_eq!(file.size().unwrap(), 500);
}

#[test]
fn read_only_disks_and_immutable_files_refuse_changes() {
    // Checks EROFS for the whole disk and EPERM for one immutable file: every change fails
    // with that kind and changes nothing, reads still work, and clearing the flag heals it.
    let (disk, file) = setup();
    file.write_at(0, b"kept").unwrap();
    let process = disk.mount();
    for kind in [ErrorKind::ReadOnlyFilesystem, ErrorKind::PermissionDenied] {
        let set = |on| match kind {
            ErrorKind::ReadOnlyFilesystem => disk.set_read_only(on),
            _ => disk.set_immutable(path(), on),
        };
        set(true);
        let refusals = [
            file.write_at(0, b"x").unwrap_err(),
            file.allocate(100).unwrap_err(),
            file.truncate(0).unwrap_err(),
            process.remove(path()).unwrap_err(),
        ];
        for error in refusals {
            assert!(
                matches!(error, DiskError::Io { kind: k, .. } if k == kind),
                "{error}"
            );
        }
        assert_eq!(read_all(&*file), b"kept".to_vec());
        file.sync_data().unwrap();
        set(false);
    }
    disk.set_read_only(true);
    assert!(process.open(Path::new("/d/new"), true).is_err());
    disk.set_read_only(false);
    file.write_at(0, b"KEPT").unwrap();
    assert_eq!(disk.stats().n_refused_read_only, 9);
}

#[test]
fn available_bytes_is_what_the_caller_set() {
    // Checks that `available_bytes` reports "cannot tell" by default and then what the test
    // set, whatever the full flag says.
    let (disk, _file) = setup();
    let dir = Path::new("/d");
    assert_eq!(disk.mount().available_bytes(dir).unwrap(), None);
    disk.set_available_bytes(Some(4096));
    disk.set_full(true);
    assert_eq!(disk.mount().available_bytes(dir).unwrap(), Some(4096));
}

#[test]
fn damage_hits_the_medium_and_the_page_cache() {
    // Checks each damage call: a flipped bit, a zeroed range, a truncation and new content
    // are seen by reads at once and survive a power cut; a deleted file is gone after one;
    // damage outside a file or to a missing file is refused.
    let (disk, file) = setup();
    file.write_at(0, &[0xffu8; 16]).unwrap();
    file.sync_data().unwrap();
    disk.flip_bit(path(), 3, 1).unwrap();
    disk.zero_range(path(), 8, 4).unwrap();
    disk.truncate_file(path(), 14).unwrap();
    let mut expected = vec![0xffu8; 14];
    expected[3] = 0xfd;
    expected[8..12].fill(0);
    assert_eq!(read_all(&*file), expected);
    disk.power_cut(&mut rng(5));
    assert_eq!(reopened(&disk), expected);
    assert!(disk.flip_bit(path(), 14, 0).is_err());
    assert!(disk.zero_range(path(), 10, 5).is_err());
    disk.set_bytes(path(), b"new".to_vec()).unwrap();
    assert_eq!(disk.durable_bytes(path()), Some(b"new".to_vec()));
    disk.delete_file(path()).unwrap();
    assert!(disk.delete_file(path()).is_err());
    disk.power_cut(&mut rng(6));
    assert!(disk.mount().open(path(), false).is_err());
    assert_eq!(disk.n_files(), 0);
    assert_eq!(disk.stats().n_damaged, 5);
}

#[test]
fn tracked_directories_remember_their_most_files() {
    // Checks `track_dir`/`files_max`: the high-water mark of files in a directory, which
    // removals do not lower.
    let (disk, _file) = setup();
    let dir = Path::new("/d");
    disk.track_dir(dir);
    let process = disk.mount();
    for name in ["a", "b"] {
        process.open(&dir.join(name), true).unwrap();
    }
    process.remove(&dir.join("a")).unwrap();
    process.open(&dir.join("c"), true).unwrap();
    assert_eq!(disk.files_max(dir), 3);
    assert_eq!(disk.files_max(Path::new("/other")), 0);
}

#[test]
fn the_same_seed_gives_the_same_disk() {
    // Checks determinism: a workload of unsynced writes, creations and removals followed by a
    // power cut leaves the same files and the same report for the same seed, and seeds differ.
    let run = |seed: u64| {
        let (disk, file) = setup_with(CrashModel {
            tear: Tear::Sectors,
            ..CrashModel::default()
        });
        let process = disk.mount();
        for i in 0..20u64 {
            file.write_at(i * 300, &[i as u8 + 1; 700]).unwrap();
            let other = process.open(&Path::new("/d").join(format!("{i}")), true);
            other.unwrap().write_at(0, &[1u8; 900]).unwrap();
            if i % 3 == 0 {
                file.sync_data().unwrap();
            }
        }
        let report = disk.power_cut(&mut rng(seed));
        (report, disk.files())
    };
    assert_eq!(run(11), run(11));
    assert!((12..20).any(|seed| run(seed) != run(11)));
}
