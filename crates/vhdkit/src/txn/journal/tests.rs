use std::fs;
use std::io;
use std::sync::Arc;

use super::codec::{decode, encode};
use super::*;
use crate::error::Result;
use crate::txn::fault::{recover_crash_image, FaultBarrier, FaultPlan, FaultyFile, MemJournal};
use crate::txn::{Plan, WriteOp};

fn sample() -> (Vec<u8>, Plan) {
    let old: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let plan = Plan {
        changes: vec![],
        writes: vec![
            WriteOp {
                offset: 4096,
                data: vec![0xAA; 512],
                old: vec![0; 512],
                what: "relocated locator".into(),
            },
            WriteOp {
                offset: 512,
                data: vec![0xBB; 1024],
                old: old[512..1536].to_vec(),
                what: "header".into(),
            },
            WriteOp {
                offset: 0,
                data: vec![0xCC; 512],
                old: old[..512].to_vec(),
                what: "footer copy".into(),
            },
        ],
        old_len: 4096,
        new_len: 8192,
    };
    (old, plan)
}

fn expected_new(old: &[u8], plan: &Plan) -> Vec<u8> {
    let mut v = old.to_vec();
    if plan.is_empty() {
        return v;
    }
    v.resize(plan.new_len as usize, 0);
    for w in &plan.writes {
        v[w.offset as usize..w.offset as usize + w.data.len()].copy_from_slice(&w.data);
    }
    v
}

/// Found by the journal_recover fuzz target: a journal claiming a 1 TiB old length and a
/// record past the current end made recovery write at a terabyte offset.
// testdata/ is outside the published package (see build.rs).
#[cfg(vhdkit_workspace)]
#[test]
fn fuzz_regression_huge_old_len() {
    let input = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/fuzz-regressions/journal_recover-huge-old-len"
    ));
    // The target's first byte says "fix the CRC up"; do what it did.
    let mut j = input[1..].to_vec();
    let crc = crc32c::crc32c(&j);
    j.extend_from_slice(&crc.to_le_bytes());
    assert!(decode(&j).is_err());
    let plan = crate::txn::fault::FaultPlan::new(None);
    let file = crate::txn::fault::FaultyFile::new(vec![7u8; 65536], plan.clone());
    let store = crate::txn::fault::MemJournal::with(j, plan);
    assert!(matches!(
        recover(&file, &store).unwrap(),
        Recovery::Foreign { .. }
    ));
    assert_eq!(file.contents_all_written(), vec![7u8; 65536]);
}

#[test]
fn journals_that_grow_files_arbitrarily_are_foreign() {
    let (_, mut plan) = sample();
    plan.new_len = plan.old_len + (1 << 40);
    assert!(decode(&encode(&plan))
        .unwrap_err()
        .contains("grows the file"));
    let (_, mut plan) = sample();
    plan.old_len = 1 << 40;
    assert!(decode(&encode(&plan))
        .unwrap_err()
        .contains("grows the file"));
    let (_, mut plan) = sample();
    plan.writes[0].offset = 1 << 40;
    assert!(decode(&encode(&plan))
        .unwrap_err()
        .contains("past the file's end"));
}

/// A journal is only recovered onto a file whose length is its old or its new length: a
/// file of any other length (here the old bytes plus zeros, so every record still reads
/// as old) is not the file the journal was written for, and is left alone.
#[test]
fn file_length_matching_neither_old_nor_new_is_foreign() {
    let (old, plan) = sample();
    for len in [4096 + 512, 8192 + 512, 8192 - 512] {
        let mut other = old.clone();
        other.resize(len, 0);
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(other.clone(), fp.clone());
        let j = MemJournal::with(encode(&plan), fp);
        match inspect(&f, &j).unwrap() {
            JournalState::Foreign { reason } => {
                assert!(reason.contains("file length"), "{len}: {reason}")
            }
            s => panic!("{len}: {s:?}"),
        }
        assert!(matches!(recover(&f, &j).unwrap(), Recovery::Foreign { .. }));
        assert_eq!(f.contents_all_written(), other, "{len}");
        assert!(j.load().unwrap().is_some(), "{len}: journal kept");
    }
    // At the old and the new length the same journal is recognised.
    for (bytes, complete) in [(old.clone(), false), (expected_new(&old, &plan), true)] {
        let fp = FaultPlan::new(None);
        let f = FaultyFile::new(bytes, fp.clone());
        let j = MemJournal::with(encode(&plan), fp);
        let st = inspect(&f, &j).unwrap();
        assert_eq!(matches!(st, JournalState::Complete(_)), complete, "{st:?}");
        assert_eq!(matches!(st, JournalState::Pending(_)), !complete, "{st:?}");
    }
}

/// apply refuses a file whose length is not the plan's old length, before writing anything.
#[test]
fn apply_refuses_a_file_whose_length_changed() {
    let (old, plan) = sample();
    let mut longer = old.clone();
    longer.resize(old.len() + 512, 0);
    let fp = FaultPlan::new(None);
    let f = FaultyFile::new(longer.clone(), fp.clone());
    let j = MemJournal::new(fp.clone());
    let e = apply(&f, &j, &plan).unwrap_err();
    assert!(e.to_string().contains("length"), "{e}");
    assert_eq!(f.contents_all_written(), longer);
    assert_eq!(j.load().unwrap(), None);
    assert_eq!(fp.count(), 0, "nothing written");
}

#[test]
fn encode_decode_round_trip() {
    let (_, plan) = sample();
    assert_eq!(decode(&encode(&plan)).unwrap(), plan);
    let mut bad = encode(&plan);
    bad[20] ^= 1;
    assert!(decode(&bad).is_err());
    assert!(decode(&[]).is_err());
    assert!(decode(&[1, 2, 3]).is_err());
}

#[test]
fn apply_without_faults() {
    let (old, plan) = sample();
    let fp = FaultPlan::new(None);
    let f = FaultyFile::new(old.clone(), fp.clone());
    let j = MemJournal::new(fp);
    apply(&f, &j, &plan).unwrap();
    assert_eq!(f.contents_synced(), expected_new(&old, &plan));
    assert_eq!(j.load().unwrap(), None);
}

/// Fail at every mutating operation in turn; after each, recovery on either crash image
/// gives exactly the old or exactly the new file.
#[test]
fn failure_at_every_operation_recovers_to_old_or_new() {
    let (old, plan) = sample();
    let new = expected_new(&old, &plan);
    let total = {
        let fp = FaultPlan::new(None);
        apply(
            &FaultyFile::new(old.clone(), fp.clone()),
            &MemJournal::new(fp.clone()),
            &plan,
        )
        .unwrap();
        fp.count()
    };
    assert!(total >= 5);
    for k in 1..=total {
        let fp = FaultPlan::new(Some(k));
        let f = FaultyFile::new(old.clone(), fp.clone());
        let j = MemJournal::new(fp.clone());
        assert!(apply(&f, &j, &plan).is_err(), "k={k} should fail");
        for image in [f.contents_all_written(), f.contents_synced()] {
            let (r, got, left) = recover_crash_image(image, j.load().unwrap());
            assert!(
                got == old || got == new,
                "k={k}: neither old nor new ({r:?})"
            );
            assert!(!matches!(r, Recovery::Foreign { .. }), "k={k}: {r:?}");
            assert_eq!(left, None, "k={k}");
        }
    }
}

/// Five files: (old contents, plan), each different (one grows, one is a no-op).
fn batch_sample(count: u8) -> Vec<(Vec<u8>, Plan)> {
    (0..count)
        .map(|n| {
            let (mut old, mut plan) = sample();
            for b in old.iter_mut() {
                *b = b.wrapping_add(n);
            }
            if n % 5 == 3 {
                return (old, Plan::default());
            }
            if n % 2 == 1 {
                plan.writes.remove(0);
                plan.new_len = plan.old_len;
            }
            for w in plan.writes.iter_mut() {
                let (s, e) = (w.offset as usize, w.offset as usize + w.data.len());
                w.old = old.get(s..e).map(<[u8]>::to_vec).unwrap_or(vec![0; e - s]);
                for b in w.data.iter_mut() {
                    *b = b.wrapping_add(n);
                }
            }
            (old, plan)
        })
        .collect()
}

fn run_batch(
    sample: &[(Vec<u8>, Plan)],
    fail_at: Option<usize>,
) -> (
    Arc<FaultPlan>,
    Vec<FaultyFile>,
    Vec<MemJournal>,
    Vec<Result<()>>,
) {
    let fp = FaultPlan::new(fail_at);
    let files: Vec<FaultyFile> = sample
        .iter()
        .map(|(o, _)| FaultyFile::new(o.clone(), fp.clone()))
        .collect();
    let journals: Vec<MemJournal> = sample.iter().map(|_| MemJournal::new(fp.clone())).collect();
    let barrier = FaultBarrier::new(fp.clone(), files.clone(), journals.clone());
    let items: Vec<BatchItem<'_>> = sample
        .iter()
        .zip(files.iter().zip(&journals))
        .map(|((_, plan), (f, j))| BatchItem {
            target: f,
            store: j,
            plan,
        })
        .collect();
    let r = apply_batch(&items, &barrier);
    (fp, files, journals, r)
}

#[test]
fn batch_without_faults_uses_four_barriers() {
    let sample = batch_sample(5);
    let (fp, files, journals, r) = run_batch(&sample, None);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    for ((old, plan), (f, j)) in sample.iter().zip(files.iter().zip(&journals)) {
        assert_eq!(f.contents_synced(), expected_new(old, plan));
        assert_eq!(j.load().unwrap(), None);
        assert_eq!(j.load_synced().unwrap(), None);
        assert!(!j.published_unsynced());
    }
    // 4 changing files of 5: stage + publish + discard each, their writes, and 4 barriers; no
    // per-file sync.
    let writes: usize = sample
        .iter()
        .map(|(_, p)| p.writes.len() + usize::from(p.new_len != p.old_len))
        .sum();
    assert_eq!(fp.count(), 4 * 3 + writes + 4);
}

/// Fail at every operation of a batch of five (and of twenty: journals then removed on
/// several threads); after each, every file recovers (from any combination of its durable
/// and its fully written image, and of its journal's) to exactly its old or its new bytes,
/// and never through a foreign journal.
#[test]
fn batch_failure_at_every_operation_recovers_each_file_to_old_or_new() {
    for count in [5, 20] {
        batch_failure_at_every_operation(count);
    }
}

fn batch_failure_at_every_operation(count: u8) {
    let sample = batch_sample(count);
    let total = run_batch(&sample, None).0.count();
    for k in 1..=total {
        let (_, files, journals, r) = run_batch(&sample, Some(k));
        assert!(r.iter().any(|r| r.is_err()), "k={k} should fail");
        for (n, ((old, plan), (f, j))) in sample.iter().zip(files.iter().zip(&journals)).enumerate()
        {
            assert!(
                !j.published_unsynced(),
                "k={k}: torn journal could be published"
            );
            let new = expected_new(old, plan);
            for image in [f.contents_all_written(), f.contents_synced()] {
                for jb in [j.load().unwrap(), j.load_synced().unwrap()] {
                    let (r, got, left) = recover_crash_image(image.clone(), jb);
                    assert!(!matches!(r, Recovery::Foreign { .. }), "k={k} #{n}: {r:?}");
                    assert!(
                        got == *old || got == new,
                        "k={k} #{n}: neither old nor new ({r:?})"
                    );
                    assert_eq!(left, None, "k={k} #{n}");
                }
            }
        }
    }
}

/// When the first barrier fails, no file was written and no journal was published: the
/// staged journals are removed too, so nothing of the batch is left beside the files.
#[test]
fn a_failed_first_barrier_leaves_no_staged_journal() {
    let sample = batch_sample(5);
    let stages = sample.iter().filter(|(_, p)| !p.is_empty()).count();
    let (_, files, journals, r) = run_batch(&sample, Some(stages + 1));
    for (n, ((old, plan), (f, j))) in sample.iter().zip(files.iter().zip(&journals)).enumerate() {
        if plan.is_empty() {
            continue;
        }
        let e = r[n].as_ref().unwrap_err().to_string();
        assert!(e.contains("making the journals durable"), "#{n}: {e}");
        assert!(!j.staged(), "#{n}: a staged journal is left");
        assert_eq!(j.load().unwrap(), None, "#{n}");
        assert_eq!(f.contents_all_written(), *old, "#{n}");
    }
}

/// A batch in which every file fails its check writes nothing and raises no barrier.
#[test]
fn a_batch_with_nothing_left_raises_no_barrier() {
    let mut sample = batch_sample(5);
    sample.retain(|(_, p)| !p.is_empty());
    for (old, _) in sample.iter_mut() {
        old[0] ^= 1; // no file holds its plan's old bytes any more
    }
    let (fp, files, _, r) = run_batch(&sample, None);
    assert!(r.iter().all(|r| r.is_err()), "{r:?}");
    assert_eq!(fp.count(), 0, "nothing staged, no barrier");
    for ((old, _), f) in sample.iter().zip(&files) {
        assert_eq!(f.contents_all_written(), *old);
    }
}

#[test]
fn batch_skips_a_changed_file_and_applies_the_others() {
    let mut sample = batch_sample(5);
    sample[0].0[0] ^= 1; // file 0 no longer holds its plan's old bytes
    let (_, files, journals, r) = run_batch(&sample, None);
    assert!(r[0].is_err());
    assert_eq!(files[0].contents_all_written(), sample[0].0);
    assert_eq!(journals[0].load().unwrap(), None);
    for (i, (old, plan)) in sample.iter().enumerate().skip(1) {
        assert!(r[i].is_ok(), "{i}: {:?}", r[i]);
        assert_eq!(files[i].contents_synced(), expected_new(old, plan));
    }
}

#[test]
fn foreign_journal_is_never_applied() {
    let (old, plan) = sample();
    let fp = FaultPlan::new(None);
    let mut other = old.clone();
    other[600] ^= 0xFF; // the header range now matches neither old nor new
    let f = FaultyFile::new(other.clone(), fp.clone());
    let j = MemJournal::with(encode(&plan), fp);
    let r = recover(&f, &j).unwrap();
    assert!(matches!(r, Recovery::Foreign { .. }), "{r:?}");
    assert_eq!(f.contents_all_written(), other);
    assert!(
        j.load().unwrap().is_some(),
        "foreign journal must be left in place"
    );
}

#[test]
fn refuses_when_file_changed_since_plan() {
    let (mut old, plan) = sample();
    old[0] ^= 1;
    let fp = FaultPlan::new(None);
    let f = FaultyFile::new(old.clone(), fp.clone());
    let j = MemJournal::new(fp.clone());
    assert!(apply(&f, &j, &plan).is_err());
    assert_eq!(fp.count(), 0, "nothing may be written");
}

#[test]
fn file_journal_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let j = FileJournal::for_disk(&d.path().join("child.vhd"));
    assert_eq!(j.path().file_name().unwrap(), "child.vhd.vhdkit-journal");
    assert_eq!(j.load().unwrap(), None);
    j.store(b"abc").unwrap();
    assert_eq!(j.load().unwrap().unwrap(), b"abc");
    j.remove().unwrap();
    assert_eq!(j.load().unwrap(), None);
    j.remove().unwrap();
}

/// A journal file larger than any vhdkit journal is refused before it is read (memory
/// bound); one of exactly the bound is read.
#[test]
fn file_journal_over_the_size_bound_is_not_read() {
    let d = tempfile::tempdir().unwrap();
    let j = FileJournal::for_disk(&d.path().join("child.vhd"));
    let f = fs::File::create(j.path()).unwrap();
    f.set_len(MAX_JOURNAL_FILE + 1).unwrap(); // sparse
    let e = j.load().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    f.set_len(MAX_JOURNAL_FILE).unwrap();
    assert_eq!(j.load().unwrap().unwrap().len() as u64, MAX_JOURNAL_FILE);
}

/// The batch steps on a real folder: a staged journal is invisible to recovery until
/// published, unstaging or discarding removes exactly its own name, and each name's absence is
/// not an error (a retried step, a crash in between).
#[test]
fn file_journal_batch_steps() {
    let d = tempfile::tempdir().unwrap();
    let j = FileJournal::for_disk(&d.path().join("child.vhd"));
    assert_eq!(j.describe(), j.path().display().to_string());
    assert_ne!(j.tmp_path(), j.path());
    assert_eq!(j.tmp_path().parent(), Some(d.path()));
    j.discard().unwrap();
    j.unstage().unwrap();

    j.stage(b"staged").unwrap();
    assert_eq!(fs::read(j.tmp_path()).unwrap(), b"staged");
    assert_eq!(j.load().unwrap(), None, "a staged journal is not read");
    j.unstage().unwrap();
    assert!(!j.tmp_path().exists());
    assert_eq!(j.load().unwrap(), None);

    j.stage(b"published").unwrap();
    j.publish().unwrap();
    assert!(!j.tmp_path().exists());
    assert_eq!(j.load().unwrap().unwrap(), b"published");
    j.unstage().unwrap();
    assert_eq!(j.load().unwrap().unwrap(), b"published", "unstage leaves the journal");
    j.discard().unwrap();
    assert_eq!(j.load().unwrap(), None);
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "nothing left behind");
}

/// Only a missing name is tolerated by a removal: anything else planted there (here a folder,
/// which `unlink` refuses) is reported and left, never taken for a removed journal.
#[test]
fn file_journal_removal_reports_what_it_cannot_remove() {
    let d = tempfile::tempdir().unwrap();
    let j = FileJournal::for_disk(&d.path().join("child.vhd"));
    fs::create_dir(j.path()).unwrap();
    fs::create_dir(j.tmp_path()).unwrap();
    for (step, r) in [
        ("remove", j.remove()),
        ("discard", j.discard()),
        ("unstage", j.unstage()),
    ] {
        let e = r.expect_err(step);
        assert_ne!(e.kind(), io::ErrorKind::NotFound, "{step}: {e}");
    }
    assert!(j.path().is_dir() && j.tmp_path().is_dir());
}

/// A removal is durable only once the journal's folder is synced, so a folder that cannot be
/// opened for that sync (here: gone) fails the removal instead of reporting it done.
#[test]
fn file_journal_remove_syncs_the_folder() {
    let d = tempfile::tempdir().unwrap();
    let j = FileJournal::for_disk(&d.path().join("gone").join("child.vhd"));
    let e = j.remove().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    // The journal itself being absent is not the failure: with the folder there it succeeds.
    fs::create_dir(d.path().join("gone")).unwrap();
    j.remove().unwrap();
}

/// A store that implements only the durable operations gets batch steps that are correct, only
/// slower: staging stores the journal at once (publishing has nothing left to do), and
/// discarding removes it.
#[test]
fn default_batch_steps_store_and_remove() {
    struct Durable(std::cell::RefCell<Option<Vec<u8>>>);
    impl JournalStore for Durable {
        fn load(&self) -> io::Result<Option<Vec<u8>>> {
            Ok(self.0.borrow().clone())
        }
        fn store(&self, bytes: &[u8]) -> io::Result<()> {
            *self.0.borrow_mut() = Some(bytes.to_vec());
            Ok(())
        }
        fn remove(&self) -> io::Result<()> {
            *self.0.borrow_mut() = None;
            Ok(())
        }
        fn describe(&self) -> String {
            "durable".into()
        }
    }
    let s = Durable(std::cell::RefCell::new(None));
    s.stage(b"journal").unwrap();
    assert_eq!(s.load().unwrap().as_deref(), Some(&b"journal"[..]));
    s.publish().unwrap();
    s.unstage().unwrap();
    assert_eq!(s.load().unwrap().as_deref(), Some(&b"journal"[..]));
    s.discard().unwrap();
    assert_eq!(s.load().unwrap(), None);
}

/// A plan whose journal is exactly as large as recovery reads back (`MAX_JOURNAL_FILE`) is
/// applied; one byte more is refused before anything is written (recovery could not read that
/// journal back after a crash).
#[test]
fn the_journal_size_bound_is_exact() {
    let plan_of = |len: usize, what: &str| Plan {
        changes: vec![],
        writes: vec![WriteOp {
            offset: 0,
            data: vec![0x5A; len],
            old: vec![0; len],
            what: what.into(),
        }],
        old_len: 0,
        new_len: len as u64,
    };
    // Old and new bytes both count: pick the length and the label that hit the bound.
    let overhead = encoded_len(&plan_of(0, "w"));
    let room = MAX_JOURNAL_FILE as usize - overhead;
    let what = if room % 2 == 0 { "w" } else { "wx" };
    let len = (MAX_JOURNAL_FILE as usize - encoded_len(&plan_of(0, what))) / 2;
    let exact = plan_of(len, what);
    assert_eq!(encoded_len(&exact) as u64, MAX_JOURNAL_FILE);
    let fp = FaultPlan::new(None);
    let f = FaultyFile::new(Vec::new(), fp.clone());
    let j = MemJournal::new(fp.clone());
    apply(&f, &j, &exact).unwrap();
    assert_eq!(f.contents_all_written(), vec![0x5A; len]);
    let over = plan_of(len, &format!("{what}y"));
    assert_eq!(encoded_len(&over) as u64, MAX_JOURNAL_FILE + 1);
    let fp = FaultPlan::new(None);
    let f = FaultyFile::new(Vec::new(), fp.clone());
    let j = MemJournal::new(fp.clone());
    let e = apply(&f, &j, &over).unwrap_err();
    assert!(e.to_string().contains("needs a journal of"), "{e}");
    assert_eq!(fp.count(), 0, "nothing written");
}

/// A journal location whose `load` fails with the error `make` gives.
struct FailingStore(fn() -> io::Error);

impl JournalStore for FailingStore {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        Err((self.0)())
    }
    fn store(&self, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("not used"))
    }
    fn remove(&self) -> io::Result<()> {
        Err(io::Error::other("not used"))
    }
    fn describe(&self) -> String {
        "failing journal".into()
    }
}

/// What a journal that cannot be read means: damaged bytes (`InvalidData`) and something
/// planted at its name (a refusal of the opening rules) are foreign journals, never applied;
/// any other error is an error (nothing is known about the journal).
#[test]
fn unreadable_journals_are_foreign_or_errors_by_cause() {
    let (old, _) = sample();
    let f = FaultyFile::new(old.clone(), FaultPlan::new(None));
    let damaged = FailingStore(|| io::Error::new(io::ErrorKind::InvalidData, "bad bytes"));
    match inspect(&f, &damaged).unwrap() {
        JournalState::Foreign { reason } => assert!(reason.contains("bad bytes"), "{reason}"),
        s => panic!("damaged: {s:?}"),
    }
    let planted = FailingStore(|| crate::fsx::Refused::NotRegular("FIFO").into());
    match inspect(&f, &planted).unwrap() {
        JournalState::Foreign { reason } => {
            assert!(reason.contains("journal's name"), "{reason}")
        }
        s => panic!("planted: {s:?}"),
    }
    for make in [
        (|| io::Error::new(io::ErrorKind::PermissionDenied, "no")) as fn() -> io::Error,
        || io::Error::other("EIO"),
        || io::Error::new(io::ErrorKind::InvalidInput, "not a refusal"),
    ] {
        let e = inspect(&f, &FailingStore(make)).unwrap_err();
        assert!(e.to_string().contains("reading the journal"), "{e}");
        assert!(recover(&f, &FailingStore(make)).is_err());
    }
    assert_eq!(f.contents_all_written(), old);
}

/// Recovery trusts a journal to change the file's length by at most `MAX_JOURNAL_BYTES`:
/// exactly that decodes, one byte more is not a vhdkit journal.
#[test]
fn the_journal_length_change_bound_is_exact() {
    let plan = |new_len: u64| Plan {
        old_len: 4096,
        new_len,
        ..Plan::default()
    };
    let max = super::codec::MAX_JOURNAL_BYTES;
    assert!(decode(&encode(&plan(4096 + max))).is_ok());
    assert!(decode(&encode(&plan(4096 + max + 1))).is_err());
    let shrink = Plan {
        old_len: max + 4096,
        new_len: 4096,
        ..Plan::default()
    };
    assert!(decode(&encode(&shrink)).is_ok());
    let shrink = Plan {
        old_len: max + 4097,
        ..shrink
    };
    assert!(decode(&encode(&shrink)).is_err());
}
