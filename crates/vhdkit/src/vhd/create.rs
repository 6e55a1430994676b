//! Laying out a new VHD file the way Hyper-V does (FORMAT.md A.2-A.8, and the Windows files
//! measured in `testdata-real/SOURCES.md`).
//!
//! This module computes every byte of a new, empty disk ([`build`]) and writes it to a
//! [`Sink`] ([`write_new`]). It is production code, separate from the test writer in
//! `vhdkit-testkit`, so tests can cross-check the two.
//!
//! Layouts (all offsets absolute; "4 KiB" = 4096):
//!
//! | type | layout |
//! |---|---|
//! | fixed | data (current size bytes, a hole), footer |
//! | dynamic | footer copy @0, dynamic header @0x200, BAT @0x600 padded with 0xFF to 4 KiB, zeros, footer in the last 512 bytes of the next 4 KiB |
//! | differencing | footer copy @0, header @0x200, `W2ku` data @0x1000 (space 4096), BAT @0x2000 padded to 4 KiB, `W2ru` data after it (space 65536), zeros, footer in the last 512 bytes of the next 4 KiB |
//!
//! That is exactly where Windows 10 put the structures of `fat-differential.vhd` and
//! `dynamic.vhd`, so the first block's bitmap lands where the footer was and its data on a
//! 4 KiB boundary, as in the Windows files. A locator path that does not fit the Windows space
//! gets the next multiple of 4 KiB instead.

use std::io::Cursor;

use binrw::BinWrite;

use super::format::{self, DynamicHeader, Footer, ParentLocatorEntry};
use crate::error::{Error, Result};
use crate::newdisk::{write_built, Built};
use crate::txn::Sink;
use crate::util::utf16le;

/// Default block size: 2 MiB, what Hyper-V uses for dynamic and differencing VHDs.
pub const DEFAULT_BLOCK_BYTES: u32 = 2 << 20;
/// Structures and block data are aligned to 4 KiB, as Windows does.
pub const ALIGN_BYTES: u64 = 4096;
/// Largest virtual size: 2040 GiB (VHD spec limit for dynamic disks; Hyper-V applies it to
/// every VHD).
pub const MAX_VIRTUAL_BYTES: u64 = 2040 << 30;
/// Creator application written: `win ` (Windows / Hyper-V).
pub const CREATOR_APPLICATION: [u8; 4] = *b"win ";
/// Creator version written: 10.0, as Windows 10 and Server 2016+ write.
pub const CREATOR_VERSION: u32 = 0x000A_0000;
/// Creator host OS written: `Wi2k`.
pub const CREATOR_HOST_OS: [u8; 4] = *b"Wi2k";
/// Offset of the BAT in a dynamic disk (0x600, after the footer copy and the header).
pub const DYNAMIC_BAT_OFFSET: u64 = 0x600;
/// Offset of the `W2ku` locator data in a differencing disk.
pub const W2KU_OFFSET: u64 = 0x1000;
/// Minimum data space of the `W2ku` locator (Windows: 4096 bytes).
pub const W2KU_MIN_SPACE: u64 = 4096;
/// Minimum data space of the `W2ru` locator (Windows: 65536 bytes, enough for any Windows path
/// of 32767 UTF-16 code units).
pub const W2RU_MIN_SPACE: u64 = 65536;

/// The kind of VHD to create.
pub type NewKind = crate::newdisk::NewKind<NewParent>;

/// What a new differencing VHD records about its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewParent {
    /// The parent footer's unique id bytes, copied raw.
    pub unique_id: [u8; 16],
    /// Parent time stamp (Windows writes 0; FORMAT.md A.10).
    pub time_stamp: u32,
    /// Parent unicode name (Windows: the absolute path). At most 256 UTF-16 code units.
    pub unicode_name: String,
    /// `W2ku` path (absolute).
    pub absolute_path: String,
    /// `W2ru` path (relative to the child's folder, `.\name.vhd`); `None` writes no `W2ru`.
    pub relative_path: Option<String>,
}

/// Everything that defines a new VHD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVhd {
    /// Type (and parent).
    pub kind: NewKind,
    /// Virtual size in bytes: a non-zero multiple of 512, at most [`MAX_VIRTUAL_BYTES`].
    pub virtual_size: u64,
    /// Block size in bytes (dynamic, differencing): a power of two from 512 bytes to 256 MiB.
    pub block_size: u32,
    /// The footer unique id, as stored.
    pub unique_id: [u8; 16],
    /// Footer time stamp (seconds since 2000-01-01 UTC).
    pub time_stamp: u32,
}

/// The bytes of a new file: its length and the non-zero ranges to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// File length.
    pub file_len: u64,
    /// Writes, in the order to make them (footer at the end last).
    pub writes: Vec<(u64, Vec<u8>)>,
    /// The BAT: `(offset, length)` filled with 0xFF (unallocated), written through a bounded
    /// buffer before `writes`. Absent for fixed disks.
    pub bat: Option<(u64, u64)>,
}

/// The footer time stamp for now: seconds since the VHD epoch (saturating).
pub fn time_stamp_now() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs.saturating_sub(format::TIME_STAMP_EPOCH_UNIX_SECS)).unwrap_or(u32::MAX)
}

/// CHS geometry for `size` bytes, per the VHD spec appendix (FORMAT.md A.5).
pub fn geometry(size: u64) -> (u16, u8, u8) {
    let max = 65535u64 * 16 * 255;
    let total = (size / format::SECTOR_BYTES).min(max);
    let (spt, heads, cth) = if total >= 65535 * 16 * 63 {
        (255u64, 16u64, total / 255)
    } else {
        let mut spt = 17u64;
        let mut cth = total / spt;
        let mut heads = cth.div_ceil(1024).max(4);
        if cth >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if cth >= heads * 1024 {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
        (spt, heads, cth)
    };
    let cyl = u16::try_from(cth / heads).unwrap_or(u16::MAX);
    (
        cyl,
        u8::try_from(heads).unwrap_or(16),
        u8::try_from(spt).unwrap_or(255),
    )
}

/// `v` rounded up to a multiple of `a` (a power of two).
pub(crate) fn align_up(v: u64, a: u64) -> Option<u64> {
    crate::util::round_up(v, a)
}

fn serialize<T>(v: &T, size: usize, checksum_at: usize) -> Result<Vec<u8>>
where
    T: BinWrite,
    for<'a> T::Args<'a>: Default,
{
    let mut c = Cursor::new(Vec::with_capacity(size));
    v.write_options(&mut c, binrw::Endian::Big, Default::default())
        .map_err(|e| Error::InvalidArgument(format!("serializing a vhd structure: {e}")))?;
    let mut b = c.into_inner();
    let sum = format::checksum(&b, checksum_at);
    if let Some(slot) = b.get_mut(checksum_at..checksum_at + 4) {
        slot.copy_from_slice(&sum.to_be_bytes());
    }
    Ok(b)
}

/// The 512 footer bytes of a new disk (checksum included).
pub fn footer_bytes(p: &NewVhd) -> Result<Vec<u8>> {
    let (disk_type, data_offset) = match p.kind {
        NewKind::Fixed => (format::DISK_TYPE_FIXED, u64::MAX),
        NewKind::Dynamic => (format::DISK_TYPE_DYNAMIC, format::FOOTER_BYTES as u64),
        NewKind::Differencing(_) => (format::DISK_TYPE_DIFFERENCING, format::FOOTER_BYTES as u64),
    };
    let (cylinders, heads, sectors_per_track) = geometry(p.virtual_size);
    let f = Footer {
        features: format::FEATURE_RESERVED,
        file_format_version: format::VERSION_1_0,
        data_offset,
        time_stamp: p.time_stamp,
        creator_application: CREATOR_APPLICATION,
        creator_version: CREATOR_VERSION,
        creator_host_os: CREATOR_HOST_OS,
        original_size: p.virtual_size,
        current_size: p.virtual_size,
        cylinders,
        heads,
        sectors_per_track,
        disk_type,
        checksum: 0,
        unique_id: p.unique_id,
        saved_state: 0,
        reserved: [0; 427],
    };
    serialize(&f, format::FOOTER_BYTES, format::FOOTER_CHECKSUM_OFFSET)
}

fn check(p: &NewVhd) -> Result<()> {
    if p.virtual_size == 0 || p.virtual_size % format::SECTOR_BYTES != 0 {
        return Err(Error::InvalidArgument(format!(
            "virtual size {} is not a non-zero multiple of 512 bytes (VHD sectors are 512 bytes)",
            p.virtual_size
        )));
    }
    if p.virtual_size > MAX_VIRTUAL_BYTES {
        return Err(Error::InvalidArgument(format!(
            "virtual size {} is above the VHD maximum of 2040 GiB ({MAX_VIRTUAL_BYTES} bytes)",
            p.virtual_size
        )));
    }
    if p.kind != NewKind::Fixed {
        let bs = p.block_size;
        if bs < 512 || !bs.is_power_of_two() || bs > format::MAX_BLOCK_BYTES {
            return Err(Error::InvalidArgument(format!(
                "block size {bs} is not a power of two between 512 bytes and 256 MiB"
            )));
        }
    }
    Ok(())
}

/// Write a new disk into an empty `sink` and make it durable.
pub fn write_new<S: Sink + ?Sized>(sink: &S, p: &NewVhd) -> Result<Layout> {
    write_built(sink, build(p)?)
}

/// Compute every byte of a new, empty disk.
pub fn build(p: &NewVhd) -> Result<Layout> {
    check(p)?;
    let footer = footer_bytes(p)?;
    let parent = match &p.kind {
        NewKind::Fixed => {
            return Ok(Layout {
                file_len: p.virtual_size + format::FOOTER_BYTES as u64,
                writes: vec![(p.virtual_size, footer)],
                bat: None,
            });
        }
        NewKind::Dynamic => None,
        NewKind::Differencing(np) => Some(np),
    };
    let entries = p.virtual_size.div_ceil(u64::from(p.block_size));
    let max_table_entries = u32::try_from(entries).map_err(|_| too_big())?;
    let bat_bytes = entries * format::BAT_ENTRY_BYTES;
    crate::Limits::default().check_new_table(bat_bytes)?;
    let space = match parent {
        None => Space::dynamic(bat_bytes)?,
        Some(np) => Space::differencing(np, bat_bytes)?,
    };
    let header = dynamic_header(p, max_table_entries, parent, &space)?;
    // The BAT, padded with 0xFF (unallocated) to its 4 KiB boundary, as Windows does.
    let bat_end = align_up(space.table_offset + bat_bytes, ALIGN_BYTES).ok_or_else(too_big)?;
    let footer_at = align_up(space.end + format::FOOTER_BYTES as u64, ALIGN_BYTES)
        .ok_or_else(too_big)?
        - format::FOOTER_BYTES as u64;
    let mut writes = vec![
        (0u64, footer.clone()),
        (format::FOOTER_BYTES as u64, header),
    ];
    writes.extend(space.writes);
    writes.push((footer_at, footer));
    Ok(Layout {
        file_len: footer_at + format::FOOTER_BYTES as u64,
        writes,
        bat: Some((space.table_offset, bat_end - space.table_offset)),
    })
}

fn too_big() -> Error {
    Error::InvalidArgument("the disk layout overflows".into())
}

/// Where the structures after the dynamic header go: the BAT, the parent locators and their
/// data, and the end of the last of them (where the first block will go).
struct Space {
    table_offset: u64,
    end: u64,
    locators: [ParentLocatorEntry; format::LOCATOR_ENTRIES],
    writes: Vec<(u64, Vec<u8>)>,
}

impl Space {
    /// Dynamic: the BAT right after the header.
    fn dynamic(bat_bytes: u64) -> Result<Space> {
        Ok(Space {
            table_offset: DYNAMIC_BAT_OFFSET,
            end: align_up(DYNAMIC_BAT_OFFSET + bat_bytes, ALIGN_BYTES).ok_or_else(too_big)?,
            locators: Default::default(),
            writes: Vec::new(),
        })
    }

    /// Differencing, in Windows' order: `W2ku` data, the BAT, then `W2ru` data.
    fn differencing(np: &NewParent, bat_bytes: u64) -> Result<Space> {
        let mut s = Space {
            table_offset: 0,
            end: 0,
            locators: Default::default(),
            writes: Vec::new(),
        };
        let abs = utf16le(&np.absolute_path);
        let abs_space = locator_space(&abs, W2KU_MIN_SPACE)?;
        s.add(format::PLATFORM_W2KU, W2KU_OFFSET, abs_space, abs)?;
        s.table_offset = W2KU_OFFSET.checked_add(abs_space).ok_or_else(too_big)?;
        s.end = align_up(s.table_offset + bat_bytes, ALIGN_BYTES).ok_or_else(too_big)?;
        if let Some(rel) = &np.relative_path {
            let rel = utf16le(rel);
            let rel_space = locator_space(&rel, W2RU_MIN_SPACE)?;
            s.add(format::PLATFORM_W2RU, s.end, rel_space, rel)?;
            s.end = s.end.checked_add(rel_space).ok_or_else(too_big)?;
        }
        Ok(s)
    }

    /// The next locator slot: `data` at `at`, in `space` bytes.
    fn add(&mut self, code: [u8; 4], at: u64, space: u64, data: Vec<u8>) -> Result<()> {
        let e = self
            .locators
            .get_mut(self.writes.len())
            .ok_or_else(too_big)?;
        *e = ParentLocatorEntry {
            platform_code: code,
            platform_data_space: u32::try_from(space).map_err(|_| too_big())?,
            platform_data_length: u32::try_from(data.len()).map_err(|_| too_big())?,
            reserved: 0,
            platform_data_offset: at,
        };
        self.writes.push((at, data));
        Ok(())
    }
}

/// The space of a locator holding `data`: at least Windows' `min`, whole 4 KiB units.
fn locator_space(data: &[u8], min: u64) -> Result<u64> {
    align_up((data.len() as u64).max(min), ALIGN_BYTES).ok_or_else(too_big)
}

/// The parent unicode name field: UTF-16 big-endian, zero-padded.
fn parent_name_field(np: &NewParent) -> Result<[u8; format::PARENT_NAME_BYTES]> {
    format::parent_name_field(&np.unicode_name).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "parent unicode name is {} UTF-16 code units, more than the 256 the field holds",
            np.unicode_name.encode_utf16().count()
        ))
    })
}

/// The dynamic header's bytes (checksum included).
fn dynamic_header(
    p: &NewVhd,
    max_table_entries: u32,
    parent: Option<&NewParent>,
    space: &Space,
) -> Result<Vec<u8>> {
    let (parent_unique_id, parent_time_stamp, parent_unicode_name) = match parent {
        Some(np) => (np.unique_id, np.time_stamp, parent_name_field(np)?),
        None => ([0; 16], 0, [0; format::PARENT_NAME_BYTES]),
    };
    let header = DynamicHeader {
        data_offset: u64::MAX,
        table_offset: space.table_offset,
        header_version: format::VERSION_1_0,
        max_table_entries,
        block_size: p.block_size,
        checksum: 0,
        parent_unique_id,
        parent_time_stamp,
        reserved1: 0,
        parent_unicode_name,
        parent_locators: space.locators,
        reserved2: [0; 256],
    };
    serialize(
        &header,
        format::DYNAMIC_HEADER_BYTES,
        format::DYNAMIC_CHECKSUM_OFFSET,
    )
}

impl Built for Layout {
    const FORMAT: &'static str = "vhd";
    fn bytes(&self) -> (u64, &[(u64, Vec<u8>)]) {
        (self.file_len, &self.writes)
    }
    /// The BAT of a dynamic or differencing disk: every entry unallocated, written in bounded
    /// pieces (it is not part of `writes`).
    fn write_streamed<S: Sink + ?Sized>(&self, sink: &S) -> Result<()> {
        let Some((at, len)) = self.bat else {
            return Ok(());
        };
        crate::limits::write_fill(sink, at, len, super::format::BAT_UNALLOCATED_FILL)
            .map_err(|e| Error::io(format!("writing the new vhd's BAT at offset {at:#x}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_windows_samples() {
        // 4 MiB Windows file: 120/4/17 (FORMAT.md A.5); 10 MiB Windows files: 301/4/17.
        assert_eq!(geometry(4 << 20), (120, 4, 17));
        assert_eq!(geometry(10 << 20), (301, 4, 17));
        assert_eq!(geometry(1 << 50), (65535, 16, 255));
        // Hyper-V 2012 R2 127 GiB disk: 65278/16/255.
        assert_eq!(geometry(136_365_211_648), (65278, 16, 255));
    }

    fn new(kind: NewKind, size: u64) -> NewVhd {
        NewVhd {
            kind,
            virtual_size: size,
            block_size: DEFAULT_BLOCK_BYTES,
            unique_id: [1; 16],
            time_stamp: 0,
        }
    }

    #[test]
    fn dynamic_layout_like_windows() {
        // Windows dynamic.vhd (10 MiB): BAT @0x600, first block bitmap @0x1e00 (data @0x2000).
        let l = build(&new(NewKind::Dynamic, 10 << 20)).unwrap();
        assert_eq!(l.file_len, 0x2000);
        assert_eq!(l.writes.last().unwrap().0, 0x1e00);
        // 127 GiB Hyper-V 2012 R2 file is 266240 bytes long.
        let l = build(&new(NewKind::Dynamic, 136_365_211_648)).unwrap();
        assert_eq!(l.file_len, 266_240);
    }

    #[test]
    fn differencing_layout_like_windows() {
        let np = NewParent {
            unique_id: [2; 16],
            time_stamp: 0,
            unicode_name: r"C:\Projects\dfvfs\test_data\fat-parent.vhd".into(),
            absolute_path: r"C:\Projects\dfvfs\test_data\fat-parent.vhd".into(),
            relative_path: Some(r".\fat-parent.vhd".into()),
        };
        let l = build(&new(NewKind::Differencing(np), 4 << 20)).unwrap();
        // fat-differential.vhd: W2ku @0x1000, BAT @0x2000, W2ru @0x3000, first bitmap @0x13e00.
        let at: Vec<u64> = l.writes.iter().map(|w| w.0).collect();
        assert_eq!(at, vec![0, 0x200, 0x1000, 0x3000, 0x13e00]);
        assert_eq!(l.bat, Some((0x2000, 0x1000)));
        assert_eq!(l.file_len, 0x14000);
    }

    #[test]
    fn tables_readers_refuse_are_refused_before_anything() {
        // 2040 GiB in 512-byte blocks: a 16 GiB BAT that no reader loads.
        let mut p = new(NewKind::Dynamic, 2040 << 30);
        p.block_size = 512;
        assert!(matches!(
            build(&p),
            Err(Error::InvalidOption {
                option: "block_size",
                ..
            })
        ));
        p.block_size = DEFAULT_BLOCK_BYTES;
        assert!(build(&p).is_ok());
    }

    #[test]
    fn refuses_bad_sizes() {
        assert!(build(&new(NewKind::Dynamic, 1000)).is_err());
        assert!(build(&new(NewKind::Fixed, 0)).is_err());
        assert!(build(&new(NewKind::Dynamic, MAX_VIRTUAL_BYTES + 512)).is_err());
        let mut p = new(NewKind::Dynamic, 1 << 20);
        p.block_size = 3000;
        assert!(build(&p).is_err());
    }
}
