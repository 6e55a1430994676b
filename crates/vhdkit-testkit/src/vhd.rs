//! A small VHD **writer** for tests, written from the VHD spec (FORMAT.md Part A), independent
//! of the `vhdkit` crate so that it checks the reader rather than mirroring it.
//!
//! Layout of dynamic and differencing files: footer copy at 0, dynamic header at 512, BAT at
//! 1536 (padded with 0xFF to a sector), locator data (each in its own reserved space), blocks in
//! the order they were first written (bitmap then data), footer. Sector bitmaps are MSB first
//! with exactly the written sectors set, unless [`VhdBuilder::lsb_bitmaps`] or
//! [`VhdBuilder::full_bitmaps`] says otherwise.
//!
//! [`BuiltVhd`] exposes the bytes and where each structure is, so tests can corrupt them, then
//! [`BuiltVhd::fix_footer_checksums`] / [`BuiltVhd::fix_header_checksum`] when they want the
//! damage to get past the checksum.

use std::collections::BTreeMap;
use std::path::Path;

/// Bytes per sector.
pub const SECTOR: usize = 512;
/// All-ones BAT entry.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;

/// Disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Type 2.
    Fixed,
    /// Type 3.
    Dynamic,
    /// Type 4.
    Differencing,
}

/// One parent locator to write.
#[derive(Debug, Clone)]
pub struct Locator {
    /// Platform code.
    pub code: [u8; 4],
    /// Data bytes, exactly as written.
    pub data: Vec<u8>,
    /// Raw data space value; `None` writes the reserved size in bytes (data rounded up to 512).
    pub data_space: Option<u32>,
    /// Slot 0..8; `None` takes the next free slot.
    pub slot: Option<usize>,
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

impl Locator {
    /// Raw locator.
    pub fn raw(code: &[u8; 4], data: Vec<u8>) -> Locator {
        Locator {
            code: *code,
            data,
            data_space: None,
            slot: None,
        }
    }
    /// `W2ru`: relative Windows path, UTF-16LE.
    pub fn w2ru(path: &str) -> Locator {
        Self::raw(b"W2ru", utf16le(path))
    }
    /// `W2ku`: absolute Windows path, UTF-16LE.
    pub fn w2ku(path: &str) -> Locator {
        Self::raw(b"W2ku", utf16le(path))
    }
    /// `Wi2r`: deprecated relative path, 8-bit.
    pub fn wi2r(path: &str) -> Locator {
        Self::raw(b"Wi2r", path.as_bytes().to_vec())
    }
    /// `Wi2k`: deprecated absolute path, 8-bit.
    pub fn wi2k(path: &str) -> Locator {
        Self::raw(b"Wi2k", path.as_bytes().to_vec())
    }
    /// `MacX`: file URL, UTF-8.
    pub fn macx(url: &str) -> Locator {
        Self::raw(b"MacX", url.as_bytes().to_vec())
    }
    /// Set the raw data space value (sectors if < 512, else bytes, as Windows writes).
    pub fn data_space(mut self, v: u32) -> Locator {
        self.data_space = Some(v);
        self
    }
    /// Put the entry in slot `i`.
    pub fn slot(mut self, i: usize) -> Locator {
        self.slot = Some(i);
        self
    }
}

/// Builds a VHD file in memory.
#[derive(Debug, Clone)]
pub struct VhdBuilder {
    kind: Kind,
    virtual_size: u64,
    block_size: u32,
    unique_id: [u8; 16],
    timestamp: u32,
    creator_app: [u8; 4],
    creator_version: u32,
    parent_id: [u8; 16],
    parent_timestamp: u32,
    parent_name: Vec<u8>,
    locators: Vec<Locator>,
    sectors: BTreeMap<u64, Vec<u8>>,
    block_order: Vec<u64>,
    full_bitmaps: bool,
    lsb_bitmaps: bool,
    footer_511: bool,
}

/// A built file and where its structures are.
#[derive(Debug, Clone)]
pub struct BuiltVhd {
    /// The whole file.
    pub bytes: Vec<u8>,
    /// Offset of the end footer.
    pub footer_offset: usize,
    /// Offset of the dynamic header.
    pub header_offset: Option<usize>,
    /// Offset of the BAT.
    pub bat_offset: Option<usize>,
    /// `(slot, data offset)` per locator written.
    pub locator_data: Vec<(usize, usize)>,
    /// Bitmap offset of each allocated block, by block number.
    pub blocks: BTreeMap<u64, usize>,
    /// Bitmap bytes per block.
    pub bitmap_bytes: usize,
    /// Whether the end footer is 511 bytes.
    pub footer_511: bool,
}

/// The VHD checksum: NOT of the byte sum with the 4 bytes at `at` counted as zero.
pub fn checksum(bytes: &[u8], at: usize) -> u32 {
    let mut sum = 0u32;
    for (i, &b) in bytes.iter().enumerate() {
        if !(at..at + 4).contains(&i) {
            sum = sum.wrapping_add(u32::from(b));
        }
    }
    !sum
}

/// CHS geometry for a size, per the VHD spec appendix (FORMAT.md A.5).
pub fn chs_for(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / 255;
    } else {
        let mut s = 17;
        let mut c = total / 17;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / 31;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / 63;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

impl VhdBuilder {
    fn new(kind: Kind, virtual_size: u64) -> VhdBuilder {
        assert!(
            virtual_size % 512 == 0,
            "virtual size must be whole sectors"
        );
        VhdBuilder {
            kind,
            virtual_size,
            block_size: 2 << 20,
            unique_id: uuid::Uuid::new_v4().into_bytes(),
            timestamp: 0x2A00_0000,
            creator_app: *b"tkit",
            creator_version: 0x0001_0000,
            parent_id: [0; 16],
            parent_timestamp: 0,
            parent_name: Vec::new(),
            locators: Vec::new(),
            sectors: BTreeMap::new(),
            block_order: Vec::new(),
            full_bitmaps: false,
            lsb_bitmaps: false,
            footer_511: false,
        }
    }
    /// A fixed disk.
    pub fn fixed(virtual_size: u64) -> VhdBuilder {
        Self::new(Kind::Fixed, virtual_size)
    }
    /// A dynamic disk (2 MiB blocks unless changed).
    pub fn dynamic(virtual_size: u64) -> VhdBuilder {
        Self::new(Kind::Dynamic, virtual_size)
    }
    /// A differencing disk whose parent's footer unique id is `parent_id`.
    pub fn differencing(virtual_size: u64, parent_id: [u8; 16]) -> VhdBuilder {
        let mut b = Self::new(Kind::Differencing, virtual_size);
        b.parent_id = parent_id;
        b
    }
    /// Block size in bytes.
    pub fn block_size(mut self, bs: u32) -> Self {
        self.block_size = bs;
        self
    }
    /// Footer unique id bytes.
    pub fn unique_id(mut self, id: [u8; 16]) -> Self {
        self.unique_id = id;
        self
    }
    /// The unique id bytes.
    pub fn id(&self) -> [u8; 16] {
        self.unique_id
    }
    /// Footer time stamp.
    pub fn timestamp(mut self, t: u32) -> Self {
        self.timestamp = t;
        self
    }
    /// Creator application and version.
    pub fn creator(mut self, app: &[u8; 4], version: u32) -> Self {
        self.creator_app = *app;
        self.creator_version = version;
        self
    }
    /// Parent time stamp.
    pub fn parent_timestamp(mut self, t: u32) -> Self {
        self.parent_timestamp = t;
        self
    }
    /// Parent unicode name (written UTF-16 big-endian).
    pub fn parent_name(mut self, name: &str) -> Self {
        self.parent_name = name.encode_utf16().flat_map(u16::to_be_bytes).collect();
        self
    }
    /// Parent unicode name field bytes, raw (at most 512).
    pub fn parent_name_raw(mut self, raw: Vec<u8>) -> Self {
        assert!(raw.len() <= 512);
        self.parent_name = raw;
        self
    }
    /// Add a parent locator.
    pub fn locator(mut self, l: Locator) -> Self {
        self.locators.push(l);
        self
    }
    /// Write all-ones bitmaps (as qemu does for dynamic disks).
    pub fn full_bitmaps(mut self) -> Self {
        self.full_bitmaps = true;
        self
    }
    /// Write LSB-first bitmaps (old tapdisk).
    pub fn lsb_bitmaps(mut self) -> Self {
        self.lsb_bitmaps = true;
        self
    }
    /// End with an old 511-byte footer.
    pub fn footer_511(mut self) -> Self {
        self.footer_511 = true;
        self
    }

    /// Write whole sectors at `offset` (both multiples of 512).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(
            offset % 512 == 0 && data.len() % 512 == 0,
            "sector-granular writes only"
        );
        assert!(
            offset + data.len() as u64 <= self.virtual_size,
            "write past the end"
        );
        for (i, chunk) in data.chunks(SECTOR).enumerate() {
            let s = offset / 512 + i as u64;
            let block = s * 512 / u64::from(self.block_size);
            if !self.block_order.contains(&block) {
                self.block_order.push(block);
            }
            self.sectors.insert(s, chunk.to_vec());
        }
    }

    /// The virtual disk this file alone holds: written sectors, zeros elsewhere.
    pub fn model(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.virtual_size as usize];
        for (s, d) in &self.sectors {
            put(&mut v, *s as usize * SECTOR, d);
        }
        v
    }

    /// Sectors written.
    pub fn written(&self) -> impl Iterator<Item = u64> + '_ {
        self.sectors.keys().copied()
    }

    fn footer(&self, data_offset: u64) -> [u8; 512] {
        let mut f = [0u8; 512];
        put(&mut f, 0, b"conectix");
        put(&mut f, 8, &2u32.to_be_bytes());
        put(&mut f, 12, &0x0001_0000u32.to_be_bytes());
        put(&mut f, 16, &data_offset.to_be_bytes());
        put(&mut f, 24, &self.timestamp.to_be_bytes());
        put(&mut f, 28, &self.creator_app);
        put(&mut f, 32, &self.creator_version.to_be_bytes());
        put(&mut f, 36, b"Wi2k");
        put(&mut f, 40, &self.virtual_size.to_be_bytes());
        put(&mut f, 48, &self.virtual_size.to_be_bytes());
        let (c, h, s) = chs_for(self.virtual_size);
        put(&mut f, 56, &c.to_be_bytes());
        f[58] = h;
        f[59] = s;
        let ty: u32 = match self.kind {
            Kind::Fixed => 2,
            Kind::Dynamic => 3,
            Kind::Differencing => 4,
        };
        put(&mut f, 60, &ty.to_be_bytes());
        put(&mut f, 68, &self.unique_id);
        let c = checksum(&f, 64);
        put(&mut f, 64, &c.to_be_bytes());
        f
    }

    /// Lay the file out.
    pub fn build(&self) -> BuiltVhd {
        if self.kind == Kind::Fixed {
            let mut bytes = self.model();
            let footer_offset = bytes.len();
            bytes.extend_from_slice(&self.footer(u64::MAX));
            if self.footer_511 {
                bytes.pop();
            }
            return BuiltVhd {
                bytes,
                footer_offset,
                header_offset: None,
                bat_offset: None,
                locator_data: Vec::new(),
                blocks: BTreeMap::new(),
                bitmap_bytes: 0,
                footer_511: self.footer_511,
            };
        }
        let bs = self.block_size as usize;
        let spb = bs / SECTOR;
        let bitmap_bytes = spb.div_ceil(8).div_ceil(SECTOR) * SECTOR;
        let entries = self.virtual_size.div_ceil(u64::from(self.block_size)) as usize;
        let header_offset = 512usize;
        let bat_offset = 1536usize;
        let bat_bytes = (entries * 4).div_ceil(SECTOR) * SECTOR;
        let mut bytes = vec![0u8; bat_offset + bat_bytes];
        bytes[bat_offset..].fill(0xFF);
        // Locator data.
        let mut used = [false; 8];
        for l in &self.locators {
            if let Some(s) = l.slot {
                used[s] = true;
            }
        }
        let mut entries_bytes = [[0u8; 24]; 8];
        let mut locator_data = Vec::new();
        for l in &self.locators {
            let slot = l.slot.unwrap_or_else(|| {
                let s = used.iter().position(|u| !u).expect("a free locator slot");
                used[s] = true;
                s
            });
            let (raw_space, reserve) = match l.data_space {
                Some(v) if v < 512 => (v, v as usize * SECTOR),
                Some(v) => (v, v as usize),
                None => {
                    let r = l.data.len().div_ceil(SECTOR).max(1) * SECTOR;
                    (r as u32, r)
                }
            };
            let at = bytes.len();
            bytes.resize(at + reserve.max(l.data.len()).div_ceil(SECTOR) * SECTOR, 0);
            put(&mut bytes, at, &l.data);
            let e = &mut entries_bytes[slot];
            put(e, 0, &l.code);
            put(e, 4, &raw_space.to_be_bytes());
            put(e, 8, &(l.data.len() as u32).to_be_bytes());
            put(e, 16, &(at as u64).to_be_bytes());
            locator_data.push((slot, at));
        }
        // Blocks.
        let mut blocks = BTreeMap::new();
        for &b in &self.block_order {
            let at = bytes.len();
            blocks.insert(b, at);
            bytes.resize(at + bitmap_bytes + bs, 0);
            put(
                &mut bytes,
                bat_offset + b as usize * 4,
                &((at / SECTOR) as u32).to_be_bytes(),
            );
            if self.full_bitmaps {
                bytes[at..at + bitmap_bytes].fill(0xFF);
            }
            let first = b * spb as u64;
            for (s, d) in self.sectors.range(first..first + spb as u64) {
                let i = (s - first) as usize;
                let mask = if self.lsb_bitmaps {
                    1u8 << (i % 8)
                } else {
                    0x80u8 >> (i % 8)
                };
                bytes[at + i / 8] |= mask;
                put(&mut bytes, at + bitmap_bytes + i * SECTOR, d);
            }
        }
        // Dynamic header.
        let mut h = [0u8; 1024];
        put(&mut h, 0, b"cxsparse");
        put(&mut h, 8, &u64::MAX.to_be_bytes());
        put(&mut h, 16, &(bat_offset as u64).to_be_bytes());
        put(&mut h, 24, &0x0001_0000u32.to_be_bytes());
        put(&mut h, 28, &(entries as u32).to_be_bytes());
        put(&mut h, 32, &self.block_size.to_be_bytes());
        put(&mut h, 40, &self.parent_id);
        put(&mut h, 56, &self.parent_timestamp.to_be_bytes());
        put(&mut h, 64, &self.parent_name);
        for (i, e) in entries_bytes.iter().enumerate() {
            put(&mut h, 576 + 24 * i, e);
        }
        let c = checksum(&h, 36);
        put(&mut h, 36, &c.to_be_bytes());
        put(&mut bytes, header_offset, &h);
        let f = self.footer(header_offset as u64);
        put(&mut bytes, 0, &f);
        let footer_offset = bytes.len();
        bytes.extend_from_slice(&f);
        if self.footer_511 {
            bytes.pop();
        }
        BuiltVhd {
            bytes,
            footer_offset,
            header_offset: Some(header_offset),
            bat_offset: Some(bat_offset),
            locator_data,
            blocks,
            bitmap_bytes,
            footer_511: self.footer_511,
        }
    }
}

impl BuiltVhd {
    /// Offset of locator entry `slot` in the dynamic header.
    pub fn locator_entry(&self, slot: usize) -> usize {
        self.header_offset.expect("dynamic") + 576 + 24 * slot
    }
    /// Store a big-endian u32.
    pub fn set_u32(&mut self, off: usize, v: u32) {
        put(&mut self.bytes, off, &v.to_be_bytes());
    }
    /// Store a big-endian u64.
    pub fn set_u64(&mut self, off: usize, v: u64) {
        put(&mut self.bytes, off, &v.to_be_bytes());
    }
    /// Set BAT entry `i`.
    pub fn set_bat(&mut self, i: usize, v: u32) {
        let at = self.bat_offset.expect("dynamic") + 4 * i;
        self.set_u32(at, v);
    }
    /// Recompute the checksum of both footer copies (the front one only for dynamic files).
    pub fn fix_footer_checksums(&mut self) {
        let len = if self.footer_511 { 511 } else { 512 };
        let end = self.footer_offset;
        let c = checksum(&self.bytes[end..end + len], 64);
        self.set_u32(end + 64, c);
        if self.header_offset.is_some() {
            let c = checksum(&self.bytes[..512], 64);
            self.set_u32(64, c);
        }
    }
    /// Recompute the dynamic header checksum.
    pub fn fix_header_checksum(&mut self) {
        let h = self.header_offset.expect("dynamic");
        let c = checksum(&self.bytes[h..h + 1024], 36);
        self.set_u32(h + 36, c);
    }
    /// Write the file.
    pub fn write_to(&self, path: &Path) {
        std::fs::write(path, &self.bytes).expect("write vhd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_known_values() {
        assert_eq!(chs_for(4 << 20), (120, 4, 17));
        assert_eq!(chs_for(3 << 20), (90, 4, 17));
        assert_eq!(chs_for(10 << 20), (301, 4, 17));
        assert_eq!(chs_for(512 << 20), (1040, 16, 63));
        assert_eq!(chs_for(136365211648), (65278, 16, 255));
    }

    #[test]
    fn layout_and_bitmap() {
        let mut b = VhdBuilder::differencing(1 << 20, [1; 16])
            .block_size(64 << 10)
            .locator(Locator::w2ru(r".\p.vhd"));
        for s in [1u64, 3, 6] {
            b.write(s * 512, &[0xAB; 512]);
        }
        let f = b.build();
        let at = f.blocks[&0];
        assert_eq!(f.bytes[at], 0x52);
        assert_eq!(f.bitmap_bytes, 512);
        assert_eq!(f.bytes.len(), f.footer_offset + 512);
        assert_eq!(&f.bytes[..512], &f.bytes[f.footer_offset..]);
        assert_eq!(
            checksum(&f.bytes[512..1536], 36).to_be_bytes(),
            f.bytes[548..552]
        );
    }
}
