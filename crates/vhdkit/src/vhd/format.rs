//! VHD on-disk structures and constants (FORMAT.md Part A), as binrw types.
//!
//! Depends on nothing else in the crate: no I/O, no policy. Every integer is big-endian (A.1).
//! The `cookie` signatures are binrw `magic`s; callers check the cookie bytes themselves first so
//! that a bad cookie gets a precise error. Checking checksums, sizes and cross-structure rules is
//! the job of the logic modules (`footer`, `dynamic`, `locator`, `bat`).

use binrw::binrw;

/// Bytes per sector, always (A.1).
pub const SECTOR_BYTES: u64 = 512;
/// Size of the hard disk footer.
pub const FOOTER_BYTES: usize = 512;
/// Size of the footer written by products older than Virtual PC 2004 (trap 4).
pub const OLD_FOOTER_BYTES: usize = 511;
/// Size of the dynamic disk header.
pub const DYNAMIC_HEADER_BYTES: usize = 1024;
/// Size of one parent locator entry.
pub const LOCATOR_ENTRY_BYTES: usize = 24;
/// Number of parent locator entries in the dynamic header.
pub const LOCATOR_ENTRIES: usize = 8;
/// Offset of the first locator entry inside the dynamic header.
pub const LOCATOR_TABLE_OFFSET: usize = 576;
/// Size of the parent unicode name field.
pub const PARENT_NAME_BYTES: usize = 512;
/// Offset of the parent unicode name inside the dynamic header.
pub const PARENT_NAME_OFFSET: usize = 64;

/// Footer cookie.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// Dynamic header cookie.
pub const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
/// Offset of the checksum inside the footer.
pub const FOOTER_CHECKSUM_OFFSET: usize = 64;
/// Offset of the checksum inside the dynamic header.
pub const DYNAMIC_CHECKSUM_OFFSET: usize = 36;

/// Footer `features` bit 0: temporary disk.
pub const FEATURE_TEMPORARY: u32 = 0x1;
/// Footer `features` bit 1: reserved, must be set.
pub const FEATURE_RESERVED: u32 = 0x2;
/// The only file format / header version defined (major 1, minor 0).
pub const VERSION_1_0: u32 = 0x0001_0000;

/// Disk type: fixed.
pub const DISK_TYPE_FIXED: u32 = 2;
/// Disk type: dynamic.
pub const DISK_TYPE_DYNAMIC: u32 = 3;
/// Disk type: differencing.
pub const DISK_TYPE_DIFFERENCING: u32 = 4;

/// BAT entry of an unallocated block.
pub const BAT_UNALLOCATED: u32 = 0xFFFF_FFFF;
/// The byte a new BAT is filled with: every entry [`BAT_UNALLOCATED`].
pub const BAT_UNALLOCATED_FILL: u8 = 0xFF;

/// Creator application of Virtual PC.
pub const CREATOR_VPC: [u8; 4] = *b"vpc ";
/// Creator application of Xen blktap (tapdisk).
pub const CREATOR_TAP: [u8; 4] = *b"tap\0";
/// Creator version of the old tapdisk format with LSB-first bitmaps (A.8).
pub const TAP_LSB_BITMAP_VERSION: u32 = 0x0000_0001;

/// Locator platform codes (A.7).
pub const PLATFORM_WI2R: [u8; 4] = *b"Wi2r";
/// Deprecated absolute Windows path, 8-bit.
pub const PLATFORM_WI2K: [u8; 4] = *b"Wi2k";
/// Windows path relative to the child, UTF-16LE.
pub const PLATFORM_W2RU: [u8; 4] = *b"W2ru";
/// Absolute Windows path, UTF-16LE.
pub const PLATFORM_W2KU: [u8; 4] = *b"W2ku";
/// Mac OS alias record (opaque).
pub const PLATFORM_MAC: [u8; 4] = *b"Mac ";
/// File URL, UTF-8.
pub const PLATFORM_MACX: [u8; 4] = *b"MacX";

/// Largest block size accepted (256 MiB). The spec default is 2 MiB and no known writer goes
/// above it; this bound only keeps per-block bitmap reads (64 KiB at 256 MiB) small.
pub const MAX_BLOCK_BYTES: u32 = 256 << 20;

/// Maximum CHS geometry: 65535 cylinders, 16 heads, 255 sectors per track (A.5).
pub const MAX_CHS: (u16, u8, u8) = (65535, 16, 255);

/// The hard disk footer (A.3), 512 bytes.
#[binrw]
#[brw(big, magic = b"conectix")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    /// Bit 0 temporary, bit 1 reserved (must be 1).
    pub features: u32,
    /// 0x00010000.
    pub file_format_version: u32,
    /// Absolute offset of the dynamic header; all ones for a fixed disk.
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01 UTC.
    pub time_stamp: u32,
    /// Four raw bytes naming the writer (`win `, `vpc `, `qemu`, `d2v\0` ...).
    pub creator_application: [u8; 4],
    /// `major << 16 | minor`.
    pub creator_version: u32,
    /// `Wi2k` or `Mac `.
    pub creator_host_os: [u8; 4],
    /// Size at creation, informational.
    pub original_size: u64,
    /// Virtual size in bytes.
    pub current_size: u64,
    /// CHS cylinders.
    pub cylinders: u16,
    /// CHS heads.
    pub heads: u8,
    /// CHS sectors per track.
    pub sectors_per_track: u8,
    /// 2 fixed, 3 dynamic, 4 differencing.
    pub disk_type: u32,
    /// One's complement of the byte sum with this field as zero.
    pub checksum: u32,
    /// 16 opaque bytes (trap 2).
    pub unique_id: [u8; 16],
    /// 1 when the VM is in a saved state.
    pub saved_state: u8,
    /// Zero (blktap uses byte 0 as a private flag).
    pub reserved: [u8; 427],
}

/// The dynamic disk header (A.6), 1024 bytes.
#[binrw]
#[brw(big, magic = b"cxsparse")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Unused; all ones.
    pub data_offset: u64,
    /// Absolute offset of the BAT.
    pub table_offset: u64,
    /// 0x00010000.
    pub header_version: u32,
    /// Number of BAT entries.
    pub max_table_entries: u32,
    /// Bytes of data per block (bitmap excluded); a power-of-two number of sectors.
    pub block_size: u32,
    /// One's complement of the byte sum with this field as zero.
    pub checksum: u32,
    /// The parent footer's unique id bytes.
    pub parent_unique_id: [u8; 16],
    /// Parent time stamp (see A.10).
    pub parent_time_stamp: u32,
    /// Zero.
    pub reserved1: u32,
    /// Parent name, UTF-16 big-endian, zero-padded.
    pub parent_unicode_name: [u8; 512],
    /// Eight parent locator entries.
    pub parent_locators: [ParentLocatorEntry; 8],
    /// Zero.
    pub reserved2: [u8; 256],
}

/// One parent locator entry (A.7), 24 bytes.
#[binrw]
#[brw(big)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParentLocatorEntry {
    /// Four ASCII bytes; all zero for an empty slot.
    pub platform_code: [u8; 4],
    /// Space reserved for the data: bytes in practice, sectors per SV (trap 3).
    pub platform_data_space: u32,
    /// Exact length of the data in bytes.
    pub platform_data_length: u32,
    /// Zero.
    pub reserved: u32,
    /// Absolute offset of the data.
    pub platform_data_offset: u64,
}

/// The VHD checksum (A.1): the one's complement of the wrapping sum of every byte of `bytes`,
/// with the four bytes at `checksum_at` counted as zero.
pub fn checksum(bytes: &[u8], checksum_at: usize) -> u32 {
    let skip = checksum_at..checksum_at.saturating_add(4);
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// Sectors per track, heads and cylinders product in bytes.
pub fn chs_bytes(cylinders: u16, heads: u8, sectors_per_track: u8) -> u64 {
    u64::from(cylinders) * u64::from(heads) * u64::from(sectors_per_track) * SECTOR_BYTES
}

/// Bytes of the sector bitmap in front of each block (A.8): one bit per sector, padded to a
/// whole sector.
pub fn bitmap_bytes(block_size: u32) -> u64 {
    let sectors = u64::from(block_size).div_ceil(SECTOR_BYTES);
    sectors.div_ceil(8).div_ceil(SECTOR_BYTES) * SECTOR_BYTES
}

// ---- writer ----

/// Length of a footer or dynamic header cookie.
pub const COOKIE_BYTES: usize = 8;
/// Bytes of one BAT entry (a big-endian sector number).
pub const BAT_ENTRY_BYTES: u64 = 4;
// ---- txn ----

/// The VHD time stamp epoch (A.2: seconds since 2000-01-01 00:00:00 UTC), in Unix seconds.
pub const TIME_STAMP_EPOCH_UNIX_SECS: u64 = 946_684_800;

#[cfg(test)]
mod tests {
    use super::*;
    use binrw::{BinRead, BinWrite};
    use std::io::Cursor;

    fn sample_footer() -> Footer {
        Footer {
            features: FEATURE_RESERVED,
            file_format_version: VERSION_1_0,
            data_offset: 512,
            time_stamp: 0x2000_0000,
            creator_application: *b"win ",
            creator_version: 0x000A_0000,
            creator_host_os: *b"Wi2k",
            original_size: 4 << 20,
            current_size: 4 << 20,
            cylinders: 120,
            heads: 4,
            sectors_per_track: 17,
            disk_type: DISK_TYPE_DYNAMIC,
            checksum: 0x1234_5678,
            unique_id: [7; 16],
            saved_state: 0,
            reserved: [0; 427],
        }
    }

    #[test]
    fn footer_round_trip_and_layout() {
        let f = sample_footer();
        let mut c = Cursor::new(Vec::new());
        f.write(&mut c).unwrap();
        let b = c.into_inner();
        assert_eq!(b.len(), FOOTER_BYTES);
        assert_eq!(&b[..8], FOOTER_COOKIE);
        assert_eq!(&b[16..24], &512u64.to_be_bytes());
        assert_eq!(&b[28..32], b"win ");
        assert_eq!(&b[56..60], &[0, 120, 4, 17]);
        assert_eq!(&b[60..64], &3u32.to_be_bytes());
        assert_eq!(&b[64..68], &0x1234_5678u32.to_be_bytes());
        assert_eq!(&b[68..84], &[7; 16]);
        let back = Footer::read(&mut Cursor::new(&b)).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn footer_bad_magic_fails() {
        let mut b = vec![0u8; FOOTER_BYTES];
        b[..8].copy_from_slice(b"conectiX");
        assert!(Footer::read(&mut Cursor::new(&b)).is_err());
        assert!(Footer::read(&mut Cursor::new(&b"conectix"[..])).is_err());
    }

    #[test]
    fn dynamic_header_round_trip_and_layout() {
        let mut locs = [ParentLocatorEntry::default(); 8];
        locs[1] = ParentLocatorEntry {
            platform_code: PLATFORM_W2RU,
            platform_data_space: 4096,
            platform_data_length: 32,
            reserved: 0,
            platform_data_offset: 0x3000,
        };
        let h = DynamicHeader {
            data_offset: u64::MAX,
            table_offset: 0x600,
            header_version: VERSION_1_0,
            max_table_entries: 2,
            block_size: 2 << 20,
            checksum: 9,
            parent_unique_id: [3; 16],
            parent_time_stamp: 5,
            reserved1: 0,
            parent_unicode_name: [0; 512],
            parent_locators: locs,
            reserved2: [0; 256],
        };
        let mut c = Cursor::new(Vec::new());
        h.write(&mut c).unwrap();
        let b = c.into_inner();
        assert_eq!(b.len(), DYNAMIC_HEADER_BYTES);
        assert_eq!(&b[..8], DYNAMIC_COOKIE);
        assert_eq!(&b[28..32], &2u32.to_be_bytes());
        assert_eq!(&b[36..40], &9u32.to_be_bytes());
        let e = LOCATOR_TABLE_OFFSET + LOCATOR_ENTRY_BYTES;
        assert_eq!(&b[e..e + 4], b"W2ru");
        assert_eq!(&b[e + 16..e + 24], &0x3000u64.to_be_bytes());
        assert_eq!(DynamicHeader::read(&mut Cursor::new(&b)).unwrap(), h);
    }

    #[test]
    fn locator_entry_round_trip_and_length() {
        let l = ParentLocatorEntry {
            platform_code: PLATFORM_W2KU,
            platform_data_space: 1,
            platform_data_length: 2,
            reserved: 3,
            platform_data_offset: 4,
        };
        let mut c = Cursor::new(Vec::new());
        l.write(&mut c).unwrap();
        let b = c.into_inner();
        assert_eq!(b.len(), LOCATOR_ENTRY_BYTES);
        assert_eq!(ParentLocatorEntry::read(&mut Cursor::new(&b)).unwrap(), l);
        assert!(ParentLocatorEntry::read(&mut Cursor::new(&b[..23])).is_err());
    }

    #[test]
    fn checksum_skips_its_field() {
        let mut b = vec![1u8; 16];
        b[4..8].copy_from_slice(&[0xff; 4]);
        assert_eq!(checksum(&b, 4), !12u32);
    }

    #[test]
    fn bitmap_sizes() {
        assert_eq!(bitmap_bytes(2 << 20), 512);
        assert_eq!(bitmap_bytes(512), 512);
        assert_eq!(bitmap_bytes(4 << 20), 1024);
        assert_eq!(bitmap_bytes(256 << 20), 65536);
    }
}

// ---- check ----

/// Where the footer's fields (A.3) start, counted from its first byte: findings point at the
/// field at fault (the checksum's is [`FOOTER_CHECKSUM_OFFSET`]). Pinned to [`Footer`] by
/// a test.
pub mod footer_fields {
    /// `features`.
    pub const FEATURES: u64 = 8;
    /// `file_format_version`.
    pub const FILE_FORMAT_VERSION: u64 = 12;
    /// `data_offset`.
    pub const DATA_OFFSET: u64 = 16;
    /// `current_size`.
    pub const CURRENT_SIZE: u64 = 48;
    /// `cylinders`, `heads`, `sectors_per_track`.
    pub const DISK_GEOMETRY: u64 = 56;
    /// `disk_type`.
    pub const DISK_TYPE: u64 = 60;
    /// `saved_state`.
    pub const SAVED_STATE: u64 = 84;
}

/// Where the dynamic header's fields (A.6) start, counted from its first byte (the checksum,
/// parent name and locator table are [`DYNAMIC_CHECKSUM_OFFSET`],
/// [`PARENT_NAME_OFFSET`] and [`LOCATOR_TABLE_OFFSET`]). Pinned to
/// [`DynamicHeader`] by a test.
pub mod dynamic_header_fields {
    /// `table_offset`.
    pub const TABLE_OFFSET: u64 = 16;
    /// `header_version`.
    pub const HEADER_VERSION: u64 = 24;
    /// `max_table_entries`.
    pub const MAX_TABLE_ENTRIES: u64 = 28;
    /// `block_size`.
    pub const BLOCK_SIZE: u64 = 32;
    /// `parent_unique_id`.
    pub const PARENT_UNIQUE_ID: u64 = 40;
}

/// Where a parent locator entry's fields (A.7) start, counted from its first byte. Pinned to
/// [`ParentLocatorEntry`] by a test.
pub mod locator_entry_fields {
    /// `platform_data_space`.
    pub const PLATFORM_DATA_SPACE: u64 = 4;
    /// `platform_data_offset`.
    pub const PLATFORM_DATA_OFFSET: u64 = 16;
}

// ---- dedupe ----

/// The parent unicode name field holding `name`: UTF-16 big-endian, zero-padded (A.6). `None`
/// when it has more code units than the field holds; callers word the refusal.
pub fn parent_name_field(name: &str) -> Option<[u8; PARENT_NAME_BYTES]> {
    let mut field = [0u8; PARENT_NAME_BYTES];
    let mut slots = field.chunks_exact_mut(2);
    for u in name.encode_utf16() {
        slots.next()?.copy_from_slice(&u.to_be_bytes());
    }
    Some(field)
}

#[cfg(test)]
mod field_tests {
    //! One pinning test per structure: every named offset above points at its field.
    use super::*;
    use crate::util::binrw_bytes as bytes;

    fn at(b: &[u8], off: u64, n: usize) -> &[u8] {
        let o = usize::try_from(off).unwrap();
        &b[o..o + n]
    }

    #[test]
    fn footer_offsets() {
        let f = Footer {
            features: 0x0A0B_0C0D,
            file_format_version: 0x1112_1314,
            data_offset: 0x2122_2324_2526_2728,
            time_stamp: 0,
            creator_application: [0; 4],
            creator_version: 0,
            creator_host_os: [0; 4],
            original_size: 0,
            current_size: 0x3132_3334_3536_3738,
            cylinders: 0x4142,
            heads: 0x43,
            sectors_per_track: 0x44,
            disk_type: 0x5152_5354,
            checksum: 0x6162_6364,
            unique_id: [0; 16],
            saved_state: 0x71,
            reserved: [0; 427],
        };
        let b = bytes(&f);
        use footer_fields as ff;
        assert_eq!(&b[..COOKIE_BYTES], FOOTER_COOKIE);
        assert_eq!(at(&b, ff::FEATURES, 4), &f.features.to_be_bytes());
        let version = f.file_format_version.to_be_bytes();
        assert_eq!(at(&b, ff::FILE_FORMAT_VERSION, 4), &version);
        assert_eq!(at(&b, ff::DATA_OFFSET, 8), &f.data_offset.to_be_bytes());
        assert_eq!(at(&b, ff::CURRENT_SIZE, 8), &f.current_size.to_be_bytes());
        assert_eq!(at(&b, ff::DISK_GEOMETRY, 4), &[0x41, 0x42, 0x43, 0x44]);
        assert_eq!(at(&b, ff::DISK_TYPE, 4), &f.disk_type.to_be_bytes());
        let checksum = FOOTER_CHECKSUM_OFFSET as u64;
        assert_eq!(at(&b, checksum, 4), &f.checksum.to_be_bytes());
        assert_eq!(at(&b, ff::SAVED_STATE, 1), &[0x71]);
    }

    #[test]
    fn dynamic_header_offsets() {
        let h = DynamicHeader {
            data_offset: 0,
            table_offset: 0x0102_0304_0506_0708,
            header_version: 0x1112_1314,
            max_table_entries: 0x2122_2324,
            block_size: 0x3132_3334,
            checksum: 0x4142_4344,
            parent_unique_id: [0x51; 16],
            parent_time_stamp: 0,
            reserved1: 0,
            parent_unicode_name: [0x61; 512],
            parent_locators: [ParentLocatorEntry {
                platform_code: *b"abcd",
                ..ParentLocatorEntry::default()
            }; 8],
            reserved2: [0; 256],
        };
        let b = bytes(&h);
        use dynamic_header_fields as hf;
        assert_eq!(&b[..COOKIE_BYTES], DYNAMIC_COOKIE);
        assert_eq!(at(&b, hf::TABLE_OFFSET, 8), &h.table_offset.to_be_bytes());
        let version = h.header_version.to_be_bytes();
        assert_eq!(at(&b, hf::HEADER_VERSION, 4), &version);
        let entries = h.max_table_entries.to_be_bytes();
        assert_eq!(at(&b, hf::MAX_TABLE_ENTRIES, 4), &entries);
        assert_eq!(at(&b, hf::BLOCK_SIZE, 4), &h.block_size.to_be_bytes());
        let checksum = DYNAMIC_CHECKSUM_OFFSET as u64;
        assert_eq!(at(&b, checksum, 4), &h.checksum.to_be_bytes());
        assert_eq!(at(&b, hf::PARENT_UNIQUE_ID, 16), &[0x51; 16]);
        let name = PARENT_NAME_OFFSET as u64;
        assert_eq!(at(&b, name, PARENT_NAME_BYTES), &[0x61; PARENT_NAME_BYTES]);
        let table = LOCATOR_TABLE_OFFSET as u64;
        assert_eq!(at(&b, table, 4), b"abcd");
    }

    #[test]
    fn locator_entry_and_bat_entry_sizes() {
        let e = ParentLocatorEntry {
            platform_code: *b"abcd",
            platform_data_space: 0x8182_8384,
            platform_data_length: 0,
            reserved: 0,
            platform_data_offset: 0x9192_9394_9596_9798,
        };
        let b = bytes(&e);
        use locator_entry_fields as lf;
        let space = e.platform_data_space.to_be_bytes();
        assert_eq!(at(&b, lf::PLATFORM_DATA_SPACE, 4), &space);
        let offset = e.platform_data_offset.to_be_bytes();
        assert_eq!(at(&b, lf::PLATFORM_DATA_OFFSET, 8), &offset);
        assert_eq!(BAT_ENTRY_BYTES, std::mem::size_of::<u32>() as u64);
    }

    #[test]
    fn parent_name_field_is_utf16_be_and_bounded() {
        let f = parent_name_field("Ab").unwrap();
        assert_eq!(&f[..6], &[0, b'A', 0, b'b', 0, 0]);
        assert!(parent_name_field(&"x".repeat(PARENT_NAME_BYTES / 2)).is_some());
        assert!(parent_name_field(&"x".repeat(PARENT_NAME_BYTES / 2 + 1)).is_none());
    }
}
