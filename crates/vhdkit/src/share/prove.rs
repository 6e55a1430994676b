//! Proving the copies of a group equal by reading each once, side by side.
//!
//! Every member is read through its own chain one digest chunk (`digest::CHUNK`) at a time, all
//! members at one offset before the next: each file is still read front to back (the kernel's
//! readahead follows each descriptor), and a chunk is compared between members (`memcmp`) while
//! it is in memory. A chunk that is a hole through a member's whole chain is not read from it,
//! and a chunk read as all zeros equals a hole, so copies with different layouts (a block
//! allocated full of zeros in one, absent in another) are equal; copies with the same map read
//! only their data.
//!
//! Members start in one class; a chunk on which members of a class differ splits it. Each class
//! is hashed once, with the framing of `digest::content_digest` (so its digest is the one each
//! member would get alone), on a second thread while the next chunk is read. The proof costs one
//! read of every copy and one BLAKE3 pass per class, not one pass per copy.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::SystemTime;

use super::digest::{self, Framer, CHUNK};
use super::scan::FileKey;
use super::ContentDigest;
use crate::aligned::Aligned;
use crate::chain::{Chain, ChainOptions};
use crate::convert::ZeroAhead;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::view::ChainView;

/// Chunks queued for the hashing thread at most (each holds one buffer of `CHUNK` bytes).
const IN_FLIGHT: usize = 2;

/// A file as it was proved: identity, length and modification time. The real run compares it
/// with the file before relying on the proof (a stat, not another read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    key: FileKey,
    len: u64,
    modified: Option<SystemTime>,
}

/// The stamp of the file at `path` now (`None` when it cannot be read).
pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        key: super::scan::file_key(path, &m),
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// What the proof of one group found.
pub(super) struct Proved {
    /// Per member (in the order given): its class's digest, or why it could not be read.
    pub digests: Vec<ContentDigest>,
    /// Per member: its stamp from before it was read (`None` when unreadable).
    pub stamps: Vec<Option<Stamp>>,
    /// File bytes read (each compared with the other members', or hashed for its class).
    pub read: u64,
}

/// Prove the disks at `paths` (one group: same identity, `size` virtual bytes) equal or not.
/// `progress` advances by the virtual bytes covered, every member counted, and may cancel.
pub(super) fn prove(
    paths: &[&Path],
    size: u64,
    chain: &ChainOptions,
    progress: &mut dyn Progress,
) -> Result<Proved> {
    let stamps: Vec<Option<Stamp>> = paths.iter().map(|p| stamp(p)).collect();
    let members: Vec<Member> = paths.iter().map(|p| open(p, size, chain)).collect();
    let first: Vec<usize> = (0..members.len())
        .filter(|&i| members.get(i).is_some_and(|m| m.is_ok()))
        .collect();
    let (tx, rx) = mpsc::sync_channel(IN_FLIGHT);
    let (back_tx, back) = mpsc::channel();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || hash_classes(&rx, &back_tx, size));
        let mut run = Run {
            members,
            classes: vec![first],
            spare: Vec::new(),
            back,
            tx,
            read: 0,
        };
        let walked = run.walk(size, progress);
        let Run {
            members,
            classes,
            read,
            tx,
            ..
        } = run;
        drop(tx);
        let states = hasher.join().map_err(|_| hasher_gone())?;
        walked?;
        let mut digests = digests(members, &classes, states);
        // A file written while it was read proves nothing.
        for ((d, s), p) in digests.iter_mut().zip(&stamps).zip(paths) {
            if d.is_ok() && (s.is_none() || *s != stamp(p)) {
                *d = Err("it changed while it was read; run again".to_string());
            }
        }
        Ok(Proved {
            digests,
            stamps,
            read,
        })
    })
}

/// A member's chain, or why it could not be opened or read.
type Member = std::result::Result<Reader, String>;

/// A member being read.
struct Reader {
    view: ChainView,
    holes: ZeroAhead,
}

fn open(path: &Path, size: u64, chain: &ChainOptions) -> Member {
    let view = Chain::open(path, chain)
        .map_err(|e| e.to_string())?
        .into_view();
    if view.virtual_size() != size {
        return Err(format!(
            "its virtual size is {}, not the group's {size}",
            view.virtual_size()
        ));
    }
    Ok(Reader {
        view,
        holes: ZeroAhead::default(),
    })
}

/// One chunk of one member.
enum Content {
    Zero,
    Data(Aligned),
}

impl Content {
    fn same(&self, o: &Content) -> bool {
        match (self, o) {
            (Content::Zero, Content::Zero) => true,
            (Content::Data(a), Content::Data(b)) => a.data() == b.data(),
            _ => false,
        }
    }
}

/// Work for the hashing thread, in order.
enum Msg {
    /// A new class, equal so far to class `from` (its state is copied).
    Fork { from: usize },
    /// The next chunk of `class`: `n` bytes of zeros, or data.
    Chunk {
        class: usize,
        n: u64,
        data: Option<Aligned>,
    },
    /// The next `count` chunks of `class` are whole (`CHUNK` bytes) and read as zeros: one
    /// message for a long hole, hashed as `count` zero chunks (the digest does not change).
    Holes { class: usize, count: u64 },
}

/// The reading side of a proof.
struct Run {
    members: Vec<Member>,
    /// Member indices per class; class `i` is hashed in state `i` of the hashing thread.
    classes: Vec<Vec<usize>>,
    /// Buffers free for the next read.
    spare: Vec<Aligned>,
    /// Buffers the hashing thread is done with.
    back: Receiver<Aligned>,
    tx: SyncSender<Msg>,
    read: u64,
}

impl Run {
    fn walk(&mut self, size: u64, progress: &mut dyn Progress) -> Result<()> {
        let all = self.members.len() as u64;
        let mut off = 0u64;
        while off < size {
            // Proving is the long part of a plan: a cancel stops it between chunks.
            if progress.cancelled() {
                return Err(crate::progress::cancelled());
            }
            let holes = self.common_holes(off, size);
            if holes > 0 {
                for class in 0..self.classes.len() {
                    self.send(Msg::Holes {
                        class,
                        count: holes,
                    })?;
                }
                off += holes * CHUNK;
                progress.advance((holes * CHUNK).saturating_mul(all));
                continue;
            }
            let n = (size - off).min(CHUNK);
            // Classes split off during this chunk already had it: the range is fixed here.
            for c in 0..self.classes.len() {
                self.chunk(c, off, n)?;
            }
            off += n;
            progress.advance(n.saturating_mul(all));
        }
        Ok(())
    }

    /// How many whole chunks from `off` (a multiple of `CHUNK`) are a hole in every member
    /// still read: they are skipped together, since no class can split there. 0 when the
    /// chunk at `off` is not such a hole in some member, or asking failed (it is then read
    /// chunk by chunk, where a member's error is recorded as its own).
    fn common_holes(&mut self, off: u64, size: u64) -> u64 {
        let mut end = size;
        for m in self.members.iter_mut().flatten() {
            if !matches!(
                m.holes.all_zero(&m.view, off, CHUNK.min(size - off)),
                Ok(true)
            ) {
                return 0;
            }
            end = end.min(m.holes.zero_end(off).unwrap_or(off));
        }
        end.saturating_sub(off) / CHUNK
    }

    /// Read the chunk at `off` from every member of class `c`, split the class where members
    /// differ, and queue each part's chunk for hashing.
    fn chunk(&mut self, c: usize, off: u64, n: u64) -> Result<()> {
        let ids = self
            .classes
            .get_mut(c)
            .map(std::mem::take)
            .unwrap_or_default();
        let mut parts: Vec<(Content, Vec<usize>)> = Vec::new();
        for i in ids {
            let content = match self.read(i, off, n) {
                Ok(x) => x,
                Err(e) => {
                    if let Some(m) = self.members.get_mut(i) {
                        *m = Err(e.to_string());
                    }
                    continue;
                }
            };
            match parts.iter_mut().find(|(p, _)| p.same(&content)) {
                Some((_, same)) => {
                    same.push(i);
                    if let Content::Data(b) = content {
                        self.spare.push(b);
                    }
                }
                None => parts.push((content, vec![i])),
            }
        }
        // Forks first: a new class copies the state from before this chunk.
        let mut targets = vec![c];
        for _ in 1..parts.len() {
            self.send(Msg::Fork { from: c })?;
            targets.push(self.classes.len());
            self.classes.push(Vec::new());
        }
        for ((content, ids), class) in parts.into_iter().zip(targets) {
            if let Some(slot) = self.classes.get_mut(class) {
                *slot = ids;
            }
            let data = match content {
                Content::Zero => None,
                Content::Data(b) => Some(b),
            };
            self.send(Msg::Chunk { class, n, data })?;
        }
        Ok(())
    }

    /// Member `i`'s chunk of `n` (at most `CHUNK`) bytes at `off`: not read when it is a hole.
    fn read(&mut self, i: usize, off: u64, n: u64) -> Result<Content> {
        let mut buf = self
            .spare
            .pop()
            .or_else(|| self.back.try_recv().ok())
            .unwrap_or_default();
        let Some(Ok(m)) = self.members.get_mut(i) else {
            return Ok(Content::Zero);
        };
        if m.holes.all_zero(&m.view, off, n)? {
            self.spare.push(buf);
            return Ok(Content::Zero);
        }
        m.view.read_exact_at(buf.window(n as usize), off)?;
        self.read += n;
        if digest::is_zero(buf.data()) {
            self.spare.push(buf);
            return Ok(Content::Zero);
        }
        Ok(Content::Data(buf))
    }

    fn send(&self, msg: Msg) -> Result<()> {
        self.tx.send(msg).map_err(|_| hasher_gone())
    }
}

fn hasher_gone() -> Error {
    Error::io(
        "hashing the contents of the copies",
        std::io::Error::other("the hashing thread stopped"),
    )
}

/// The hashing thread: one BLAKE3 state per class, fed in the order the reader sends.
fn hash_classes(rx: &Receiver<Msg>, back: &Sender<Aligned>, size: u64) -> Vec<Framer> {
    let mut states = vec![Framer::start(size)];
    for msg in rx {
        match msg {
            Msg::Fork { from } => {
                let s = states
                    .get(from)
                    .cloned()
                    .unwrap_or_else(|| Framer::start(size));
                states.push(s);
            }
            Msg::Holes { class, count } => {
                if let Some(h) = states.get_mut(class) {
                    h.zero(count.saturating_mul(CHUNK));
                }
            }
            Msg::Chunk { class, n, data } => {
                let Some(h) = states.get_mut(class) else {
                    continue;
                };
                match data {
                    None => h.zero(n),
                    Some(b) => {
                        h.data(b.data());
                        // The reader may be gone (an error): the buffer is then just freed.
                        let _ = back.send(b);
                    }
                }
            }
        }
    }
    states
}

/// Each member's digest: its class's, or why it could not be read.
fn digests(
    members: Vec<Member>,
    classes: &[Vec<usize>],
    states: Vec<Framer>,
) -> Vec<ContentDigest> {
    let mut out: Vec<ContentDigest> = members
        .into_iter()
        .map(|m| m.map(|_| String::new()))
        .collect();
    for (ids, h) in classes.iter().zip(states) {
        let hex = h.finish();
        for &i in ids {
            if let Some(Ok(d)) = out.get_mut(i) {
                d.clone_from(&hex);
            }
        }
    }
    out
}

// Needs the unpublished vhdkit-testkit: only inside the repository (see build.rs).
#[cfg(test)]
#[cfg(vhdkit_workspace)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::path::PathBuf;
    use vhdkit_testkit::vhd::VhdBuilder;
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

    const SIZE: u64 = 4 << 20;

    /// A disk layout: VHD with this block size, or VHDX with 1 MiB blocks (its smallest).
    #[derive(Clone, Copy, Debug)]
    enum Fmt {
        Vhd(u32),
        Vhdx,
    }

    const FORMATS: [Fmt; 3] = [Fmt::Vhd(512 << 10), Fmt::Vhd(2 << 20), Fmt::Vhdx];

    /// A dynamic disk of `fmt` with `writes` applied (zeros written allocate their blocks).
    fn disk(fmt: Fmt, writes: &[(u64, &[u8])]) -> Vec<u8> {
        match fmt {
            Fmt::Vhd(block) => {
                let mut b = VhdBuilder::dynamic(SIZE).block_size(block);
                for (off, data) in writes {
                    b.write(*off, data);
                }
                b.build().bytes
            }
            Fmt::Vhdx => {
                let mut b = VhdxBuilder::new(Kind::Dynamic, SIZE, 1 << 20, 512);
                for (off, data) in writes {
                    b.write(*off, data);
                }
                b.build().bytes
            }
        }
    }

    /// Prove the files made of `files`; every digest found must be the one `content_digest`
    /// gives the member alone. Returns the digests and the bytes read.
    fn prove_all(files: &[Vec<u8>]) -> (Vec<ContentDigest>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let p = dir.path().join(format!("m{i}.vhd"));
                std::fs::write(&p, bytes).unwrap();
                p
            })
            .collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let p = prove(&refs, SIZE, &ChainOptions::default(), &mut ()).unwrap();
        for (path, d) in paths.iter().zip(&p.digests) {
            if let Ok(d) = d {
                let alone = digest::chain_digest(path, &ChainOptions::default(), &mut |_| {});
                assert_eq!(d, &alone.unwrap().0, "{}", path.display());
            }
        }
        (p.digests, p.read)
    }

    /// Long holes common to every copy are skipped a run at a time (one message, not one per
    /// chunk), with the digest `content_digest` gives chunk by chunk; a byte after the hole
    /// still tells the copies apart.
    #[test]
    fn long_common_holes_keep_the_digest_and_the_difference() {
        const BIG: u64 = 64 << 30;
        let make = |byte: u8| {
            let mut b = VhdxBuilder::new(Kind::Dynamic, BIG, 32 << 20, 512);
            b.write(BIG - 4096, &[byte; 512]);
            b.build().bytes
        };
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = [make(1), make(1), make(2)]
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let p = dir.path().join(format!("big{i}.vhdx"));
                std::fs::write(&p, bytes).unwrap();
                p
            })
            .collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let started = std::time::Instant::now();
        let p = prove(&refs, BIG, &ChainOptions::default(), &mut ()).unwrap();
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
        assert_eq!(
            p.read,
            3 * (32 << 20),
            "each copy reads its one allocated block only"
        );
        let d: Vec<String> = p.digests.into_iter().map(|d| d.unwrap()).collect();
        assert_eq!(d[0], d[1]);
        assert_ne!(d[0], d[2]);
        for (path, d) in paths.iter().zip(&d) {
            let alone = digest::chain_digest(path, &ChainOptions::default(), &mut |_| {});
            assert_eq!(d, &alone.unwrap().0, "{}", path.display());
        }
    }

    /// Whether two disks are proved equal (both read, and in one class).
    fn equal(a: &[u8], b: &[u8]) -> bool {
        let (d, _) = prove_all(&[a.to_vec(), b.to_vec()]);
        let (Some(Ok(x)), Some(Ok(y))) = (d.first(), d.get(1)) else {
            panic!("unreadable: {d:?}")
        };
        x == y
    }

    /// Sectors to test: the first, one inside a later block, the last.
    const AT: [u64; 3] = [0, (5 << 19) + 512 * 7, SIZE - 512];

    #[test]
    fn a_sector_allocated_in_one_copy_only_is_told_apart() {
        let data = [0x5a; 512];
        for fmt in FORMATS {
            for at in AT {
                let a = disk(fmt, &[(at, &data)]);
                let b = disk(fmt, &[]);
                assert!(!equal(&a, &b), "{fmt:?} at {at:#x}");
                assert!(!equal(&b, &a), "{fmt:?} at {at:#x}, other order");
            }
        }
    }

    #[test]
    fn one_byte_different_inside_a_block_is_told_apart() {
        let block = [0x33u8; 4096];
        for fmt in FORMATS {
            for at in AT {
                let start = at.min(SIZE - 4096);
                let mut other = block;
                other[usize::try_from(at - start).unwrap()] ^= 0x80;
                let a = disk(fmt, &[(0, &[1; 512]), (start, &block)]);
                let b = disk(fmt, &[(0, &[1; 512]), (start, &other)]);
                assert!(!equal(&a, &b), "{fmt:?} at {at:#x}");
                assert!(equal(&a, &a.clone()), "{fmt:?} at {at:#x}: same bytes");
            }
        }
    }

    /// With blocks smaller than a chunk, a chunk can start with a hole and hold data after it:
    /// that data is read and compared.
    #[test]
    fn data_after_a_hole_in_small_blocks_is_told_apart() {
        for fmt in [Fmt::Vhd(512 << 10), Fmt::Vhd(4096), Fmt::Vhdx] {
            // VHD: the second half of the first chunk; VHDX: its second block (chunk 1).
            let at = match fmt {
                Fmt::Vhdx => 1 << 20,
                Fmt::Vhd(_) => 3 << 18,
            };
            let a = disk(fmt, &[(at, &[1; 512])]);
            let b = disk(fmt, &[(at, &[2; 512])]);
            assert!(!equal(&a, &b), "{fmt:?}");
            assert!(!equal(&a, &disk(fmt, &[])), "{fmt:?}");
        }
    }

    /// A block allocated full of zeros equals a hole, across formats' layouts and block sizes;
    /// only what is not a hole is read.
    #[test]
    fn equal_contents_in_different_layouts_are_equal() {
        let data = [9u8; 8192];
        let zeros = [0u8; 65536];
        for fmt in FORMATS {
            let plain = disk(fmt, &[(3 << 20, &data)]);
            let with_zeros = disk(fmt, &[(3 << 20, &data), (1 << 20, &zeros), (0, &zeros)]);
            let (d, read) = prove_all(&[plain.clone(), with_zeros, plain]);
            assert!(d.iter().all(|x| x == &d[0] && x.is_ok()), "{fmt:?}: {d:?}");
            // The data from all three (its 2 MiB block is two chunks), and the zeros of the
            // second (two chunks).
            let data_chunks = if matches!(fmt, Fmt::Vhd(b) if b == 2 << 20) {
                2
            } else {
                1
            };
            assert_eq!(read, (3 * data_chunks + 2) * CHUNK, "{fmt:?}");
        }
        // Another block size, same contents: equal too.
        let a = disk(Fmt::Vhd(512 << 10), &[(3 << 20, &data)]);
        let b = disk(Fmt::Vhd(2 << 20), &[(3 << 20, &data), (0, &zeros)]);
        assert!(equal(&a, &b));
    }

    /// Three copies, the middle one differing from a later chunk on: two classes, each with
    /// the digest its members get alone (checked in `prove_all`), and an unreadable member is
    /// reported without stopping the others.
    #[test]
    fn classes_split_where_copies_differ() {
        let d1 = [4u8; 512];
        let a = disk(Fmt::Vhd(512 << 10), &[(0, &d1), (3 << 20, &d1)]);
        let b = disk(Fmt::Vhd(512 << 10), &[(0, &d1), (3 << 20, &[5; 512])]);
        let (d, read) = prove_all(&[a.clone(), b, a, b"not a disk".to_vec()]);
        assert_eq!(d[0], d[2]);
        assert_ne!(d[0], d[1]);
        assert!(d[1].is_ok());
        assert!(d[3].is_err(), "{d:?}");
        // Chunks 0 and 3 of the three readable copies.
        assert_eq!(read, 6 * CHUNK);
    }
}
