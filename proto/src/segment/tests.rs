use super::*;
use crate::testing::CrashDisk;

const KIND: SegmentKind = SegmentKind {
    magic: *b"TESTSEGM",
    version: 3,
};
const PREALLOC: u64 = 1024;
const ID: u64 = 77;

/// An empty disk holding the segment's directory.
fn new_disk() -> CrashDisk {
    let disk = CrashDisk::new();
    disk.create_dir_all(Path::new("/seg")).unwrap();
    disk
}

fn path() -> PathBuf {
    PathBuf::from("/seg/00077.test")
}

fn payload(i: usize) -> Vec<u8> {
    // Varying sizes, never all zero.
    (0..(5 + i * 7 % 23))
        .map(|j| (i * 31 + j) as u8 | 1)
        .collect()
}

/// A segment of `n` entries written in batches of two, synced; returns the disk and each entry's
/// `(pos, end)`.
fn written(n: usize) -> (CrashDisk, Vec<(u64, u64)>) {
    let disk = new_disk();
    let header = SegmentHeader {
        kind: KIND,
        id: ID,
        preallocated: PREALLOC,
    };
    let mut writer = SegmentWriter::create(&disk, &path(), header).unwrap();
    let mut spans = Vec::new();
    let payloads: Vec<Vec<u8>> = (0..n).map(payload).collect();
    for batch in payloads.chunks(2) {
        let positions = writer.append(batch).unwrap();
        for (pos, p) in positions.iter().zip(batch) {
            spans.push((*pos, pos + entry_len(p.len())));
        }
        writer.sync().unwrap();
    }
    assert_eq!(writer.durable_end(), spans.last().map_or(64, |s| s.1));
    (disk, spans)
}

fn expect(durable_end: u64, sealed: bool) -> ScanExpect {
    ScanExpect {
        id: Some(ID),
        durable_end,
        sealed,
        entry_bytes_max: 1 << 10,
    }
}

/// Scans and returns the scan plus the payloads handed over.
fn scan_of(disk: &CrashDisk, expect: ScanExpect) -> (Scan, Vec<Vec<u8>>) {
    let file = disk.open(&path(), false).unwrap();
    let mut seen = Vec::new();
    let scan = scan(&*file, &path(), KIND, &expect, |_, p| {
        seen.push(p.to_vec());
        Ok(())
    })
    .unwrap();
    (scan, seen)
}

fn prefix(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(payload).collect()
}

#[test]
fn entries_round_trip_and_a_clean_segment_scans_clean() {
    // Checks that written entries come back in order with their positions, that the scan of an
    // undamaged segment reports neither torn tail nor corruption, and that read_entry reads each.
    let (disk, spans) = written(7);
    let (scan, seen) = scan_of(&disk, expect(spans[6].1, false));
    assert_eq!(seen, prefix(7));
    assert_eq!(
        (scan.n_entries, scan.data_end, scan.torn, scan.corruption),
        (7, spans[6].1, None, None)
    );
    let file = disk.open(&path(), false).unwrap();
    for (i, (pos, end)) in spans.iter().enumerate() {
        let (p, next) = read_entry(&*file, &path(), ID, *pos, spans[6].1, 1 << 10).unwrap();
        assert_eq!((p, next), (payload(i), *end));
    }
}

/// Which region of the file a byte belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Header,
    /// Entry `i`: its header (length, CRC) or payload.
    Entry(usize),
    /// The preallocated zeros after the data.
    Tail,
}

fn region(spans: &[(u64, u64)], byte: u64) -> Region {
    if byte < SEGMENT_HEADER_LEN {
        return Region::Header;
    }
    match spans.iter().position(|(p, e)| (*p..*e).contains(&byte)) {
        Some(i) => Region::Entry(i),
        None => Region::Tail,
    }
}

/// Checks the rule for one damaged copy of a segment of `n` entries whose first damaged byte is
/// `byte`, under each thing the caller may know (nothing, the durable end, sealed).
fn check_damage(disk: &CrashDisk, spans: &[(u64, u64)], byte: u64, what: &str) {
    let n = spans.len();
    let data_end = spans[n - 1].1;
    for (durable_end, sealed) in [(0, false), (data_end, false), (data_end, true)] {
        let (scan, seen) = scan_of(disk, expect(durable_end, sealed));
        let ctx = format!("{what} at byte {byte}, durable_end {durable_end}, sealed {sealed}");
        match region(spans, byte) {
            Region::Header => {
                let c = scan.corruption.expect(&ctx);
                assert!(c.pos < SEGMENT_HEADER_LEN, "{ctx}: {c}");
                assert!(seen.is_empty(), "{ctx}");
            }
            Region::Entry(i) if i + 1 < n || durable_end > 0 || sealed => {
                // Below the last write or the known durable end: corruption at the entry, the
                // entries before it handed over.
                let c = scan.corruption.expect(&ctx);
                assert_eq!(c.pos, spans[i].0, "{ctx}: {c}");
                assert_eq!(c.path, path().display().to_string());
                assert_eq!(seen, prefix(i), "{ctx}");
                assert_eq!(scan.data_end, spans[i].0, "{ctx}");
                assert!(scan.torn.is_none(), "{ctx}");
            }
            Region::Entry(i) => {
                // The last write, nothing known about its durability: a torn tail.
                assert_eq!(scan.corruption, None, "{ctx}");
                let torn = scan.torn.expect(&ctx);
                assert_eq!(torn.pos, spans[i].0, "{ctx}");
                assert!(torn.end <= data_end, "{ctx}");
                assert_eq!(seen, prefix(i), "{ctx}");
            }
            Region::Tail if sealed => {
                let c = scan.corruption.expect(&ctx);
                assert_eq!(c.pos, data_end, "{ctx}: {c}");
                assert!(
                    matches!(
                        c.kind,
                        CorruptionKind::Entry {
                            why: NotTorn::Sealed,
                            ..
                        }
                    ),
                    "{ctx}: {c}"
                );
                assert_eq!(seen, prefix(n), "{ctx}");
            }
            Region::Tail => {
                // After all the data, nothing valid after it: a torn tail, every entry kept.
                assert_eq!(scan.corruption, None, "{ctx}");
                let torn = scan.torn.expect(&ctx);
                assert_eq!((torn.pos, torn.end), (data_end, byte + 1), "{ctx}");
                assert_eq!(seen, prefix(n), "{ctx}");
            }
        }
    }
}

#[test]
fn a_flipped_bit_anywhere_is_torn_only_in_the_last_write() {
    // Checks the recovery rule for a flip of every bit of the header, of every entry (length,
    // CRC, payload, the boundary between entries), of the last entry, and of bytes of the zero
    // tail: damage followed by a valid entry, below the durable end, in a sealed segment or in
    // the header is corruption naming the byte where the valid data stops, with the prefix
    // before it handed over; only damage in the last entry (when its durability is unknown) or
    // in the tail is a torn tail.
    let (disk, spans) = written(6);
    let clean = disk.bytes(&path()).unwrap();
    let data_end = spans[5].1;
    let tail_bytes = [
        data_end,
        data_end + 1,
        data_end + 7,
        data_end + 100,
        PREALLOC - 1,
    ];
    let bytes = (0..data_end).chain(tail_bytes);
    for byte in bytes {
        for bit in 0..8 {
            let mut damaged = clean.clone();
            damaged[byte as usize] ^= 1 << bit;
            disk.set_bytes(&path(), damaged).unwrap();
            check_damage(&disk, &spans, byte, &format!("flip of bit {bit}"));
        }
    }
}

#[test]
fn zeroed_ranges_are_corruption_unless_in_the_last_write() {
    // Checks the rule for zeroed ranges: the header, each whole entry, each entry's header, the
    // second half of each payload. Zeroing the whole last entry leaves a clean end, which is
    // corruption only when the caller knows the durable end lies beyond it.
    let (disk, spans) = written(6);
    let clean = disk.bytes(&path()).unwrap();
    let mut ranges = vec![(0u64, SEGMENT_HEADER_LEN), (0, 8), (60, 64)];
    for (pos, end) in &spans {
        ranges.push((*pos, *pos + ENTRY_HEADER_LEN));
        ranges.push(((*pos + *end) / 2 + 4, *end));
        ranges.push((*pos, *end));
    }
    let last = spans[5];
    for (from, to) in ranges {
        let mut damaged = clean.clone();
        damaged[from as usize..to as usize].fill(0);
        disk.set_bytes(&path(), damaged).unwrap();
        if (from, to) == last {
            let (scan, seen) = scan_of(&disk, expect(0, false));
            assert_eq!((scan.corruption, scan.torn, seen), (None, None, prefix(5)));
            let (scan, _) = scan_of(&disk, expect(last.1, false));
            assert_eq!(
                scan.corruption.map(|c| (c.pos, c.kind)),
                Some((
                    last.0,
                    CorruptionKind::EndsBelowDurable {
                        durable_end: last.1
                    }
                ))
            );
            continue;
        }
        // The first byte that differs from the clean file is where the damage starts.
        let first = (from..to)
            .find(|b| clean[*b as usize] != 0)
            .expect("range holds a nonzero byte");
        check_damage(&disk, &spans, first, &format!("zeroed {from}..{to}"));
    }
    disk.set_bytes(&path(), clean.iter().map(|_| 0).collect())
        .unwrap();
    let (scan, _) = scan_of(&disk, expect(0, false));
    assert_eq!(
        scan.corruption.map(|c| c.kind),
        Some(CorruptionKind::HeaderZeroed)
    );
}

#[test]
fn a_file_shorter_than_its_preallocation_is_corruption() {
    // Checks that truncating the segment at any length below its preallocation is corruption at
    // the new end (or in the header), with every entry that still fits handed over.
    let (disk, spans) = written(6);
    let clean = disk.bytes(&path()).unwrap();
    let lengths = (0..spans[5].1 + 2).chain([PREALLOC - 1]);
    for len in lengths {
        disk.set_bytes(&path(), clean[..len as usize].to_vec())
            .unwrap();
        let (scan, seen) = scan_of(&disk, expect(0, false));
        let c = scan
            .corruption
            .unwrap_or_else(|| panic!("truncated to {len}"));
        let kept = spans.iter().filter(|(_, e)| *e <= len).count();
        if len < SEGMENT_HEADER_LEN {
            assert!(seen.is_empty());
            assert!(matches!(
                c.kind,
                CorruptionKind::Short { .. } | CorruptionKind::HeaderZeroed
            ));
        } else {
            assert_eq!((c.pos, seen), (len, prefix(kept)), "truncated to {len}");
            assert_eq!(
                c.kind,
                CorruptionKind::Short {
                    size: len,
                    preallocated: PREALLOC
                }
            );
        }
    }
}

#[test]
fn the_header_must_name_the_expected_segment_and_kind() {
    // Checks that a segment of another kind, another layer version or another id is refused
    // with a typed corruption naming the header field.
    let (disk, spans) = written(2);
    let mut e = expect(spans[1].1, false);
    e.id = Some(ID + 1);
    let (scan, seen) = scan_of(&disk, e);
    assert_eq!(
        scan.corruption.map(|c| (c.pos, c.kind)),
        Some((
            16,
            CorruptionKind::WrongId {
                found: ID,
                expected: ID + 1
            }
        ))
    );
    assert!(seen.is_empty());
    let file = disk.open(&path(), false).unwrap();
    let other = SegmentKind {
        magic: *b"OTHERSEG",
        version: 3,
    };
    let found = super::scan(&*file, &path(), other, &expect(0, false), |_, _| Ok(())).unwrap();
    assert!(matches!(
        found.corruption.map(|c| c.kind),
        Some(CorruptionKind::WrongMagic { .. })
    ));
    let newer = SegmentKind {
        magic: KIND.magic,
        version: 4,
    };
    let newer_scan = super::scan(&*file, &path(), newer, &expect(0, false), |_, _| Ok(())).unwrap();
    assert_eq!(
        newer_scan.corruption.map(|c| (c.pos, c.kind)),
        Some((
            12,
            CorruptionKind::UnsupportedVersion {
                found: 3,
                supported: 4
            }
        ))
    );
}

#[test]
fn an_entry_checks_only_where_it_was_written() {
    // Checks that the CRC binds an entry to its segment and position: a valid entry copied to
    // another place, or into a segment with another id, does not check.
    let (disk, spans) = written(3);
    let mut bytes = disk.bytes(&path()).unwrap();
    let (pos, end) = spans[0];
    let copy = bytes[pos as usize..end as usize].to_vec();
    let at = spans[2].1 as usize;
    bytes[at..at + copy.len()].copy_from_slice(&copy);
    disk.set_bytes(&path(), bytes).unwrap();
    let (scan, seen) = scan_of(&disk, expect(0, false));
    assert_eq!(seen, prefix(3));
    assert!(matches!(
        scan.torn,
        Some(TornTail {
            fault: EntryFault::HeaderChecksum,
            ..
        })
    ));
    let mut other = Vec::new();
    encode_entry(ID + 1, pos, &payload(0), &mut other);
    assert_ne!(other, copy);
}

#[test]
fn a_torn_last_write_is_cut_and_cannot_resurface() {
    // Checks a torn group commit: every prefix of the last (unsynced) write is recovered as the
    // synced entries plus those of the torn write that fully landed; resume zeroes the rest, and
    // later appends and scans see exactly that plus the new entries.
    let (disk, spans) = written(4);
    let synced = disk.bytes(&path()).unwrap();
    let file = disk.open(&path(), false).unwrap();
    let (scan, _) = scan_of(&disk, expect(0, false));
    let mut writer = SegmentWriter::resume(&path(), file.clone(), &scan, scan.data_end).unwrap();
    let batch = [payload(4), payload(5), payload(6)];
    let positions = writer.append(&batch).unwrap();
    let full = disk.bytes(&path()).unwrap();
    let start = spans[3].1 as usize;
    let write_end = writer.end() as usize;
    for kept in 0..=(write_end - start) {
        let mut torn = synced.clone();
        torn[start..start + kept].copy_from_slice(&full[start..start + kept]);
        disk.set_bytes(&path(), torn).unwrap();
        let (scan, seen) = scan_of(&disk, expect(spans[3].1, false));
        assert_eq!(scan.corruption, None, "kept {kept}");
        let landed = positions
            .iter()
            .zip(&batch)
            .filter(|(p, b)| **p + entry_len(b.len()) <= (start + kept) as u64)
            .count();
        assert_eq!(seen, prefix(4 + landed), "kept {kept}");
        let file = disk.open(&path(), false).unwrap();
        let mut w = SegmentWriter::resume(&path(), file, &scan, scan.data_end).unwrap();
        w.append(&[b"after".to_vec()]).unwrap();
        w.sync().unwrap();
        let (scan, seen) = scan_of(&disk, expect(w.durable_end(), false));
        assert_eq!((scan.corruption, scan.torn), (None, None), "kept {kept}");
        let mut want = prefix(4 + landed);
        want.push(b"after".to_vec());
        assert_eq!(seen, want, "kept {kept}");
    }
}

#[test]
fn resume_can_keep_less_than_the_scan_found() {
    // Checks that resuming at an earlier entry boundary (nothing past a durable mark) zeroes the
    // entries not kept, so a later scan never sees them again.
    let (disk, spans) = written(5);
    let (scan, _) = scan_of(&disk, expect(0, false));
    let file = disk.open(&path(), false).unwrap();
    let mut w = SegmentWriter::resume(&path(), file, &scan, spans[1].1).unwrap();
    w.append(&[b"new".to_vec()]).unwrap();
    w.sync().unwrap();
    let (scan, seen) = scan_of(&disk, expect(0, false));
    assert_eq!((scan.corruption, scan.torn), (None, None));
    let mut want = prefix(2);
    want.push(b"new".to_vec());
    assert_eq!(seen, want);
}

#[test]
fn resume_refuses_a_corrupt_segment() {
    // Checks that a corrupt scan cannot be resumed (nothing is repaired by zeroing).
    let (disk, spans) = written(3);
    let mut bytes = disk.bytes(&path()).unwrap();
    bytes[spans[0].0 as usize + 9] ^= 4;
    disk.set_bytes(&path(), bytes.clone()).unwrap();
    let (scan, _) = scan_of(&disk, expect(0, false));
    let file = disk.open(&path(), false).unwrap();
    let err = SegmentWriter::resume(&path(), file, &scan, SEGMENT_HEADER_LEN).unwrap_err();
    assert!(matches!(err, SegmentError::Corrupt(_)), "{err}");
    assert_eq!(
        disk.bytes(&path()).unwrap(),
        bytes,
        "a refused resume changed the file"
    );
}

#[test]
fn a_refused_payload_is_corruption_at_its_entry() {
    // Checks that an entry that checks but whose payload the caller cannot decode is reported as
    // corruption at that entry, with the entries before it handed over.
    let (disk, spans) = written(4);
    let file = disk.open(&path(), false).unwrap();
    let mut seen = 0;
    let scan = super::scan(&*file, &path(), KIND, &expect(0, false), |pos, _| {
        if pos == spans[2].0 {
            return Err("bad event".into());
        }
        seen += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, 2);
    assert_eq!(
        scan.corruption.map(|c| (c.pos, c.kind)),
        Some((spans[2].0, CorruptionKind::Payload("bad event".into())))
    );
}

#[test]
fn read_entry_refuses_damage_below_the_end() {
    // Checks that reading a damaged entry below the known data end is a corruption error naming
    // the entry's byte, never a short read.
    let (disk, spans) = written(3);
    let mut bytes = disk.bytes(&path()).unwrap();
    bytes[spans[1].0 as usize + 10] ^= 1;
    disk.set_bytes(&path(), bytes).unwrap();
    let file = disk.open(&path(), false).unwrap();
    let err = read_entry(&*file, &path(), ID, spans[1].0, spans[2].1, 1 << 10).unwrap_err();
    match err {
        SegmentError::Corrupt(c) => assert_eq!(c.pos, spans[1].0),
        other => panic!("{other}"),
    }
}

#[test]
fn preallocation_checks_free_space_and_leaves_nothing_behind() {
    // Checks that a segment larger than the free space is refused before allocating, that an
    // allocation failing part way removes the file, and that both are typed NoSpace errors.
    let disk = new_disk();
    let header = SegmentHeader {
        kind: KIND,
        id: ID,
        preallocated: PREALLOC,
    };
    disk.set_available_bytes(Some(PREALLOC - 1));
    let err = SegmentWriter::create(&disk, &path(), header).unwrap_err();
    assert!(
        matches!(&err, SegmentError::NoSpace { needed, available: Some(a), .. } if *needed == PREALLOC && *a == PREALLOC - 1),
        "{err}"
    );
    assert!(err.is_no_space());
    assert_eq!(disk.n_files(), 0, "file left behind");

    disk.set_available_bytes(None);
    disk.set_full(true);
    disk.set_partial_allocate(true);
    let err = SegmentWriter::create(&disk, &path(), header).unwrap_err();
    assert!(
        matches!(
            &err,
            SegmentError::NoSpace {
                available: None,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(disk.n_files(), 0, "partial file left");

    disk.set_full(false);
    disk.set_available_bytes(Some(PREALLOC));
    let w = SegmentWriter::create(&disk, &path(), header).unwrap();
    assert_eq!(disk.bytes(&path()).unwrap().len() as u64, PREALLOC);
    assert_eq!(w.room(), PREALLOC - SEGMENT_HEADER_LEN);
}

#[test]
fn a_full_segment_refuses_and_a_failed_sync_breaks_the_writer() {
    // Checks that an append beyond the preallocation is refused with Full (nothing written), and
    // that after a failed write or sync the writer refuses everything with Broken.
    let (disk, spans) = written(2);
    let (scan, _) = scan_of(&disk, expect(0, false));
    let file = disk.open(&path(), false).unwrap();
    let mut w = SegmentWriter::resume(&path(), file, &scan, scan.data_end).unwrap();
    let big = vec![1u8; (w.room() - ENTRY_HEADER_LEN + 1) as usize];
    assert!(!w.fits(big.len()));
    assert!(matches!(w.append(&[big]), Err(SegmentError::Full { .. })));
    assert_eq!(w.end(), spans[1].1);
    let exact = vec![1u8; (w.room() - ENTRY_HEADER_LEN) as usize];
    assert!(w.fits(exact.len()));

    disk.fail_syncs(0, u32::MAX);
    w.append(&[b"x".to_vec()]).unwrap();
    assert!(matches!(w.sync(), Err(SegmentError::Disk(_))));
    assert!(disk.disarm_sync_failures());
    assert!(matches!(
        w.append(&[b"y".to_vec()]),
        Err(SegmentError::Broken { .. })
    ));
    assert!(matches!(w.sync(), Err(SegmentError::Broken { .. })));

    let (scan, _) = scan_of(&disk, expect(0, false));
    let file = disk.open(&path(), false).unwrap();
    let mut w = SegmentWriter::resume(&path(), file, &scan, scan.data_end).unwrap();
    disk.set_immutable(&path(), true);
    assert!(matches!(
        w.append(&[b"z".to_vec()]),
        Err(SegmentError::Disk(_))
    ));
    disk.set_immutable(&path(), false);
    assert!(matches!(
        w.append(&[b"z".to_vec()]),
        Err(SegmentError::Broken { .. })
    ));
}

/// Seeded bytes (xorshift), never all zero: stands in for whatever a torn write left.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_tail_of_random_bytes_is_a_torn_tail_not_corruption() {
    // Checks that the search for a valid entry after a failure is linear in the file: a torn
    // write that left random bytes over the whole rest of a large preallocation is a torn tail
    // (nothing valid follows), not `Unproven` corruption from a search that ran out. With a
    // length-only header, about one random position in 2^(32-20) looks like an entry of up to
    // 1 MiB and each costs its length to checksum, which exhausts any linear bound here.
    let disk = new_disk();
    let prealloc = 1 << 20;
    let header = SegmentHeader {
        kind: KIND,
        id: ID,
        preallocated: prealloc,
    };
    let mut writer = SegmentWriter::create(&disk, &path(), header).unwrap();
    writer.append(&[payload(0), payload(1)]).unwrap();
    writer.sync().unwrap();
    let data_end = writer.end();
    let mut bytes = disk.bytes(&path()).unwrap();
    let garbage = noise(7, (prealloc - data_end) as usize);
    bytes[data_end as usize..].copy_from_slice(&garbage);
    disk.set_bytes(&path(), bytes).unwrap();
    let file = disk.open(&path(), false).unwrap();
    let mut seen = Vec::new();
    let expect = ScanExpect {
        id: Some(ID),
        durable_end: data_end,
        sealed: false,
        entry_bytes_max: 1 << 20,
    };
    let scan = scan(&*file, &path(), KIND, &expect, |_, p| {
        seen.push(p.to_vec());
        Ok(())
    })
    .unwrap();
    assert_eq!(scan.corruption, None);
    assert_eq!(seen, prefix(2));
    let torn = scan.torn.unwrap();
    assert_eq!((torn.pos, torn.end), (data_end, prealloc));
}

#[test]
fn only_a_file_in_which_no_entry_checks_holds_no_entries() {
    // Checks `holds_no_entries`, which decides whether the remains of an interrupted segment
    // creation may be removed: true for an empty file, a short one, a zeroed header, a header
    // but no entries, and noise; false as soon as one entry of this segment checks anywhere,
    // even with the header zeroed, and false for an entry of another segment id only when the
    // id asked is that one.
    let disk = new_disk();
    let file = disk.open(&path(), true).unwrap();
    let none = |disk: &CrashDisk| {
        let file = disk.open(&path(), false).unwrap();
        holds_no_entries(&*file, ID, 1 << 10).unwrap()
    };
    assert!(none(&disk));
    file.write_at(0, &[0u8; 40]).unwrap();
    assert!(none(&disk));
    disk.set_bytes(&path(), vec![0u8; PREALLOC as usize])
        .unwrap();
    assert!(none(&disk));
    drop(file);
    let (disk, spans) = written(0);
    assert!(spans.is_empty() && none(&disk));
    let mut bytes = disk.bytes(&path()).unwrap();
    bytes[SEGMENT_HEADER_LEN as usize..].copy_from_slice(&noise(3, (PREALLOC - 64) as usize));
    disk.set_bytes(&path(), bytes).unwrap();
    assert!(none(&disk));
    let (disk, spans) = written(3);
    let mut bytes = disk.bytes(&path()).unwrap();
    bytes[..SEGMENT_HEADER_LEN as usize].fill(0);
    bytes[spans[0].0 as usize..spans[1].0 as usize].fill(0);
    disk.set_bytes(&path(), bytes).unwrap();
    assert!(!none(&disk));
    let file = disk.open(&path(), false).unwrap();
    assert!(holds_no_entries(&*file, ID + 1, 1 << 10).unwrap());
}

#[test]
fn slot_file_keeps_the_previous_record_through_a_torn_write_and_reports_two_bad_slots() {
    // Checks the two-slot record file: the newest slot wins on open, a power cut inside a write
    // leaves the previous record or the new one (never neither), a missing file is `None`, and
    // damage to both slots is corruption.
    const SLOTS: SlotKind = SlotKind {
        magic: *b"TESTSLOT",
        version: 1,
        slot_len: 64,
    };
    let disk = new_disk();
    let path = PathBuf::from("/seg/record");
    assert!(SlotFile::open(&disk, &path, SLOTS).unwrap().is_none());
    let mut slots = SlotFile::create(&disk, &path, SLOTS, b"first").unwrap();
    slots.write(b"second").unwrap();
    let (_, body) = SlotFile::open(&disk, &path, SLOTS).unwrap().unwrap();
    assert_eq!(&body[..6], b"second");
    assert!(body[6..].iter().all(|b| *b == 0));
    for seed in 0..32u64 {
        disk.arm_power_cut(1, crate::env::rng_for(seed, 0, 0));
        let mounted = disk.mount();
        let (mut slots, _) = SlotFile::open(&mounted, &path, SLOTS).unwrap().unwrap();
        assert!(slots.write(b"third").is_err(), "seed {seed}");
        let mounted = disk.mount();
        let (_, body) = SlotFile::open(&mounted, &path, SLOTS).unwrap().unwrap();
        assert!(
            &body[..6] == b"second" || &body[..5] == b"third",
            "seed {seed}"
        );
        // Put the record back to "second" in both slots' newest position for the next seed.
        let (mut slots, _) = SlotFile::open(&mounted, &path, SLOTS).unwrap().unwrap();
        slots.write(b"second").unwrap();
    }
    disk.flip_bit(&path, 30, 0).unwrap();
    disk.flip_bit(&path, SLOT_STRIDE + 30, 0).unwrap();
    let error = SlotFile::open(&disk.mount(), &path, SLOTS).unwrap_err();
    assert!(matches!(error, SegmentError::Corrupt(_)), "{error}");
}

fn salvage_expect(durable_end: u64, sealed: bool) -> SalvageExpect {
    SalvageExpect {
        id: ID,
        durable_end,
        sealed,
        entry_bytes_max: 1 << 10,
        read_end: u64::MAX,
        past_preallocation: false,
    }
}

/// Salvages and returns the result plus `(pos, payload)` of each entry handed over.
fn salvage_of(disk: &CrashDisk, expect: SalvageExpect) -> (Salvage, Vec<(u64, Vec<u8>)>) {
    let file = disk.open(&path(), false).unwrap();
    let mut seen = Vec::new();
    let found = salvage(&*file, &path(), KIND, &expect, |pos, p| {
        seen.push((pos, p.to_vec()));
        Ok(())
    })
    .unwrap();
    (found, seen)
}

#[test]
fn salvage_classifies_as_scan_does_and_keeps_every_entry_that_checks() {
    // Checks the keep-going scan against the stopping one on a flip of every bit position's byte
    // of a segment (header, entry headers, payloads, the preallocated tail), under each thing
    // the caller may know: the first damage salvage reports is the corruption scan reports (same
    // byte), a torn tail is the same torn tail, and every entry the flip did not touch is handed
    // over, before and after the damage.
    let (clean, spans) = written(6);
    let data_end = spans[5].1;
    let bytes = clean.bytes(&path()).unwrap();
    for byte in 0..bytes.len() as u64 {
        for (durable_end, sealed) in [(0, false), (data_end, false), (data_end, true)] {
            let (disk, _) = written(6);
            disk.flip_bit(&path(), byte, (byte % 8) as u8).unwrap();
            let what = format!("byte {byte}, durable {durable_end}, sealed {sealed}");
            let (scanned, _) = scan_of(&disk, expect(durable_end, sealed));
            let (found, seen) = salvage_of(&disk, salvage_expect(durable_end, sealed));
            match &scanned.corruption {
                Some(c) => {
                    let first = found.damage.first().map(|d| d.corruption.pos);
                    assert_eq!(first, Some(c.pos), "{what}: {c}");
                    assert_eq!(found.torn, None, "{what}");
                }
                None => {
                    assert!(found.damage.is_empty(), "{what}: {:?}", found.damage);
                    assert_eq!(found.torn, scanned.torn, "{what}");
                }
            }
            let untouched: Vec<(u64, Vec<u8>)> = spans
                .iter()
                .enumerate()
                .filter(|(_, (p, e))| !(*p..*e).contains(&byte))
                .map(|(i, (p, _))| (*p, payload(i)))
                .collect();
            assert_eq!(seen, untouched, "{what}");
            // Every damaged region starts at or before the flipped byte's entry and ends where
            // the next kept entry starts.
            for d in &found.damage {
                assert!(
                    d.corruption.pos <= byte.max(SEGMENT_HEADER_LEN),
                    "{what}: {d:?}"
                );
                assert!(d.end > d.corruption.pos, "{what}: {d:?}");
            }
        }
    }
}

#[test]
fn salvage_reports_zeroed_headers_truncation_and_refused_payloads_and_reads_on() {
    // Checks the keep-going scan on damage scan stops at: a zeroed header (entries still read,
    // they check against the id from the name), a file cut short in the middle of an entry (the
    // entries before kept, the cut entry a torn tail or damage, the missing preallocation
    // damage), a refused payload (damage at that entry only), and a read end (nothing past it
    // read).
    let (disk, spans) = written(6);
    disk.zero_range(&path(), 0, SEGMENT_HEADER_LEN).unwrap();
    let (found, seen) = salvage_of(&disk, salvage_expect(0, false));
    assert_eq!(seen.len(), 6);
    assert_eq!(found.header, None);
    assert_eq!(
        found
            .damage
            .iter()
            .map(|d| (d.corruption.pos, d.end))
            .collect::<Vec<_>>(),
        vec![(0, SEGMENT_HEADER_LEN)]
    );

    let (disk, spans2) = written(6);
    assert_eq!(spans, spans2);
    let cut = spans[3].0 + 5;
    disk.truncate_file(&path(), cut).unwrap();
    let (found, seen) = salvage_of(&disk, salvage_expect(0, true));
    assert_eq!(seen.len(), 3);
    let regions: Vec<(u64, u64)> = found
        .damage
        .iter()
        .map(|d| (d.corruption.pos, d.end))
        .collect();
    assert_eq!(regions.len(), 2, "{regions:?}");
    assert_eq!(regions[0].0, spans[3].0);
    assert!(regions[0].1 <= cut);
    assert_eq!(regions[1], (cut, PREALLOC));

    let (disk, _) = written(6);
    let file = disk.open(&path(), false).unwrap();
    let mut n = 0;
    let found = salvage(
        &*file,
        &path(),
        KIND,
        &salvage_expect(0, false),
        |pos, _| {
            n += 1;
            if pos == spans[2].0 {
                Err("no".into())
            } else {
                Ok(())
            }
        },
    )
    .unwrap();
    assert_eq!((n, found.n_entries, found.data_end), (6, 5, spans[5].1));
    assert_eq!(found.damage.len(), 1);
    assert_eq!(found.damage[0].corruption.pos, spans[2].0);
    assert_eq!(found.damage[0].end, spans[2].1);

    let (found, seen) = salvage_of(
        &disk,
        SalvageExpect {
            read_end: spans[4].0,
            ..salvage_expect(0, false)
        },
    );
    assert_eq!((seen.len(), found.data_end), (4, spans[4].0));
    assert!(found.damage.is_empty(), "{:?}", found.damage);
}

// Checks the sparse index: a point per interval of bytes (the first entry always), seeking the
// last point at or below a key, nothing below the first point, and a truncation forgetting the
// points from its key on.
#[test]
fn sparse_index_takes_a_point_per_interval_and_seeks_at_or_below() {
    let mut index = SparseIndex::new(100);
    // Entries of 40 bytes from position 64: keys 10, 11, ...
    for i in 0..10u64 {
        index.note(10 + i, 64 + 40 * i);
    }
    // Points at 64 (key 10), 184 (key 13: 120 past 64), 304 (key 16), 424 (key 19).
    assert_eq!(index.points(), 4);
    assert_eq!(index.seek(9), None);
    assert_eq!(index.seek(10), Some((10, 64)));
    assert_eq!(index.seek(12), Some((10, 64)));
    assert_eq!(index.seek(13), Some((13, 184)));
    assert_eq!(index.seek(1000), Some((19, 424)));
    index.truncate_from(16);
    assert_eq!(index.points(), 2);
    assert_eq!(index.seek(18), Some((13, 184)));
    index.note(16, 304);
    assert_eq!(index.seek(18), Some((16, 304)));

    let mut every = SparseIndex::new(0);
    for i in 0..5u64 {
        every.note(i, 64 + i);
    }
    assert_eq!(every.points(), 5);
}
