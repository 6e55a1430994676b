//! What a plan read, so a writer can re-check it under its lock before the first write.
//!
//! A change is planned on the bytes of the file as they were when it was read; another writer
//! may change them before this one takes the lock (two `reparent`s of one child, one of them
//! slowed by a slow disk). Every byte range read while planning goes through a [`ReadSet`]'s
//! recording source, which keeps its offset, length and SHA-256 (never the bytes), and the file
//! length. Under the lock, [`ReadSet::verify`] reads each range again from the locked
//! descriptor: any difference refuses the change, before anything is written.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::source::Source;

/// Distinct ranges kept at most; a plan that reads more cannot be re-checked and is refused (a
/// reparent reads a few dozen: footers, headers, locators, the metadata region, the BAT).
const MAX_RANGES: usize = 1 << 16;

/// One range read, by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    offset: u64,
    len: usize,
    sha: [u8; 32],
}

#[derive(Debug, Default)]
struct Inner {
    ranges: Vec<Range>,
    file_len: Option<u64>,
    overflow: bool,
}

/// The ranges a plan read, shared by every source it opened on the file.
#[derive(Debug, Clone, Default)]
pub struct ReadSet {
    inner: Arc<Mutex<Inner>>,
}

impl ReadSet {
    /// An empty set.
    pub fn new() -> ReadSet {
        ReadSet::default()
    }

    /// `src` (the raw file, under any overlay) with every read recorded here.
    pub fn wrap(&self, src: Box<dyn Source>) -> Box<dyn Source> {
        Box::new(Recording {
            inner: src,
            set: self.clone(),
        })
    }

    /// How many distinct ranges were recorded.
    pub fn len(&self) -> usize {
        self.lock().ranges.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, offset: u64, buf: &[u8]) {
        let r = Range {
            offset,
            len: buf.len(),
            sha: Sha256::digest(buf).into(),
        };
        let mut g = self.lock();
        if g.ranges.contains(&r) {
            return;
        }
        if g.ranges.len() >= MAX_RANGES {
            g.overflow = true;
            return;
        }
        g.ranges.push(r);
    }

    fn record_len(&self, len: u64) {
        let mut g = self.lock();
        if g.file_len.is_none() {
            g.file_len = Some(len);
        }
    }

    /// Re-read every recorded range from `src` (the locked file) and compare. `Err` (a refusal,
    /// one line) names the first range that changed; nothing is written by this.
    pub fn verify(&self, src: &dyn Source) -> Result<()> {
        let g = self.lock();
        if g.overflow {
            return Err(Error::refused(format!(
                "the plan read more than {MAX_RANGES} separate ranges of the file; they cannot \
                 all be re-checked under the lock"
            )));
        }
        let changed = || {
            "the file changed since the plan was made (another writer?); nothing was written, \
             run again"
                .to_string()
        };
        let len = src
            .len()
            .map_err(|e| Error::io("re-reading the file length under the lock", e))?;
        if let Some(planned) = g.file_len.filter(|&l| l != len) {
            return Err(Error::refused(format!(
                "{}: its length is {len}, not {planned}",
                changed()
            )));
        }
        let mut buf = Vec::new();
        for r in &g.ranges {
            buf.clear();
            buf.resize(r.len, 0);
            let same = src.read_exact_at(&mut buf, r.offset).is_ok()
                && <[u8; 32]>::from(Sha256::digest(&buf)) == r.sha;
            if !same {
                return Err(Error::refused(format!(
                    "{}: the {} bytes at {:#x} differ",
                    changed(),
                    r.len,
                    r.offset
                )));
            }
        }
        Ok(())
    }
}

/// A source that records what is read through it.
#[derive(Debug)]
struct Recording {
    inner: Box<dyn Source>,
    set: ReadSet,
}

impl Source for Recording {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)?;
        self.set.record(offset, buf);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let l = self.inner.len()?;
        self.set.record_len(l);
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Buf(Mutex<Vec<u8>>);

    impl Source for Buf {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let g = self.0.lock().unwrap();
            let o = usize::try_from(offset).unwrap();
            let s = g
                .get(o..o + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(s);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
    }

    fn planned(bytes: &[u8]) -> (ReadSet, Arc<Buf>) {
        let file = Arc::new(Buf(Mutex::new(bytes.to_vec())));
        let set = ReadSet::new();
        #[derive(Debug)]
        struct Shared(Arc<Buf>);
        impl Source for Shared {
            fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
                self.0.read_exact_at(buf, offset)
            }
            fn len(&self) -> io::Result<u64> {
                self.0.len()
            }
        }
        let src = set.wrap(Box::new(Shared(file.clone())));
        let mut b = [0u8; 4];
        src.read_exact_at(&mut b, 8).unwrap();
        src.read_exact_at(&mut b, 8).unwrap();
        src.len().unwrap();
        (set, file)
    }

    #[test]
    fn unchanged_bytes_verify() {
        let (set, file) = planned(&[7u8; 64]);
        assert_eq!(set.len(), 1, "the same range read twice is kept once");
        set.verify(&*file).unwrap();
        // A change outside the ranges read does not matter.
        file.0.lock().unwrap()[0] = 1;
        set.verify(&*file).unwrap();
    }

    #[test]
    fn a_changed_byte_read_by_the_plan_refuses() {
        let (set, file) = planned(&[7u8; 64]);
        file.0.lock().unwrap()[10] = 1;
        let e = set.verify(&*file).unwrap_err().to_string();
        assert!(e.contains("refused") && e.contains("0x8"), "{e}");
    }

    #[test]
    fn a_changed_length_refuses() {
        let (set, file) = planned(&[7u8; 64]);
        file.0.lock().unwrap().push(0);
        let e = set.verify(&*file).unwrap_err().to_string();
        assert!(e.contains("length is 65, not 64"), "{e}");
    }
}
