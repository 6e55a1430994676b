//! A small, independent VHDX writer for tests (written from MS-VHDX, not from vhdkit): fixed,
//! dynamic and differencing disks, sector-granular writes, ZERO blocks, and unapplied log
//! entries (with hooks to break them) for dirty-log tests. Layout: log @1 MiB (1 MiB), metadata
//! @2 MiB (1 MiB), BAT @3 MiB, then payload blocks in block order, then sector bitmap blocks.

use std::collections::BTreeMap;

use uuid::Uuid;

const MIB: u64 = 1 << 20;

/// Disk type to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every block FULLY_PRESENT, LeaveBlockAllocated set.
    Fixed,
    /// Written blocks FULLY_PRESENT.
    Dynamic,
    /// HasParent; written sectors PARTIALLY_PRESENT (FULLY_PRESENT when the whole block is).
    Differencing,
}

#[derive(Debug, Clone)]
struct Block {
    data: Vec<u8>,
    present: Vec<bool>,
    zero: bool,
}

/// Builder for one VHDX file.
#[derive(Debug, Clone)]
pub struct VhdxBuilder {
    /// Disk type.
    pub kind: Kind,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Logical sector size.
    pub logical_sector_size: u32,
    /// Physical sector size.
    pub physical_sector_size: u32,
    /// Header DataWriteGuid.
    pub data_write_guid: Uuid,
    /// Header FileWriteGuid.
    pub file_write_guid: Uuid,
    /// Virtual disk id item.
    pub virtual_disk_id: Uuid,
    /// `parent_linkage` (differencing).
    pub parent_linkage: Uuid,
    /// `parent_linkage2`, written when set.
    pub parent_linkage2: Option<Uuid>,
    /// `relative_path`.
    pub relative_path: Option<String>,
    /// `volume_path`.
    pub volume_path: Option<String>,
    /// `absolute_win32_path`.
    pub absolute_win32_path: Option<String>,
    /// Creator string.
    pub creator: String,
    blocks: BTreeMap<u64, Block>,
}

/// Where the structures of a built file are.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Log region.
    pub log_offset: u64,
    /// Log length.
    pub log_length: u64,
    /// Metadata region.
    pub metadata_offset: u64,
    /// Parent locator item, when written.
    pub locator_offset: Option<u64>,
    /// BAT region.
    pub bat_offset: u64,
    /// BAT region length.
    pub bat_length: u64,
    /// Chunk ratio.
    pub chunk_ratio: u64,
    /// Payload block -> file offset.
    pub block_offsets: BTreeMap<u64, u64>,
    /// Chunk -> sector bitmap block file offset.
    pub sb_offsets: BTreeMap<u64, u64>,
}

/// A built file.
#[derive(Debug, Clone)]
pub struct Built {
    /// The file bytes.
    pub bytes: Vec<u8>,
    /// Structure offsets.
    pub layout: Layout,
}

fn put(buf: &mut [u8], at: u64, data: &[u8]) {
    let at = at as usize;
    buf[at..at + data.len()].copy_from_slice(data);
}

fn crc_into(buf: &mut [u8], at: u64, len: usize, crc_at: usize) {
    let at = at as usize;
    let region = &mut buf[at..at + len];
    region[crc_at..crc_at + 4].fill(0);
    let c = crc32c::crc32c(region);
    region[crc_at..crc_at + 4].copy_from_slice(&c.to_le_bytes());
}

fn u16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Region/metadata GUIDs as on-disk bytes (Microsoft layout).
fn g(s: &str) -> [u8; 16] {
    Uuid::parse_str(s).expect("guid").to_bytes_le()
}

impl VhdxBuilder {
    /// A new disk; GUIDs are fixed, distinct values (change the fields to taste).
    pub fn new(kind: Kind, virtual_size: u64, block_size: u32, logical_sector_size: u32) -> Self {
        VhdxBuilder {
            kind,
            virtual_size,
            block_size,
            logical_sector_size,
            physical_sector_size: 4096,
            data_write_guid: Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888),
            file_write_guid: Uuid::from_u128(0x2222_3333_4444_5555_6666_7777_8888_9999),
            virtual_disk_id: Uuid::from_u128(0x3333_4444_5555_6666_7777_8888_9999_aaaa),
            parent_linkage: Uuid::nil(),
            parent_linkage2: None,
            relative_path: Some(r".\parent.vhdx".to_string()),
            volume_path: None,
            absolute_win32_path: None,
            creator: "vhdkit-testkit".to_string(),
            blocks: BTreeMap::new(),
        }
    }

    fn sectors_per_block(&self) -> usize {
        (self.block_size / self.logical_sector_size) as usize
    }

    fn block_mut(&mut self, b: u64) -> &mut Block {
        let bs = self.block_size as usize;
        let spb = self.sectors_per_block();
        self.blocks.entry(b).or_insert_with(|| Block {
            data: vec![0xCC; bs],
            present: vec![false; spb],
            zero: false,
        })
    }

    /// Write `data` at virtual `offset`; marks exactly the logical sectors touched as present
    /// (partial sectors keep the rest of the sector as zeros, which the model must mirror: use
    /// sector-aligned writes for differencing disks unless that is what you test).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        assert!(offset + data.len() as u64 <= self.virtual_size);
        let bs = u64::from(self.block_size);
        let ls = u64::from(self.logical_sector_size);
        let mut pos = offset;
        let mut done = 0usize;
        while done < data.len() {
            let b = pos / bs;
            let within = pos % bs;
            let n = ((bs - within) as usize).min(data.len() - done);
            let blk = self.block_mut(b);
            if blk.zero {
                blk.zero = false;
                blk.data.fill(0);
                blk.present.fill(true);
            }
            let first_s = (within / ls) as usize;
            let last_s = ((within + n as u64).div_ceil(ls)) as usize;
            for s in first_s..last_s {
                if !blk.present[s] {
                    let a = s * ls as usize;
                    blk.data[a..a + ls as usize].fill(0);
                    blk.present[s] = true;
                }
            }
            blk.data[within as usize..within as usize + n].copy_from_slice(&data[done..done + n]);
            done += n;
            pos += n as u64;
        }
    }

    /// Make block `b` a ZERO block.
    pub fn zero_block(&mut self, b: u64) {
        let blk = self.block_mut(b);
        blk.zero = true;
        blk.present.fill(false);
    }

    /// Build the file.
    pub fn build(&self) -> Built {
        let bs = u64::from(self.block_size);
        let ls = u64::from(self.logical_sector_size);
        let cr = (1u64 << 23) * ls / bs;
        let pb = self.virtual_size.div_ceil(bs);
        let sb = pb.div_ceil(cr);
        let diff = self.kind == Kind::Differencing;
        let entries = if diff {
            sb * (cr + 1)
        } else {
            pb + (pb.max(1) - 1) / cr
        };
        let bat_length = (entries * 8).div_ceil(MIB).max(1) * MIB;
        let mut layout = Layout {
            log_offset: MIB,
            log_length: MIB,
            metadata_offset: 2 * MIB,
            bat_offset: 3 * MIB,
            bat_length,
            chunk_ratio: cr,
            ..Layout::default()
        };
        let mut next = 3 * MIB + bat_length;
        let mut bat = vec![0u64; entries as usize];
        let mut payloads: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut chunk_bits: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let spb = self.sectors_per_block() as u64;
        for b in 0..pb {
            let idx = (b + b / cr) as usize;
            let blk = self.blocks.get(&b);
            let state = match (self.kind, blk) {
                (Kind::Fixed, _) => 6,
                (_, Some(k)) if k.zero => 2,
                (Kind::Dynamic, Some(k)) if k.present.iter().any(|&p| p) => 6,
                (Kind::Differencing, Some(k)) if k.present.iter().all(|&p| p) => 6,
                (Kind::Differencing, Some(k)) if k.present.iter().any(|&p| p) => 7,
                _ => 0,
            };
            if state == 6 || state == 7 {
                let data = match blk {
                    Some(k) if self.kind == Kind::Differencing => k.data.clone(),
                    Some(k) => {
                        let mut d = k.data.clone();
                        for (s, &p) in k.present.iter().enumerate() {
                            if !p {
                                d[s * ls as usize..(s + 1) * ls as usize].fill(0);
                            }
                        }
                        d
                    }
                    None => vec![0; bs as usize],
                };
                layout.block_offsets.insert(b, next);
                bat[idx] = next | state;
                payloads.push((next, data));
                next += bs;
            } else {
                bat[idx] = state;
            }
            if state == 7 {
                let k = blk.expect("block");
                let bits = chunk_bits
                    .entry(b / cr)
                    .or_insert_with(|| vec![0u8; MIB as usize]);
                let first = (b % cr) * spb;
                for (s, &p) in k.present.iter().enumerate() {
                    if p {
                        let bit = first + s as u64;
                        bits[(bit / 8) as usize] |= 1 << (bit % 8);
                    }
                }
            }
        }
        for (c, bits) in &chunk_bits {
            let idx = (c * (cr + 1) + cr) as usize;
            bat[idx] = next | 6;
            layout.sb_offsets.insert(*c, next);
            payloads.push((next, bits.clone()));
            next += MIB;
        }
        let mut f = vec![0u8; next as usize];
        // File identifier.
        put(&mut f, 0, b"vhdxfile");
        put(&mut f, 8, &u16le(&self.creator));
        // Headers.
        for (i, off) in [0x10000u64, 0x20000].iter().enumerate() {
            let mut h = Vec::new();
            h.extend_from_slice(b"head");
            h.extend_from_slice(&[0; 4]);
            h.extend_from_slice(&(i as u64 + 1).to_le_bytes());
            h.extend_from_slice(&self.file_write_guid.to_bytes_le());
            h.extend_from_slice(&self.data_write_guid.to_bytes_le());
            h.extend_from_slice(&[0; 16]);
            h.extend_from_slice(&0u16.to_le_bytes());
            h.extend_from_slice(&1u16.to_le_bytes());
            h.extend_from_slice(&(MIB as u32).to_le_bytes());
            h.extend_from_slice(&MIB.to_le_bytes());
            put(&mut f, *off, &h);
            crc_into(&mut f, *off, 4096, 4);
        }
        // Region tables.
        for off in [0x30000u64, 0x40000] {
            let mut r = Vec::new();
            r.extend_from_slice(b"regi");
            r.extend_from_slice(&[0; 4]);
            r.extend_from_slice(&2u32.to_le_bytes());
            r.extend_from_slice(&[0; 4]);
            for (guid, o, l) in [
                ("2DC27766-F623-4200-9D64-115E9BFD4A08", 3 * MIB, bat_length),
                ("8B7CA206-4790-4B9A-B8FE-575F050F886E", 2 * MIB, MIB),
            ] {
                r.extend_from_slice(&g(guid));
                r.extend_from_slice(&o.to_le_bytes());
                r.extend_from_slice(&(l as u32).to_le_bytes());
                r.extend_from_slice(&1u32.to_le_bytes());
            }
            put(&mut f, off, &r);
            crc_into(&mut f, off, 65536, 4);
        }
        // Metadata.
        let mut items: Vec<(&str, u32, Vec<u8>)> = Vec::new();
        let fp_flags: u32 = match self.kind {
            Kind::Fixed => 1,
            Kind::Dynamic => 0,
            Kind::Differencing => 2,
        };
        let mut fp = self.block_size.to_le_bytes().to_vec();
        fp.extend_from_slice(&fp_flags.to_le_bytes());
        items.push(("CAA16737-FA36-4D43-B3B6-33F0AA44E76B", 4, fp));
        items.push((
            "2FA54224-CD1B-4876-B211-5DBED83BF4B8",
            6,
            self.virtual_size.to_le_bytes().to_vec(),
        ));
        items.push((
            "8141BF1D-A96F-4709-BA47-F233A8FAAB5F",
            6,
            self.logical_sector_size.to_le_bytes().to_vec(),
        ));
        items.push((
            "CDA348C7-445D-4471-9CC9-E9885251C556",
            6,
            self.physical_sector_size.to_le_bytes().to_vec(),
        ));
        items.push((
            "BECA12AB-B2E6-4523-93EF-C309E000C746",
            6,
            self.virtual_disk_id.to_bytes_le().to_vec(),
        ));
        if diff {
            items.push((
                "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C",
                4,
                self.locator_item(),
            ));
        }
        let mo = 2 * MIB;
        put(&mut f, mo, b"metadata");
        put(&mut f, mo + 10, &(items.len() as u16).to_le_bytes());
        let mut item_off = 0x10000u64;
        for (i, (guid, flags, data)) in items.iter().enumerate() {
            let e = mo + 32 + 32 * i as u64;
            put(&mut f, e, &g(guid));
            put(&mut f, e + 16, &(item_off as u32).to_le_bytes());
            put(&mut f, e + 20, &(data.len() as u32).to_le_bytes());
            put(&mut f, e + 24, &flags.to_le_bytes());
            put(&mut f, mo + item_off, data);
            if guid.starts_with("A8D35F2D") {
                layout.locator_offset = Some(mo + item_off);
            }
            item_off += data.len() as u64;
        }
        // BAT and blocks.
        for (i, e) in bat.iter().enumerate() {
            put(&mut f, 3 * MIB + 8 * i as u64, &e.to_le_bytes());
        }
        for (off, data) in payloads {
            put(&mut f, off, &data);
        }
        Built { bytes: f, layout }
    }

    fn locator_item(&self) -> Vec<u8> {
        let brace = |u: &Uuid| format!("{{{u}}}");
        let mut pairs: Vec<(&str, String)> = vec![("parent_linkage", brace(&self.parent_linkage))];
        if let Some(p) = &self.absolute_win32_path {
            pairs.push(("absolute_win32_path", p.clone()));
        }
        if let Some(p) = &self.relative_path {
            pairs.push(("relative_path", p.clone()));
        }
        if let Some(p) = &self.volume_path {
            pairs.push(("volume_path", p.clone()));
        }
        if let Some(u) = &self.parent_linkage2 {
            pairs.push(("parent_linkage2", brace(u)));
        }
        let mut item = g("B04AEFB7-D19E-4A81-B789-25B8E9445913").to_vec();
        item.extend_from_slice(&0u16.to_le_bytes());
        item.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
        let mut data = Vec::new();
        let base = 20 + 12 * pairs.len();
        for (k, v) in &pairs {
            let (kb, vb) = (u16le(k), u16le(v));
            let ko = base + data.len();
            data.extend_from_slice(&kb);
            let vo = base + data.len();
            data.extend_from_slice(&vb);
            item.extend_from_slice(&(ko as u32).to_le_bytes());
            item.extend_from_slice(&(vo as u32).to_le_bytes());
            item.extend_from_slice(&(kb.len() as u16).to_le_bytes());
            item.extend_from_slice(&(vb.len() as u16).to_le_bytes());
        }
        item.extend_from_slice(&data);
        item
    }
}

/// How to write an unapplied log entry, and how to break it.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// LogGuid written into the headers and the entry.
    pub log_guid: Uuid,
    /// Entry sequence number.
    pub sequence_number: u64,
    /// Place the entry so it wraps from the end of the ring to its start.
    pub wrap: bool,
    /// Corrupt the checksum.
    pub bad_crc: bool,
    /// Write a different LogGuid into the entry than into the headers.
    pub wrong_guid: bool,
    /// Zero the last sector of the entry after writing it (torn write).
    pub torn: bool,
    /// Override FlushedFileOffset.
    pub flushed_file_offset: Option<u64>,
    /// Claim an EntryLength of this many bytes (a log that lies about its length).
    pub entry_length_override: Option<u32>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            log_guid: Uuid::from_u128(0xabcd_ef01_2345_6789_abcd_ef01_2345_6789),
            sequence_number: 10,
            wrap: false,
            bad_crc: false,
            wrong_guid: false,
            torn: false,
            flushed_file_offset: None,
            entry_length_override: None,
        }
    }
}

impl Built {
    /// Move the current contents of the 4 KiB sectors at `sectors` and the zeroing of `zeros`
    /// (offset, length; 4 KiB multiples) into one log entry that is NOT applied: the file's
    /// bytes there are overwritten with 0xEE, and both headers get a non-zero LogGuid. A reader
    /// that replays the log sees the original contents.
    pub fn make_dirty(&mut self, sectors: &[u64], zeros: &[(u64, u64)], o: &LogOptions) {
        let seq = o.sequence_number;
        let n = sectors.len() + zeros.len();
        let desc_sectors = (64 + 32 * n).div_ceil(4096);
        let entry_len = (desc_sectors + sectors.len()) * 4096;
        let mut e = vec![0u8; entry_len];
        let guid = if o.wrong_guid {
            Uuid::from_u128(0x5555)
        } else {
            o.log_guid
        };
        let pos: u64 = if o.wrap {
            self.layout.log_length - 4096
        } else {
            0
        };
        e[0..4].copy_from_slice(b"loge");
        let el = o.entry_length_override.unwrap_or(entry_len as u32);
        e[8..12].copy_from_slice(&el.to_le_bytes());
        e[12..16].copy_from_slice(&(pos as u32).to_le_bytes());
        e[16..24].copy_from_slice(&seq.to_le_bytes());
        e[24..28].copy_from_slice(&(n as u32).to_le_bytes());
        e[32..48].copy_from_slice(&guid.to_bytes_le());
        let len = self.bytes.len() as u64;
        e[48..56].copy_from_slice(&o.flushed_file_offset.unwrap_or(len).to_le_bytes());
        e[56..64].copy_from_slice(&len.to_le_bytes());
        for (i, &s) in sectors.iter().enumerate() {
            let d = 64 + 32 * i;
            let old = self.bytes[s as usize..s as usize + 4096].to_vec();
            e[d..d + 4].copy_from_slice(b"desc");
            e[d + 4..d + 8].copy_from_slice(&old[4092..4096]);
            e[d + 8..d + 16].copy_from_slice(&old[0..8]);
            e[d + 16..d + 24].copy_from_slice(&s.to_le_bytes());
            e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
            let ds = (desc_sectors + i) * 4096;
            e[ds..ds + 4].copy_from_slice(b"data");
            e[ds + 4..ds + 8].copy_from_slice(&((seq >> 32) as u32).to_le_bytes());
            e[ds + 8..ds + 4092].copy_from_slice(&old[8..4092]);
            e[ds + 4092..ds + 4096].copy_from_slice(&(seq as u32).to_le_bytes());
            self.bytes[s as usize..s as usize + 4096].fill(0xEE);
        }
        for (j, &(off, l)) in zeros.iter().enumerate() {
            let d = 64 + 32 * (sectors.len() + j);
            e[d..d + 4].copy_from_slice(b"zero");
            e[d + 8..d + 16].copy_from_slice(&l.to_le_bytes());
            e[d + 16..d + 24].copy_from_slice(&off.to_le_bytes());
            e[d + 24..d + 32].copy_from_slice(&seq.to_le_bytes());
            self.bytes[off as usize..(off + l) as usize].fill(0xEE);
        }
        let c = crc32c::crc32c(&e);
        let c = if o.bad_crc { c ^ 1 } else { c };
        e[4..8].copy_from_slice(&c.to_le_bytes());
        if o.torn {
            let l = e.len();
            e[l - 4096..].fill(0);
        }
        let ring = self.layout.log_offset as usize;
        let rl = self.layout.log_length as usize;
        for (i, b) in e.iter().enumerate() {
            self.bytes[ring + (pos as usize + i) % rl] = *b;
        }
        self.set_log_guid(o.log_guid);
    }

    /// Rewrite both headers with `guid` as LogGuid (checksums recomputed).
    pub fn set_log_guid(&mut self, guid: Uuid) {
        for off in [0x10000u64, 0x20000] {
            put(&mut self.bytes, off + 48, &guid.to_bytes_le());
            crc_into(&mut self.bytes, off, 4096, 4);
        }
    }

    /// Recompute a header's checksum after editing it (slot 0 or 1).
    pub fn fix_header_crc(&mut self, slot: usize) {
        crc_into(&mut self.bytes, [0x10000, 0x20000][slot], 4096, 4);
    }

    /// Recompute a region table's checksum after editing it (slot 0 or 1).
    pub fn fix_region_crc(&mut self, slot: usize) {
        crc_into(&mut self.bytes, [0x30000, 0x40000][slot], 65536, 4);
    }
}
