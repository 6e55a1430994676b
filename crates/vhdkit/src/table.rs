//! On-demand reads of a block allocation table.
//!
//! A table can hold tens of millions of entries (a 2040 GiB VHD with 128 KiB blocks: 64 MiB;
//! a 64 TiB differencing VHDX with 2 MiB blocks: 256 MiB), so no reader or writer keeps it
//! whole: entries are read from the file a page at a time through a small cache, and scans
//! stream it through one bounded buffer. Memory then stays the same whatever the disk's size
//! (the README's 64 MiB bound).
//!
//! The owner passes the source on each call (its file, a log-replay view, a writer's sink), so
//! the table borrows nothing and a writer's later writes are seen by pages read after them;
//! [`LazyTable::patch`] keeps cached pages in step with entries the owner writes itself.

use std::sync::{Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::source::{read_struct, Source};

/// Bytes of table per cached page.
const PAGE_BYTES: u64 = 64 << 10;
/// Pages kept: 1 MiB of table.
const MAX_PAGES: usize = 16;
/// Bytes of table read at a time by every streaming pass over a table (here and in the
/// checkers): one reused buffer below the allocator's mmap threshold, so a pass neither maps
/// and faults in fresh pages nor leaves L2 cache, whatever the table's size.
pub(crate) const SCAN_BYTES: u64 = 64 << 10;

/// How one entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// 4 bytes, big-endian (VHD).
    U32Be,
    /// 8 bytes, little-endian (VHDX).
    U64Le,
}

impl Width {
    /// Bytes per entry.
    pub(crate) const fn bytes(self) -> u64 {
        match self {
            Width::U32Be => 4,
            Width::U64Le => 8,
        }
    }

    fn decode(self, b: &[u8]) -> u64 {
        match self {
            Width::U32Be => b
                .try_into()
                .map_or(0, |a: [u8; 4]| u64::from(u32::from_be_bytes(a))),
            Width::U64Le => b.try_into().map_or(0, u64::from_le_bytes),
        }
    }

    fn encode(self, v: u64, out: &mut [u8]) {
        match self {
            Width::U32Be => {
                let x = u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes();
                out.copy_from_slice(&x);
            }
            Width::U64Le => out.copy_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Pages read so far, most recently used last.
#[derive(Debug, Default)]
struct Pages {
    pages: Vec<(u64, Vec<u8>)>,
}

/// A table of `count` entries at `offset`, read on demand.
#[derive(Debug)]
pub(crate) struct LazyTable {
    offset: u64,
    count: u64,
    width: Width,
    structure: &'static str,
    cache: Mutex<Pages>,
}

impl LazyTable {
    /// A table of `count` entries of `width` at `offset` of `src`. The caller has checked that
    /// the table lies inside the file; `structure` names it in errors.
    pub(crate) fn new(offset: u64, count: u64, width: Width, structure: &'static str) -> LazyTable {
        LazyTable {
            offset,
            count,
            width,
            structure,
            cache: Mutex::new(Pages::default()),
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// Absolute offset of the table.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Absolute file offset of entry `index`.
    pub(crate) fn entry_offset(&self, index: u64) -> u64 {
        self.offset
            .saturating_add(index.saturating_mul(self.width.bytes()))
    }

    fn table_bytes(&self) -> u64 {
        self.count.saturating_mul(self.width.bytes())
    }

    fn outside(&self, index: u64) -> Error {
        Error::corrupt(
            self.structure,
            self.entry_offset(index),
            format!(
                "entry {index} is outside the table of {} entries",
                self.count
            ),
        )
        // A block past the table's last entry: the table is too small for the disk.
        .with_code(if self.structure.starts_with("vhdx") {
            "vhdx.bat.too_small"
        } else {
            "vhd.bat.too_small"
        })
    }

    /// Entry `index`, as stored (VHD: the sector number; VHDX: the raw 64-bit entry).
    pub(crate) fn get(&self, src: &dyn Source, index: u64) -> Result<u64> {
        if index >= self.count {
            return Err(self.outside(index));
        }
        let (page, within) = self.locate(index);
        let width = usize::try_from(self.width.bytes()).unwrap_or(8);
        let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = self.page(&mut c, src, page)?;
        let raw = bytes.get(within..within + width).unwrap_or_default();
        Ok(self.width.decode(raw))
    }

    /// How many entries from `from` on, at most `max`, pass `keep(index, entry)` one after
    /// another: the length of a run, found a page at a time (one lock and one cache search per
    /// page, not per entry). The run also ends at the end of the table and before a page that
    /// cannot be read, whose error a later [`LazyTable::get`] reports as before.
    pub(crate) fn run_len(
        &self,
        src: &dyn Source,
        from: u64,
        max: u64,
        mut keep: impl FnMut(u64, u64) -> bool,
    ) -> u64 {
        let end = from.saturating_add(max).min(self.count);
        let w = self.width.bytes();
        let step = usize::try_from(w).unwrap_or(8);
        let per_page = PAGE_BYTES / w;
        let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = from;
        while i < end {
            let (page, within) = self.locate(i);
            let Ok(bytes) = self.page(&mut c, src, page) else {
                break;
            };
            let page_end = page.saturating_add(1).saturating_mul(per_page).min(end);
            let entries = bytes.get(within..).unwrap_or_default().chunks_exact(step);
            for (k, raw) in (i..page_end).zip(entries) {
                if !keep(k, self.width.decode(raw)) {
                    return k - from;
                }
            }
            i = page_end;
        }
        i.saturating_sub(from)
    }

    /// Page of entry `index`, and the entry's byte offset inside it.
    fn locate(&self, index: u64) -> (u64, usize) {
        let byte = index.saturating_mul(self.width.bytes());
        (
            byte / PAGE_BYTES,
            usize::try_from(byte % PAGE_BYTES).unwrap_or(0),
        )
    }

    /// The bytes of `page`, read into the cache `c` if absent, and made the most recently used.
    fn page<'c>(&self, c: &'c mut Pages, src: &dyn Source, page: u64) -> Result<&'c [u8]> {
        // From the most recently used end: sequential reads hit the last page at once.
        match c.pages.iter().rposition(|(p, _)| *p == page) {
            // Most recently used last, so eviction drops the page unused longest.
            Some(pos) if pos + 1 != c.pages.len() => {
                let hit = c.pages.remove(pos);
                c.pages.push(hit);
            }
            Some(_) => {}
            None => {
                let bytes = self.read_page(src, page)?;
                if c.pages.len() >= MAX_PAGES {
                    c.pages.remove(0);
                }
                c.pages.push((page, bytes));
            }
        }
        Ok(c.pages
            .last()
            .map(|(_, b)| b.as_slice())
            .unwrap_or_default())
    }

    fn read_page(&self, src: &dyn Source, page: u64) -> Result<Vec<u8>> {
        let start = page * PAGE_BYTES;
        let len = self.table_bytes().saturating_sub(start).min(PAGE_BYTES);
        // `len` is at most PAGE_BYTES, so it fits memory on every target.
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_struct(
            src,
            self.offset.saturating_add(start),
            &mut buf,
            self.structure,
        )?;
        Ok(buf)
    }

    /// Record that entry `index` now holds `value` on disk (the owner wrote it): a cached page
    /// holding it is updated, so later reads agree with the file.
    pub(crate) fn patch(&self, index: u64, value: u64) {
        if index >= self.count {
            return;
        }
        let (page, within) = self.locate(index);
        let width = usize::try_from(self.width.bytes()).unwrap_or(8);
        let mut c = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, bytes)) = c.pages.iter_mut().find(|(p, _)| *p == page) {
            if let Some(slot) = bytes.get_mut(within..within + width) {
                self.width.encode(value, slot);
            }
        }
    }

    /// Call `f(index, entry)` for every entry from `from` on, in order, reading the table
    /// through one bounded buffer (the cache is left alone). Stops at the first error `f`
    /// returns.
    pub(crate) fn scan(
        &self,
        src: &dyn Source,
        from: u64,
        mut f: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        scan_table(
            src,
            self.offset,
            self.count,
            self.width,
            self.structure,
            from,
            &mut f,
        )
    }
}

/// Stream `count` entries of `width` at `offset` of `src` from entry `from` on, through one
/// bounded buffer; for checks that run before a [`LazyTable`] exists. Generic over `f`, so a
/// pass over tens of millions of entries inlines it instead of making a call per entry.
pub(crate) fn scan_table<F>(
    src: &dyn Source,
    offset: u64,
    count: u64,
    width: Width,
    structure: &'static str,
    from: u64,
    f: &mut F,
) -> Result<()>
where
    F: FnMut(u64, u64) -> Result<()> + ?Sized,
{
    let step = usize::try_from(width.bytes()).unwrap_or(8);
    scan_raw(
        src,
        offset,
        count,
        width,
        structure,
        from,
        &mut |first, raw| {
            for (k, e) in (first..).zip(raw.chunks_exact(step)) {
                f(k, width.decode(e))?;
            }
            Ok(())
        },
    )
}

/// Like [`scan_table`], but hands over the entries as stored, `f(first index, bytes)` a buffer
/// at a time (whole entries, at most `SCAN_BYTES`), for passes that judge runs of entries at
/// once rather than one by one.
pub(crate) fn scan_raw<F>(
    src: &dyn Source,
    offset: u64,
    count: u64,
    width: Width,
    structure: &'static str,
    from: u64,
    f: &mut F,
) -> Result<()>
where
    F: FnMut(u64, &[u8]) -> Result<()> + ?Sized,
{
    let w = width.bytes();
    let per_read = SCAN_BYTES / w;
    let mut buf = Vec::new();
    let mut i = from;
    while i < count {
        let n = (count - i).min(per_read);
        buf.resize(usize::try_from(n * w).unwrap_or(0), 0);
        read_struct(src, offset.saturating_add(i * w), &mut buf, structure)?;
        f(i, &buf)?;
        i += n;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn table(entries: &[u64], width: Width, at: usize) -> (Vec<u8>, LazyTable) {
        let w = usize::try_from(width.bytes()).unwrap();
        let mut file = vec![0xEEu8; at + entries.len() * w + 3];
        for (i, &e) in entries.iter().enumerate() {
            width.encode(e, &mut file[at + i * w..at + (i + 1) * w]);
        }
        let t = LazyTable::new(at as u64, entries.len() as u64, width, "test table");
        (file, t)
    }

    #[test]
    fn get_reads_every_entry_across_pages_and_evictions() {
        // 40 pages of VHD entries: more than the cache holds, so pages are evicted and reread.
        let n = (40 * PAGE_BYTES / 4) as usize;
        let entries: Vec<u64> = (0..n as u64).map(|i| i * 7 + 1).collect();
        let (src, t) = table(&entries, Width::U32Be, 512);
        for i in (0..n).step_by(997).chain((0..n).rev().step_by(1013)) {
            assert_eq!(t.get(&src, i as u64).unwrap(), entries[i], "entry {i}");
        }
        assert!(t.cache.lock().unwrap().pages.len() <= MAX_PAGES);
        let err = t.get(&src, n as u64).unwrap_err().to_string();
        assert!(err.contains("outside the table"), "{err}");
    }

    #[test]
    fn vhdx_entries_are_little_endian_u64() {
        let entries = [u64::MAX - 5, 0x0000_0030_0000_0006, 0];
        let (src, t) = table(&entries, Width::U64Le, 8);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(t.get(&src, i as u64).unwrap(), *e);
        }
    }

    #[test]
    fn patch_updates_a_cached_page_only() {
        let entries: Vec<u64> = (0..100).collect();
        let (src, t) = table(&entries, Width::U64Le, 0);
        assert_eq!(t.get(&src, 5).unwrap(), 5);
        t.patch(5, 55);
        assert_eq!(t.get(&src, 5).unwrap(), 55);
        // Not in the file: once the page is evicted, the file's value comes back.
        t.cache.lock().unwrap().pages.clear();
        assert_eq!(t.get(&src, 5).unwrap(), 5);
        t.patch(1000, 1); // outside: ignored
    }

    #[test]
    fn scan_visits_every_entry_once_in_order_from_a_start() {
        let n = (3 * SCAN_BYTES / 8 + 5) as usize;
        let entries: Vec<u64> = (0..n as u64).map(|i| i ^ 0x5A5A).collect();
        let (src, t) = table(&entries, Width::U64Le, 4096);
        let mut seen = 0u64;
        t.scan(&src, 10, |i, e| {
            assert_eq!(i, 10 + seen);
            assert_eq!(e, entries[i as usize]);
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, n as u64 - 10);
        let stop = t.scan(&src, 0, |i, _| {
            if i == 3 {
                Err(Error::Internal("stop".into()))
            } else {
                Ok(())
            }
        });
        assert!(stop.is_err());
    }

    #[test]
    fn run_len_follows_a_run_across_pages_to_its_end() {
        // 3.5 pages of VHD entries: unallocated, except 5 entries.
        let per_page = PAGE_BYTES / 4;
        let n = per_page * 7 / 2;
        let set = [3, per_page - 1, per_page + 2, 3 * per_page, n - 1];
        let entries: Vec<u64> = (0..n)
            .map(|i| {
                if set.contains(&i) {
                    i
                } else {
                    u64::from(u32::MAX)
                }
            })
            .collect();
        let (src, t) = table(&entries, Width::U32Be, 512);
        let free = |_: u64, e: u64| e == u64::from(u32::MAX);
        // The lookup answers as `get` does, entry by entry.
        let slow = |from: u64, max: u64| {
            (from..n.min(from.saturating_add(max)))
                .take_while(|&i| free(i, t.get(&src, i).unwrap()))
                .count() as u64
        };
        for (from, max) in [
            (0, u64::MAX),
            (4, u64::MAX),                // up to the last entry of page 0
            (per_page, 2),                // stops at `max`
            (per_page + 3, u64::MAX),     // across page 1 into page 2, up to entry 3 * per_page
            (3 * per_page + 1, u64::MAX), // the last, partial page, up to its last entry
            (3 * per_page + 1, 5),
            (n - 1, 10),
            (n, 10), // past the end
            (u64::MAX, u64::MAX),
            (7, 0),
        ] {
            assert_eq!(
                t.run_len(&src, from, max, free),
                slow(from, max),
                "{from} {max}"
            );
        }
        assert_eq!(
            t.run_len(&src, per_page + 3, u64::MAX, free),
            2 * per_page - 3
        );
        assert_eq!(t.run_len(&src, 3 * per_page + 1, u64::MAX, free), n / 7 - 2);
        assert_eq!(t.run_len(&src, n, 10, free), 0);
        // `keep` sees every index and entry in order.
        let mut seen = Vec::new();
        let got = t.run_len(&src, per_page - 2, 5, |i, e| {
            seen.push((i, e));
            true
        });
        assert_eq!(got, 5);
        let want: Vec<(u64, u64)> = (per_page - 2..per_page + 3)
            .map(|i| (i, entries[i as usize]))
            .collect();
        assert_eq!(seen, want);
        assert!(t.cache.lock().unwrap().pages.len() <= MAX_PAGES);
    }

    #[test]
    fn run_len_stops_before_an_unreadable_page_and_get_still_reports_it() {
        // Two pages of VHDX entries in the file; the table claims a third, cut by the end.
        let per_page = PAGE_BYTES / 8;
        let src = vec![0u8; usize::try_from(2 * PAGE_BYTES + 16).unwrap()];
        let t = LazyTable::new(0, 3 * per_page, Width::U64Le, "test table");
        assert_eq!(
            t.run_len(&src, 5, u64::MAX, |_, e| e == 0),
            2 * per_page - 5
        );
        assert_eq!(t.run_len(&src, 2 * per_page, u64::MAX, |_, _| true), 0);
        let err = t.get(&src, 2 * per_page).unwrap_err();
        assert!(err.is_corruption(), "{err}");
        assert_eq!(t.get(&src, 2 * per_page - 1).unwrap(), 0);
    }

    #[test]
    fn a_table_past_the_end_of_the_file_is_an_error_not_a_panic() {
        let src = vec![0u8; 100];
        let t = LazyTable::new(96, 1000, Width::U32Be, "test table");
        assert!(t.get(&src, 0).is_err());
        assert!(t.get(&src, 999).is_err());
        assert!(t.scan(&src, 0, |_, _| Ok(())).is_err());
    }
}
