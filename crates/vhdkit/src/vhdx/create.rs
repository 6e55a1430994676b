//! Laying out a new VHDX file the way Hyper-V does (FORMAT.md B.2-B.8, and the Windows files
//! measured in `testdata-real/SOURCES.md`).
//!
//! This module computes every non-zero byte of a new disk ([`build`]) and writes it to a
//! [`Sink`] ([`write_new`]). It is production code, separate from the test writer in
//! `vhdkit-testkit`, so tests can cross-check the two.
//!
//! Layout (what Windows 10 / Server 2019 write):
//!
//! | offset | content |
//! |---|---|
//! | 0 | file identifier, creator `vhdkit <version>` |
//! | 64 KiB, 128 KiB | headers: sequence numbers 1 and 2 (header 2 current), the same fresh FileWriteGuid and DataWriteGuid, LogGuid zero, log 1 MiB at 1 MiB |
//! | 192 KiB, 256 KiB | two identical region tables: BAT then metadata, both Required |
//! | 1 MiB | log (1 MiB, zeros) |
//! | 2 MiB | metadata region (1 MiB): table, then items from +64 KiB in Windows' order and flags |
//! | 3 MiB | BAT, sized for its entries and rounded up to 1 MiB |
//! | after the BAT | fixed disks: every payload block, in block order (a hole: zeros) |
//!
//! BAT entry counts (B.8): fixed and dynamic `PB + SB` (MS-VHDX), differencing `SB * (CR + 1)`.
//! Fixed disks set LeaveBlockAllocated and mark every payload block FULLY_PRESENT; sector
//! bitmap entries stay NOT_PRESENT. The parent locator carries `parent_linkage` (the parent's
//! DataWriteGuid, braced lower case), `absolute_win32_path` and `relative_path`, in the order
//! Windows writes them; `volume_path` is left out (unknown off Windows).

use uuid::Uuid;

use super::bat::chunk_ratio;
use binrw::BinWrite;

use super::format::{
    self, FileIdentifier, FileParameters, MetadataTableEntry, MetadataTableHeader,
    RegionTableEntry, RegionTableHeader, BAT_REGION_GUID, FILE_PARAMETERS_GUID, FP_HAS_PARENT,
    FP_LEAVE_BLOCK_ALLOCATED, HEADER_OFFSETS, LOGICAL_SECTOR_SIZE_GUID, MAX_BLOCK_SIZE,
    MAX_VIRTUAL_DISK_SIZE, METADATA_REGION_GUID, METADATA_TABLE_SIZE, META_IS_REQUIRED,
    META_IS_VIRTUAL_DISK, MIB, MIN_BLOCK_SIZE, PARENT_LOCATOR_GUID, PAYLOAD_BLOCK_FULLY_PRESENT,
    PHYSICAL_SECTOR_SIZE_GUID, REGION_REQUIRED, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE,
    VIRTUAL_DISK_ID_GUID, VIRTUAL_DISK_SIZE_GUID,
};
use super::header::ParsedHeader;
use super::locator::{
    encode_locator, LocatorPair, KEY_ABSOLUTE_WIN32_PATH, KEY_PARENT_LINKAGE, KEY_RELATIVE_PATH,
};
use super::update::encode_header;
use crate::error::{Error, Result};
use crate::guid::to_vhdx_bytes;
use crate::newdisk::{write_built, Built};
use crate::txn::Sink;
use crate::util::utf16le;

/// Default block size of a dynamic VHDX: 32 MiB (Hyper-V).
pub const DEFAULT_DYNAMIC_BLOCK_BYTES: u32 = 32 << 20;
/// Default block size of a differencing VHDX: 2 MiB (Hyper-V checkpoints).
pub const DEFAULT_DIFFERENCING_BLOCK_BYTES: u32 = 2 << 20;
/// Default block size of a fixed VHDX: 2 MiB (Windows `fixed.vhdx`).
pub const DEFAULT_FIXED_BLOCK_BYTES: u32 = 2 << 20;
/// Default logical sector size (Windows "512e").
pub const DEFAULT_LOGICAL_SECTOR: u32 = 512;
/// Physical sector size written (Windows "512e").
pub const DEFAULT_PHYSICAL_SECTOR: u32 = 4096;
/// Log: 1 MiB at 1 MiB.
pub const LOG_OFFSET: u64 = MIB;
/// See [`LOG_OFFSET`].
pub const LOG_LENGTH: u32 = 1 << 20;
/// Metadata region: 1 MiB at 2 MiB.
pub const METADATA_OFFSET: u64 = 2 * MIB;
/// See [`METADATA_OFFSET`].
pub const METADATA_LENGTH: u64 = MIB;
/// BAT region offset.
pub const BAT_OFFSET: u64 = 3 * MIB;
/// Room the fixed-size metadata items (file parameters, sizes, disk id: 40 bytes) need after
/// the table, so a parent locator item never crowds them out of the region.
const FIXED_ITEMS_ROOM: u64 = 64;

/// The kind of VHDX to create.
pub type NewKind = crate::newdisk::NewKind<NewParent>;

/// What a new differencing VHDX records about its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewParent {
    /// The parent's current DataWriteGuid (`parent_linkage`).
    pub linkage: Uuid,
    /// `absolute_win32_path`.
    pub absolute_path: String,
    /// `relative_path` (`.\name.vhdx`); `None` leaves the key out.
    pub relative_path: Option<String>,
}

/// Everything that defines a new VHDX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVhdx {
    /// Type (and parent).
    pub kind: NewKind,
    /// Virtual size: a non-zero multiple of the logical sector size, at most 64 TiB.
    pub virtual_size: u64,
    /// Block size: a power of two from 1 MiB to 256 MiB.
    pub block_size: u32,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// Virtual disk id item (a child copies its parent's).
    pub virtual_disk_id: Uuid,
    /// Header DataWriteGuid.
    pub data_write_guid: Uuid,
    /// Header FileWriteGuid.
    pub file_write_guid: Uuid,
}

impl NewVhdx {
    /// A new disk with fresh GUIDs and Windows' sector sizes (512 logical, 4096 physical).
    pub fn new(kind: NewKind, virtual_size: u64, block_size: u32) -> NewVhdx {
        NewVhdx {
            kind,
            virtual_size,
            block_size,
            logical_sector_size: DEFAULT_LOGICAL_SECTOR,
            physical_sector_size: DEFAULT_PHYSICAL_SECTOR,
            virtual_disk_id: Uuid::new_v4(),
            data_write_guid: Uuid::new_v4(),
            file_write_guid: Uuid::new_v4(),
        }
    }
}

/// The bytes of a new file: its length and the non-zero ranges to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// File length.
    pub file_len: u64,
    /// BAT region length.
    pub bat_length: u64,
    /// BAT entries the disk uses.
    pub bat_entries: u64,
    /// Writes (offset, bytes).
    pub writes: Vec<(u64, Vec<u8>)>,
    /// Fixed disks: the BAT, generated and written through a bounded buffer.
    pub fixed_bat: Option<FixedBat>,
}

/// The BAT of a fixed disk: every payload block FULLY_PRESENT, in order from `data_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedBat {
    /// Entries written (payload and sector bitmap slots).
    pub entries: u64,
    /// Payload blocks.
    pub payload_blocks: u64,
    /// Chunk ratio.
    pub chunk_ratio: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// File offset of the first payload block.
    pub data_start: u64,
}

impl FixedBat {
    /// Entry `i`: a sector bitmap slot is 0 (NOT_PRESENT), a payload slot points at its block.
    fn entry(&self, i: u64) -> u64 {
        let (chunk, r) = (i / (self.chunk_ratio + 1), i % (self.chunk_ratio + 1));
        if r == self.chunk_ratio {
            return 0;
        }
        let b = chunk * self.chunk_ratio + r;
        if b >= self.payload_blocks {
            return 0;
        }
        (self.data_start + b * self.block_size) | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT)
    }

    /// Write the table at `BAT_OFFSET`, 1 MiB at a time.
    fn write<S: Sink + ?Sized>(&self, sink: &S) -> std::io::Result<()> {
        const PER_CHUNK: u64 = crate::limits::FILL_CHUNK / format::BAT_ENTRY_SIZE;
        let mut buf = Vec::with_capacity(crate::limits::FILL_CHUNK as usize);
        let mut i = 0u64;
        while i < self.entries {
            let n = (self.entries - i).min(PER_CHUNK);
            buf.clear();
            for k in i..i + n {
                buf.extend_from_slice(&self.entry(k).to_le_bytes());
            }
            sink.write_all_at(&buf, BAT_OFFSET + i * format::BAT_ENTRY_SIZE)?;
            i += n;
        }
        Ok(())
    }
}

/// Hyper-V's block size for a new disk of `kind`.
pub fn default_block_bytes(kind: &NewKind) -> u32 {
    match kind {
        NewKind::Fixed => DEFAULT_FIXED_BLOCK_BYTES,
        NewKind::Dynamic => DEFAULT_DYNAMIC_BLOCK_BYTES,
        NewKind::Differencing(_) => DEFAULT_DIFFERENCING_BLOCK_BYTES,
    }
}

/// The creator string of the file identifier.
pub fn creator() -> String {
    format!("vhdkit {}", env!("CARGO_PKG_VERSION"))
}

/// The bytes of an on-disk structure, as [`format`] lays it out.
fn bytes_of<T>(v: &T) -> Result<Vec<u8>>
where
    T: for<'a> BinWrite<Args<'a> = ()>,
{
    let mut c = std::io::Cursor::new(Vec::new());
    v.write_le(&mut c)
        .map_err(|e| Error::InvalidArgument(format!("serializing a vhdx structure: {e}")))?;
    Ok(c.into_inner())
}

fn check(p: &NewVhdx) -> Result<()> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    for (what, v) in [
        ("logical", p.logical_sector_size),
        ("physical", p.physical_sector_size),
    ] {
        if v != 512 && v != 4096 {
            return bad(format!("{what} sector size {v}: VHDX allows 512 or 4096"));
        }
    }
    let ls = u64::from(p.logical_sector_size);
    if p.virtual_size == 0 || p.virtual_size % ls != 0 {
        return bad(format!(
            "virtual size {} is not a non-zero multiple of the {ls}-byte logical sector",
            p.virtual_size
        ));
    }
    if p.virtual_size > MAX_VIRTUAL_DISK_SIZE {
        return bad(format!(
            "virtual size {} is above the VHDX maximum of 64 TiB",
            p.virtual_size
        ));
    }
    let bs = p.block_size;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) || !bs.is_power_of_two() {
        return bad(format!(
            "block size {bs} is not a power of two between 1 MiB and 256 MiB (VHDX)"
        ));
    }
    Ok(())
}

/// The parent locator item (B.7): keys `parent_linkage`, `absolute_win32_path`,
/// `relative_path`, through the one locator encoder (keys and values back to back after the
/// entry table, as Windows writes them).
pub fn locator_item(np: &NewParent) -> Result<Vec<u8>> {
    let linkage = crate::util::braced(&np.linkage);
    let mut pairs = vec![
        (KEY_PARENT_LINKAGE, linkage.as_str()),
        (KEY_ABSOLUTE_WIN32_PATH, np.absolute_path.as_str()),
    ];
    if let Some(r) = &np.relative_path {
        pairs.push((KEY_RELATIVE_PATH, r.as_str()));
    }
    if pairs.iter().any(|(_, v)| v.is_empty()) {
        return Err(Error::InvalidArgument(
            "an empty parent locator value".into(),
        ));
    }
    let pairs: Vec<LocatorPair> = pairs
        .into_iter()
        .map(|(k, v)| LocatorPair {
            key: k.to_string(),
            value: utf16le(v),
        })
        .collect();
    let too_long = || Error::InvalidArgument("a parent locator path is too long".into());
    // The encoder refuses only what does not fit its length fields here: a path too long.
    let item = encode_locator(&pairs).map_err(|_| too_long())?;
    if item.len() as u64 > METADATA_LENGTH - METADATA_TABLE_SIZE as u64 - FIXED_ITEMS_ROOM {
        return Err(too_long());
    }
    Ok(item)
}

/// The metadata region's bytes (table and items), up to the end of the last item.
fn metadata_region(p: &NewVhdx) -> Result<Vec<u8>> {
    let too_large = || Error::InvalidArgument("metadata too large".into());
    let mut region = Vec::new();
    let mut data = Vec::new();
    let items = metadata_items(p)?;
    let header = MetadataTableHeader {
        signature: format::METADATA_TABLE_SIGNATURE,
        reserved: 0,
        entry_count: u16::try_from(items.len()).map_err(|_| too_large())?,
        reserved2: [0; 20],
    };
    region.extend_from_slice(&bytes_of(&header)?);
    for (id, flags, item) in &items {
        let entry = MetadataTableEntry {
            item_id: *id,
            offset: u32::try_from(METADATA_TABLE_SIZE + data.len()).map_err(|_| too_large())?,
            length: u32::try_from(item.len()).map_err(|_| too_large())?,
            flags: *flags,
            reserved: 0,
        };
        region.extend_from_slice(&bytes_of(&entry)?);
        data.extend_from_slice(item);
    }
    // Items from 64 KiB on, in Windows' order.
    region.resize(METADATA_TABLE_SIZE, 0);
    region.extend_from_slice(&data);
    Ok(region)
}

/// One metadata item: its id, its flags and its bytes.
type Item = ([u8; 16], u32, Vec<u8>);

/// The metadata items of a new disk, in the order Windows writes them.
fn metadata_items(p: &NewVhdx) -> Result<Vec<Item>> {
    let (fp_flags, locator) = match &p.kind {
        NewKind::Fixed => (FP_LEAVE_BLOCK_ALLOCATED, None),
        NewKind::Dynamic => (0, None),
        NewKind::Differencing(np) => (FP_HAS_PARENT, Some(locator_item(np)?)),
    };
    let fp = bytes_of(&FileParameters {
        block_size: p.block_size,
        flags: fp_flags,
    })?;
    let vd = META_IS_VIRTUAL_DISK | META_IS_REQUIRED;
    let mut items: Vec<Item> = vec![
        (FILE_PARAMETERS_GUID, META_IS_REQUIRED, fp),
        (
            VIRTUAL_DISK_SIZE_GUID,
            vd,
            p.virtual_size.to_le_bytes().to_vec(),
        ),
        (
            LOGICAL_SECTOR_SIZE_GUID,
            vd,
            p.logical_sector_size.to_le_bytes().to_vec(),
        ),
        (
            PHYSICAL_SECTOR_SIZE_GUID,
            vd,
            p.physical_sector_size.to_le_bytes().to_vec(),
        ),
        (
            VIRTUAL_DISK_ID_GUID,
            vd,
            to_vhdx_bytes(&p.virtual_disk_id).to_vec(),
        ),
    ];
    if let Some(l) = locator {
        items.push((PARENT_LOCATOR_GUID, META_IS_REQUIRED, l));
    }
    Ok(items)
}

/// One region table (both copies are identical): BAT then metadata, both required.
fn region_table(bat_length: u64) -> Result<Vec<u8>> {
    let bat_len =
        u32::try_from(bat_length).map_err(|_| Error::InvalidArgument("BAT too large".into()))?;
    let entries = [
        (BAT_REGION_GUID, BAT_OFFSET, bat_len),
        (
            METADATA_REGION_GUID,
            METADATA_OFFSET,
            METADATA_LENGTH as u32,
        ),
    ];
    let mut header = RegionTableHeader {
        signature: format::REGION_TABLE_SIGNATURE,
        checksum: 0,
        entry_count: entries.len() as u32,
        reserved: 0,
    };
    let mut t = bytes_of(&header)?;
    for (guid, file_offset, length) in entries {
        t.extend_from_slice(&bytes_of(&RegionTableEntry {
            guid,
            file_offset,
            length,
            flags: REGION_REQUIRED,
        })?);
    }
    t.resize(REGION_TABLE_SIZE, 0);
    // The checksum covers the whole table with its own field zero, as it is now.
    header.checksum = crc32c::crc32c(&t);
    let head = bytes_of(&header)?;
    if let Some(dst) = t.get_mut(..head.len()) {
        dst.copy_from_slice(&head);
    }
    Ok(t)
}

/// The file identifier: signature and creator (UTF-16, cut to leave a terminating NUL).
fn file_identifier() -> Result<Vec<u8>> {
    let mut id = FileIdentifier {
        signature: format::FILE_IDENTIFIER_SIGNATURE,
        creator: [0; 256],
    };
    let room = id.creator.len() - 1;
    for (slot, unit) in id
        .creator
        .iter_mut()
        .zip(creator().encode_utf16().take(room))
    {
        *slot = unit;
    }
    bytes_of(&id)
}

/// Write a new disk into an empty `sink` and make it durable. Fixed disks' payload is a hole
/// (zeros) made by sizing the file.
pub fn write_new<S: Sink + ?Sized>(sink: &S, p: &NewVhdx) -> Result<Layout> {
    write_built(sink, build(p)?)
}

/// Compute every non-zero byte of a new disk.
pub fn build(p: &NewVhdx) -> Result<Layout> {
    check(p)?;
    let too_big = || Error::InvalidArgument("the disk layout overflows".into());
    let bs = u64::from(p.block_size);
    let cr = chunk_ratio(p.logical_sector_size, p.block_size);
    let pb = p.virtual_size.div_ceil(bs);
    let sb = pb.div_ceil(cr);
    let entries = match p.kind {
        NewKind::Differencing(_) => sb.checked_mul(cr + 1).ok_or_else(too_big)?,
        _ => pb + sb,
    };
    let differencing = matches!(p.kind, NewKind::Differencing(_));
    crate::Limits::default().check_new_table(
        super::bat::required_entries(pb, cr, differencing)
            .max(entries)
            .saturating_mul(format::BAT_ENTRY_SIZE),
    )?;
    let bat_length = entries
        .checked_mul(format::BAT_ENTRY_SIZE)
        .and_then(|b| b.checked_next_multiple_of(MIB))
        .ok_or_else(too_big)?
        .max(MIB);
    let data_start = BAT_OFFSET + bat_length;
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    // File identifier.
    writes.push((0, file_identifier()?));
    // Headers 1 and 2 (2 current), identical but for the sequence number.
    for (i, &off) in HEADER_OFFSETS.iter().enumerate() {
        let h = ParsedHeader {
            sequence_number: i as u64 + 1,
            file_write_guid: p.file_write_guid,
            data_write_guid: p.data_write_guid,
            log_guid: Uuid::nil(),
            log_version: 0,
            log_length: LOG_LENGTH,
            log_offset: LOG_OFFSET,
        };
        writes.push((off, encode_header(&h)));
    }
    let rt = region_table(bat_length)?;
    for &off in &REGION_TABLE_OFFSETS {
        writes.push((off, rt.clone()));
    }
    writes.push((METADATA_OFFSET, metadata_region(p)?));
    let fixed_bat = (p.kind == NewKind::Fixed).then_some(FixedBat {
        entries,
        payload_blocks: pb,
        chunk_ratio: cr,
        block_size: bs,
        data_start,
    });
    let file_len = if fixed_bat.is_some() {
        pb.checked_mul(bs)
            .and_then(|d| d.checked_add(data_start))
            .ok_or_else(too_big)?
    } else {
        data_start
    };
    Ok(Layout {
        file_len,
        bat_length,
        bat_entries: entries,
        writes,
        fixed_bat,
    })
}

impl Built for Layout {
    const FORMAT: &'static str = "vhdx";
    fn bytes(&self) -> (u64, &[(u64, Vec<u8>)]) {
        (self.file_len, &self.writes)
    }
    /// A fixed disk's BAT is streamed (too large for `writes`); the others' is in `writes`.
    fn write_streamed<S: Sink + ?Sized>(&self, sink: &S) -> Result<()> {
        self.fixed_bat.as_ref().map_or(Ok(()), |bat| {
            bat.write(sink)
                .map_err(|e| Error::io("writing the new vhdx's BAT", e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Disk, OpenOptions};

    #[test]
    fn streamed_fixed_bat_matches_the_payload_layout() {
        use crate::vhdx::bat::payload_index;
        let fb = FixedBat {
            entries: 10_000,
            payload_blocks: 9_000,
            chunk_ratio: 16,
            block_size: 1 << 20,
            data_start: 4 << 20,
        };
        let mut want = vec![0u64; 10_000];
        for b in 0..9_000u64 {
            want[payload_index(b, 16) as usize] =
                ((4 << 20) + b * (1 << 20)) | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT);
        }
        let got: Vec<u64> = (0..10_000).map(|i| fb.entry(i)).collect();
        assert!(got == want);
    }

    #[test]
    fn tables_readers_refuse_are_refused_before_anything() {
        let mut p = NewVhdx {
            kind: NewKind::Dynamic,
            virtual_size: 64 << 40,
            block_size: 1 << 20,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            file_write_guid: Uuid::nil(),
            data_write_guid: Uuid::nil(),
            virtual_disk_id: Uuid::nil(),
        };
        assert!(matches!(
            build(&p),
            Err(Error::InvalidOption {
                option: "block_size",
                ..
            })
        ));
        p.block_size = 32 << 20;
        assert!(build(&p).is_ok());
    }

    fn open(p: &NewVhdx) -> Disk {
        let f =
            crate::txn::fault::FaultyFile::new(Vec::new(), crate::txn::fault::FaultPlan::new(None));
        write_new(&f, p).unwrap();
        Disk::from_source(Box::new(f.contents_all_written()), &OpenOptions::default()).unwrap()
    }

    #[test]
    fn windows_layout() {
        let p = NewVhdx::new(NewKind::Dynamic, 10 << 20, DEFAULT_DYNAMIC_BLOCK_BYTES);
        let d = open(&p);
        assert!(d.warnings().is_empty(), "{:?}", d.warnings());
        let crate::disk::FormatInfo::Vhdx(v) = d.info().details else {
            panic!()
        };
        let offs: Vec<(u64, u32, u32)> = v
            .metadata_items
            .iter()
            .map(|m| (m.file_offset, m.length, m.flags))
            .collect();
        // Windows dynamic.vhdx: the same offsets, lengths and flags.
        assert_eq!(
            offs,
            vec![
                (0x210000, 8, 4),
                (0x210008, 8, 6),
                (0x210010, 4, 6),
                (0x210014, 4, 6),
                (0x210018, 16, 6)
            ]
        );
        assert!(v
            .region_tables
            .iter()
            .all(|t| t.valid && t.entries.len() == 2 && t.entries.iter().all(|e| e.required)));
        assert_eq!(v.region_tables[0].entries[0].offset, BAT_OFFSET);
        assert_eq!(v.headers[1].sequence_number, Some(2));
        assert!(v.headers[1].current);
        assert!(v.creator.starts_with("vhdkit "));
        assert_eq!(d.info().file_size, 4 * MIB);
    }

    #[test]
    fn fixed_blocks_follow_the_bat() {
        let p = NewVhdx::new(NewKind::Fixed, 10 << 20, DEFAULT_FIXED_BLOCK_BYTES);
        let d = open(&p);
        assert_eq!(d.info().file_size, 14 * MIB);
        assert_eq!(d.disk_type(), crate::DiskType::Fixed);
        assert_eq!(
            d.map(3 << 20, 1).unwrap().0,
            crate::Extent::Data {
                file_offset: 7 * MIB
            }
        );
    }

    #[test]
    fn locator_like_windows() {
        let np = NewParent {
            linkage: Uuid::from_u128(0xff34003b_11ed_4cf8_a166_b2be05e20b80),
            absolute_path: r"C:\x\p.avhdx".into(),
            relative_path: Some(r".\p.avhdx".into()),
        };
        let item = locator_item(&np).unwrap();
        let l = super::super::locator::parse_locator(&item, 0).unwrap();
        let keys: Vec<&str> = l.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["parent_linkage", "absolute_win32_path", "relative_path"]
        );
        assert_eq!(l.parent_linkage, np.linkage);
        assert_eq!(
            l.entries[0].value.as_deref(),
            Some("{ff34003b-11ed-4cf8-a166-b2be05e20b80}")
        );
        // First key right after the entry table, as Windows writes it.
        assert_eq!(u32::from_le_bytes(item[20..24].try_into().unwrap()), 56);
    }

    /// The bytes of a differencing VHDX with fixed GUIDs, pinned: building the locator item
    /// through the one encoder must not change a byte.
    #[test]
    fn differencing_bytes_are_pinned() {
        use sha2::Digest;
        let np = NewParent {
            linkage: Uuid::from_u128(0xff34003b_11ed_4cf8_a166_b2be05e20b80),
            absolute_path: r"C:\Lab\Ref\base disk.vhdx".into(),
            relative_path: Some(r"..\Ref\base disk.vhdx".into()),
        };
        let mut p = NewVhdx::new(NewKind::Differencing(np), 8 << 20, 2 << 20);
        p.virtual_disk_id = Uuid::from_u128(1);
        p.data_write_guid = Uuid::from_u128(2);
        p.file_write_guid = Uuid::from_u128(3);
        let f =
            crate::txn::fault::FaultyFile::new(Vec::new(), crate::txn::fault::FaultPlan::new(None));
        write_new(&f, &p).unwrap();
        let bytes = f.contents_all_written();
        let hex: String = sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            (bytes.len(), hex.as_str()),
            (
                4 << 20,
                "c896dfb95ec6bfa29963f4d6722360b1f5525df981bbf4d47a3d8b29be300c57"
            )
        );
    }

    #[test]
    fn refuses_bad_parameters() {
        let mut p = NewVhdx::new(NewKind::Dynamic, 1 << 20, 3 << 20);
        assert!(build(&p).is_err());
        p.block_size = 1 << 20;
        p.virtual_size = 1000;
        assert!(build(&p).is_err());
        p.virtual_size = 512;
        p.logical_sector_size = 4096;
        assert!(build(&p).is_err());
        p.logical_sector_size = 1024;
        p.virtual_size = 4096;
        assert!(build(&p).is_err());
    }
}
