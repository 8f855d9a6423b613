use super::*;
use crate::env::FsDisk;
use sluice_proto::{BootEpoch, Identity, Payload, Role, SensorId, UnixMillis};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        durable_record_interval: std::time::Duration::ZERO,
        entry_bytes_max: 1 << 20,
    }
}

fn event(seq: u64) -> Event {
    Event {
        producer: Identity::new("t", Role::Edge, "p").unwrap(),
        sensor: SensorId::new("s").unwrap(),
        boot_epoch: BootEpoch(1),
        seq,
        device_time: UnixMillis(0),
        received_time: UnixMillis(0),
        payload: Payload::Json(format!("{{\"n\":{seq}}}")),
    }
}

fn entry(base: u64, count: u64) -> PendingEntry {
    let mut body = Vec::new();
    for seq in base..base + count {
        codec::encode_into(&event(seq), &mut body).unwrap();
    }
    PendingEntry {
        base: Offset(base),
        count: count as u32,
        body,
    }
}

fn paths(root: &Path) -> LogPaths {
    LogPaths {
        dir: root.join("streams").join("s").join("0"),
        manifest: root.join("manifests").join("s").join("0.manifest"),
        created: false,
    }
}

fn open_with(root: &Path, mark: Option<Offset>) -> (Opened, Vec<u64>) {
    let mut seen = Vec::new();
    let opened = super::open(Arc::new(FsDisk), &paths(root), config(), mark, |o, e| {
        assert_eq!(o.0, e.seq, "event at the wrong offset");
        seen.push(o.0);
    })
    .unwrap();
    (opened, seen)
}

/// Opens a log that must be writable.
fn open_ok(root: &Path) -> (LogWriter, LogReader, Recovery, Vec<u64>) {
    let (opened, seen) = open_with(root, None);
    let writer = opened.writer.unwrap();
    (writer, opened.reader, opened.recovery, seen)
}

/// Writes `n_entries` entries of `per_entry` events, one group commit each; closes cleanly when
/// `close` is set, else drops the writer (a crash after the last fdatasync).
fn write_some(root: &Path, n_entries: u64, per_entry: u64, close: bool) {
    let (mut w, ..) = open_ok(root);
    let start = w.next_offset().0;
    for i in 0..n_entries {
        w.append(&[entry(start + i * per_entry, per_entry)])
            .unwrap();
    }
    if close {
        w.close().unwrap();
    }
}

fn segments(root: &Path) -> Vec<PathBuf> {
    let mut names: Vec<_> = std::fs::read_dir(paths(root).dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
}

/// Byte positions of the entries of a segment file.
fn entry_positions(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut pos = SEGMENT_HEADER_LEN as usize;
    let mut out = Vec::new();
    loop {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            return out;
        }
        out.push(pos as u64);
        pos += segment::ENTRY_HEADER_LEN as usize + len;
    }
}

/// Zeroes the first 40 bytes of the last entry of the last segment (`zero`), or flips a bit of
/// its payload; returns the entry's position.
fn damage_last_entry(root: &Path, zero: bool) -> u64 {
    let path = segments(root).pop().unwrap();
    let last = *entry_positions(&path).last().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    if zero {
        bytes[last as usize..last as usize + 40].fill(0);
    } else {
        bytes[last as usize + 30] ^= 1;
    }
    std::fs::write(&path, &bytes).unwrap();
    last
}

fn corruption(opened: &Opened) -> Corruption {
    match &opened.writer {
        Err(e) => e.corruption().cloned().unwrap_or_else(|| panic!("{e}")),
        Ok(_) => panic!("corruption accepted"),
    }
}

fn readable(reader: &LogReader) -> Vec<u64> {
    reader
        .read(Offset(0), reader.end(), 100_000, u32::MAX)
        .unwrap()
        .iter()
        .map(|e| e.offset.0)
        .collect()
}

#[test]
fn appends_roll_segments_and_read_back_after_reopen() {
    // Checks that entries spanning several segments are recovered in full on reopen and read
    // back in order from any offset, honouring the event and byte limits.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 200, 5, false);
    let (w, r, rec, seen) = open_ok(dir.path());
    assert!(rec.n_segments > 3, "segments did not roll: {rec:?}");
    assert_eq!(rec.next_offset, Offset(1000));
    assert_eq!(w.next_offset(), Offset(1000));
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    for from in [0u64, 1, 7, 123, 499, 999] {
        let got = r.read(Offset(from), Offset(1000), 300, 1 << 20).unwrap();
        let want: Vec<u64> = (from..(from + 300).min(1000)).collect();
        assert_eq!(got.iter().map(|e| e.offset.0).collect::<Vec<_>>(), want);
        assert!(got.iter().all(|e| e.event == event(e.offset.0)));
    }
    let small = r.read(Offset(0), Offset(1000), 1000, 10).unwrap();
    assert_eq!(small.len(), 1, "byte limit still returns one event");
    assert!(r.read(Offset(10), Offset(10), 10, 1000).unwrap().is_empty());
}

#[test]
fn torn_tail_is_truncated_and_cannot_resurface() {
    // Checks that a half-written entry at the end of the last segment is discarded on recovery,
    // that the bytes after it are zeroed, and that later appends and reopens see exactly the
    // acknowledged data plus the new entries.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 3, 4, false);
    let path = segments(dir.path()).pop().unwrap();
    let positions = entry_positions(&path);
    let last = *positions.last().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let end = last as usize
        + segment::ENTRY_HEADER_LEN as usize
        + u32::from_le_bytes(bytes[last as usize..][..4].try_into().unwrap()) as usize;
    // A torn copy of a plausible next entry: header and half the body.
    let payload = format::encode_entry(Offset(12), 4, &entry(12, 4).body);
    let mut torn = Vec::new();
    segment::encode_entry(0, end as u64, &payload, &mut torn);
    bytes[end..end + torn.len() / 2].copy_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&path, &bytes).unwrap();

    let (mut w, r, rec, seen) = open_ok(dir.path());
    assert_eq!(rec.next_offset, Offset(12));
    assert!(rec.truncated_bytes > 0);
    assert_eq!(seen.len(), 12);
    w.append(&[entry(12, 1)]).unwrap();
    drop((w, r));
    let (_, r, rec, seen) = open_ok(dir.path());
    assert_eq!(
        (rec.next_offset, rec.truncated_bytes, seen.len()),
        (Offset(13), 0, 13)
    );
    assert_eq!(
        r.read(Offset(12), Offset(13), 10, 1 << 20).unwrap()[0].event,
        event(12)
    );
}

#[test]
fn a_flip_mid_active_segment_is_corruption_with_the_prefix_readable() {
    // Checks the reported bug: one flipped bit in an acknowledged entry in the middle of the
    // active segment is corruption naming the file and the entry's byte, the entries before it
    // stay readable, later ones are not dropped or handed to new records (no writer), and
    // opening again reports the same.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 20, 3, false);
    let path = segments(dir.path()).pop().unwrap();
    let positions = entry_positions(&path);
    assert!(positions.len() >= 6, "{positions:?}");
    let victim = positions[positions.len() / 2];
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[victim as usize + 20] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    for _ in 0..2 {
        let (opened, seen) = open_with(dir.path(), None);
        let c = corruption(&opened);
        assert_eq!((c.path.as_str(), c.pos), (path.to_str().unwrap(), victim));
        let prefix_end = opened.recovery.next_offset.0;
        assert!(prefix_end > 0 && prefix_end < 60);
        assert_eq!(seen, (0..prefix_end).collect::<Vec<_>>());
        assert_eq!(
            readable(&opened.reader),
            (0..prefix_end).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "corruption was repaired"
    );
}

#[test]
fn damage_to_the_last_entry_after_a_clean_stop_is_corruption() {
    // Checks that after a clean close (the manifest records the exact durable end) a flip in the
    // very last entry, or zeroing it, is corruption rather than a torn tail.
    for zero in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 5, 2, true);
        let last = damage_last_entry(dir.path(), zero);
        let (opened, _) = open_with(dir.path(), None);
        let c = corruption(&opened);
        assert_eq!(c.pos, last, "zero {zero}: {c}");
        assert_eq!(readable(&opened.reader), (0..8).collect::<Vec<_>>());
    }
}

#[test]
fn damage_below_the_recorded_durable_end_is_corruption_after_a_crash() {
    // Checks the manifest's durable record: after `record_durable_end` and a crash (no clean
    // close), zeroing or flipping the last recorded entry is corruption naming it, not a torn
    // tail; and entries written after the last record may still be cut as a torn tail (the
    // window the record interval leaves).
    for zero in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, ..) = open_ok(dir.path());
        for i in 0..4 {
            w.append(&[entry(i * 2, 2)]).unwrap();
        }
        w.record_durable_end().unwrap();
        drop(w);
        let last = damage_last_entry(dir.path(), zero);
        let (opened, _) = open_with(dir.path(), None);
        let c = corruption(&opened);
        assert_eq!(c.pos, last, "zero {zero}: {c}");
        assert_eq!(readable(&opened.reader), (0..6).collect::<Vec<_>>());
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut w, ..) = open_ok(dir.path());
    w.append(&[entry(0, 2)]).unwrap();
    w.record_durable_end().unwrap();
    w.append(&[entry(2, 2)]).unwrap();
    drop(w);
    damage_last_entry(dir.path(), true);
    let (_, r, rec, _) = open_ok(dir.path());
    assert_eq!(rec.next_offset, Offset(2));
    assert_eq!(readable(&r), vec![0, 1]);
}

#[test]
fn damage_in_a_closed_segment_is_corruption() {
    // Checks that a flipped byte inside an earlier, closed segment is corruption naming the file,
    // with the entries before it readable, instead of silently dropping acknowledged data.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 200, 5, false);
    let names = segments(dir.path());
    let mut bytes = std::fs::read(&names[0]).unwrap();
    let second = entry_positions(&names[0])[1];
    bytes[second as usize + 11] ^= 0x40;
    std::fs::write(&names[0], &bytes).unwrap();
    let (opened, _) = open_with(dir.path(), None);
    let c = corruption(&opened);
    assert!(c.path.ends_with("00000000000000000000.log"), "{c}");
    assert_eq!(c.pos, second);
    assert_eq!(readable(&opened.reader), (0..5).collect::<Vec<_>>());
}

#[test]
fn a_truncated_segment_is_corruption() {
    // Checks that the active segment cut below its preallocation (even after all its data) is
    // corruption at the cut, with what precedes it readable.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 4, 2, false);
    let path = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 1).unwrap();
    let (opened, _) = open_with(dir.path(), None);
    let c = corruption(&opened);
    assert_eq!(c.pos, len - 1, "{c}");
    assert_eq!(readable(&opened.reader), (0..8).collect::<Vec<_>>());
}

#[test]
fn a_deleted_segment_or_directory_is_detected() {
    // Checks that deleting the last segment, a middle segment, the whole partition directory or
    // the manifest is reported as corruption instead of starting short.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 200, 5, false);
    let names = segments(dir.path());
    let backup = tempfile::tempdir().unwrap();
    let saved = backup.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    for name in &names {
        std::fs::copy(name, saved.join(name.file_name().unwrap())).unwrap();
    }
    let restore = || {
        for name in &names {
            std::fs::copy(saved.join(name.file_name().unwrap()), name).unwrap();
        }
    };
    for victim in [names.len() - 1, 1] {
        std::fs::remove_file(&names[victim]).unwrap();
        let (opened, _) = open_with(dir.path(), None);
        let c = corruption(&opened);
        assert!(
            matches!(c.kind, CorruptionKind::Missing(_)),
            "victim {victim}: {c}"
        );
        assert!(
            c.path
                .ends_with(names[victim].file_name().unwrap().to_str().unwrap()),
            "{c}"
        );
        restore();
    }
    std::fs::remove_dir_all(paths(dir.path()).dir).unwrap();
    let (opened, _) = open_with(dir.path(), None);
    assert!(matches!(
        corruption(&opened).kind,
        CorruptionKind::Missing(_)
    ));
    assert!(
        !paths(dir.path()).dir.exists(),
        "a fresh directory was created"
    );
    std::fs::create_dir_all(paths(dir.path()).dir).unwrap();
    restore();
    let (_, _, rec, _) = open_ok(dir.path());
    assert_eq!(rec.next_offset, Offset(1000));

    std::fs::remove_file(paths(dir.path()).manifest).unwrap();
    let (opened, _) = open_with(dir.path(), None);
    let c = corruption(&opened);
    assert!(c.path.ends_with("0.manifest"), "{c}");
    assert_eq!(
        readable(&opened.reader).len(),
        1000,
        "segments still readable"
    );
}

#[test]
fn a_created_partition_whose_directory_and_manifest_are_both_gone_is_corruption() {
    // Checks the node catalog's rule: with both the segment directory and the manifest deleted,
    // a partition the catalog records as created opens read-only with a Missing corruption
    // naming its directory (and creates nothing), while one it does not record starts empty.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 10, 5, true);
    std::fs::remove_dir_all(paths(dir.path()).dir).unwrap();
    std::fs::remove_file(paths(dir.path()).manifest).unwrap();
    let created = LogPaths {
        created: true,
        ..paths(dir.path())
    };
    let opened = super::open(Arc::new(FsDisk), &created, config(), None, |_, _| {}).unwrap();
    let c = corruption(&opened);
    assert!(matches!(c.kind, CorruptionKind::Missing(_)), "{c}");
    assert_eq!(c.path, created.dir.display().to_string());
    assert!(
        !created.dir.exists() && !created.manifest.exists(),
        "files created"
    );
    let (check, found) = super::check(&FsDisk, &created, config()).unwrap();
    assert_eq!(
        (check.next_offset, found.map(|c| c.path)),
        (Offset(0), Some(c.path))
    );
    let (_, _, rec, _) = open_ok(dir.path());
    assert_eq!(
        rec.next_offset,
        Offset(0),
        "a partition never recorded starts empty"
    );
}

#[test]
fn a_roll_cut_short_is_cleaned_up() {
    // Checks that a segment created but never recorded in the manifest (a crash inside a roll)
    // is removed when empty, and refused when it holds data.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 3, 2, false);
    let extra = paths(dir.path()).dir.join(format::segment_name(Offset(6)));
    let header = SegmentHeader {
        kind: SEGMENT_KIND,
        id: 6,
        preallocated: 4096,
    };
    let mut w = SegmentWriter::create(&FsDisk, &extra, header).unwrap();
    drop(w);
    let (_, _, rec, _) = open_ok(dir.path());
    assert_eq!(rec.next_offset, Offset(6));
    assert!(!extra.exists());

    w = SegmentWriter::create(&FsDisk, &extra, header).unwrap();
    w.append(&[format::encode_entry(Offset(6), 1, &entry(6, 1).body)])
        .unwrap();
    w.sync().unwrap();
    let (opened, _) = open_with(dir.path(), None);
    assert!(matches!(&opened.writer, Err(e) if e.corruption().is_some()));
    assert!(extra.exists());
}

#[test]
fn a_durable_mark_cuts_what_a_failed_fsync_left_readable() {
    // Checks the fsyncgate defence: reopening with the last offset known durable drops every
    // entry of the last segment from it on, zeroes them, and a later reopen without the mark
    // still sees exactly the durable prefix plus what was appended after.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 200, 5, false);
    // The mark falls inside the last segment, where a failed fdatasync leaves its entries (a
    // roll only follows a successful sync): the second entry of that segment, which gets at
    // least three entries.
    let (mut w, ..) = open_ok(dir.path());
    while entry_positions(&segments(dir.path()).pop().unwrap()).len() < 3 {
        let next = w.next_offset().0;
        w.append(&[entry(next, 5)]).unwrap();
    }
    drop(w);
    let last = segments(dir.path()).pop().unwrap();
    let base: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let m = base + 5;
    let mark = Offset(m);
    let (opened, seen) = open_with(dir.path(), Some(mark));
    assert_eq!(seen, (0..m).collect::<Vec<_>>());
    let mut w = opened.writer.unwrap();
    assert_eq!(opened.recovery.next_offset, mark);
    assert_eq!(w.next_offset(), mark);
    assert_eq!(
        opened
            .reader
            .read(Offset(m - 1), Offset(m + 10), 10, 1 << 20)
            .unwrap()
            .len(),
        1
    );
    w.append(&[entry(m, 2)]).unwrap();
    drop((w, opened.reader));
    let (_, _, rec, seen) = open_ok(dir.path());
    assert_eq!(rec.next_offset, Offset(m + 2));
    assert_eq!(seen, (0..m + 2).collect::<Vec<_>>());
}

#[test]
fn check_reports_without_changing_anything() {
    // Checks that `check` reports corruption (file and byte) and the readable prefix without
    // touching the files, and reports a clean log as clean.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 10, 2, true);
    let (rec, c) = check(&FsDisk, &paths(dir.path()), config()).unwrap();
    assert_eq!((rec.next_offset, c), (Offset(20), None));
    let path = segments(dir.path()).pop().unwrap();
    let victim = entry_positions(&path)[3];
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[victim as usize + 9] ^= 2;
    std::fs::write(&path, &bytes).unwrap();
    let manifest = std::fs::read(paths(dir.path()).manifest).unwrap();
    let (rec, c) = check(&FsDisk, &paths(dir.path()), config()).unwrap();
    assert_eq!(rec.next_offset, Offset(6));
    assert_eq!(c.map(|c| c.pos), Some(victim));
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert_eq!(std::fs::read(paths(dir.path()).manifest).unwrap(), manifest);
}

#[test]
fn damage_met_by_a_read_is_an_error_and_is_remembered() {
    // Checks that a read meeting an entry damaged after recovery fails with the corruption
    // (never a short or wrong answer) and that the reader remembers it for the partition.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 6, 2, false);
    let (_w, r, _, _) = open_ok(dir.path());
    assert_eq!(r.damage(), None);
    let path = segments(dir.path()).pop().unwrap();
    let victim = entry_positions(&path)[2];
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[victim as usize + 12] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        r.read(Offset(0), Offset(4), 100, u32::MAX).unwrap().len(),
        4
    );
    let err = r.read(Offset(0), Offset(12), 100, u32::MAX).unwrap_err();
    let c = err.corruption().cloned().expect("not a corruption");
    assert_eq!(c.pos, victim);
    assert_eq!(r.damage(), Some(c));
}

#[test]
fn a_damaged_manifest_is_corruption_unless_the_partition_was_being_created() {
    // Checks that a manifest whose slots no longer check is corruption naming it when the
    // partition holds data, and that one torn while the partition was being created (an empty
    // first segment) is rewritten.
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path(), 3, 2, true);
    let manifest = paths(dir.path()).manifest;
    std::fs::write(&manifest, vec![0u8; 8192]).unwrap();
    let (opened, _) = open_with(dir.path(), None);
    let c = corruption(&opened);
    assert_eq!(c.path, manifest.display().to_string());
    assert_eq!(readable(&opened.reader), (0..6).collect::<Vec<_>>());

    let fresh = tempfile::tempdir().unwrap();
    drop(open_ok(fresh.path()));
    std::fs::write(paths(fresh.path()).manifest, vec![0u8; 100]).unwrap();
    let (mut w, ..) = open_ok(fresh.path());
    w.append(&[entry(0, 1)]).unwrap();
    w.close().unwrap();
    let (_, _, rec, _) = open_ok(fresh.path());
    assert_eq!(rec.next_offset, Offset(1));

    std::fs::remove_dir_all(paths(fresh.path()).dir).unwrap();
    std::fs::write(paths(fresh.path()).manifest, vec![0u8; 100]).unwrap();
    let (opened, _) = open_with(fresh.path(), None);
    assert!(
        opened.writer.is_err(),
        "segments lost beside a damaged manifest"
    );
}
