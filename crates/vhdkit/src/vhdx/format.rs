//! VHDX on-disk structures and constants (MS-VHDX rev 8.0, FORMAT.md Part B). Little-endian,
//! GUIDs in the Microsoft byte layout ([`crate::guid::from_vhdx_bytes`]). No I/O, no policy:
//! signatures, checksums and cross-structure rules are checked by the logic modules.

use std::io::Cursor;

use binrw::{binrw, BinRead};

use crate::error::{Error, Result};

/// 1 MiB: the alignment unit of everything after the first MiB.
pub const MIB: u64 = 1 << 20;
/// 4 KiB: header size, log sector size.
pub const KIB4: u64 = 4096;
/// 64 KiB.
pub const KIB64: u64 = 64 << 10;

/// File type identifier signature at offset 0.
pub const FILE_IDENTIFIER_SIGNATURE: [u8; 8] = *b"vhdxfile";
/// Header signature.
pub const HEADER_SIGNATURE: [u8; 4] = *b"head";
/// Region table signature.
pub const REGION_TABLE_SIGNATURE: [u8; 4] = *b"regi";
/// Metadata table signature.
pub const METADATA_TABLE_SIGNATURE: [u8; 8] = *b"metadata";
/// Log entry signature.
pub const LOG_ENTRY_SIGNATURE: [u8; 4] = *b"loge";
/// Data descriptor signature.
pub const DATA_DESCRIPTOR_SIGNATURE: [u8; 4] = *b"desc";
/// Zero descriptor signature.
pub const ZERO_DESCRIPTOR_SIGNATURE: [u8; 4] = *b"zero";
/// Log data sector signature.
pub const DATA_SECTOR_SIGNATURE: [u8; 4] = *b"data";

/// Offsets of the two headers.
pub const HEADER_OFFSETS: [u64; 2] = [0x10000, 0x20000];
/// Bytes covered by a header's checksum.
pub const HEADER_SIZE: usize = 4096;
/// Offsets of the two region tables.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [0x30000, 0x40000];
/// Bytes covered by a region table's checksum.
pub const REGION_TABLE_SIZE: usize = 64 << 10;
/// Most entries a region table may hold.
pub const MAX_REGION_ENTRIES: u32 = 2047;
/// Size of the metadata table at the start of the metadata region.
pub const METADATA_TABLE_SIZE: usize = 64 << 10;
/// Most entries a metadata table may hold.
pub const MAX_METADATA_ENTRIES: u16 = 2047;
/// Largest metadata item (spec).
pub const MAX_METADATA_ITEM_BYTES: u32 = 1 << 20;
/// Largest virtual disk (spec): 64 TiB.
pub const MAX_VIRTUAL_DISK_SIZE: u64 = 64 << 40;
/// Smallest and largest block size (spec).
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// See [`MIN_BLOCK_SIZE`].
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Sector bitmap block size: 1 MiB covering 2^23 sectors.
pub const SECTOR_BITMAP_BLOCK_SIZE: u64 = MIB;
/// Sectors covered by one sector bitmap block (one chunk).
pub const SECTORS_PER_CHUNK: u64 = 1 << 23;
/// Log data sectors that file offsets below this never target (identifier and headers).
pub const LOG_MIN_TARGET: u64 = 192 << 10;

/// Known region and metadata GUIDs, as on-disk bytes.
pub const BAT_REGION_GUID: [u8; 16] = [
    0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08,
];
/// Metadata region.
pub const METADATA_REGION_GUID: [u8; 16] = [
    0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E,
];
/// File parameters item.
pub const FILE_PARAMETERS_GUID: [u8; 16] = [
    0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B,
];
/// Virtual disk size item.
pub const VIRTUAL_DISK_SIZE_GUID: [u8; 16] = [
    0x24, 0x42, 0xA5, 0x2F, 0x1B, 0xCD, 0x76, 0x48, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8,
];
/// Virtual disk id item.
pub const VIRTUAL_DISK_ID_GUID: [u8; 16] = [
    0xAB, 0x12, 0xCA, 0xBE, 0xE6, 0xB2, 0x23, 0x45, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46,
];
/// Logical sector size item.
pub const LOGICAL_SECTOR_SIZE_GUID: [u8; 16] = [
    0x1D, 0xBF, 0x41, 0x81, 0x6F, 0xA9, 0x09, 0x47, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F,
];
/// Physical sector size item.
pub const PHYSICAL_SECTOR_SIZE_GUID: [u8; 16] = [
    0xC7, 0x48, 0xA3, 0xCD, 0x5D, 0x44, 0x71, 0x44, 0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56,
];
/// Parent locator item.
pub const PARENT_LOCATOR_GUID: [u8; 16] = [
    0x2D, 0x5F, 0xD3, 0xA8, 0x0B, 0xB3, 0x4D, 0x45, 0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C,
];
/// The VHDX parent locator type.
pub const VHDX_LOCATOR_TYPE_GUID: [u8; 16] = [
    0xB7, 0xEF, 0x4A, 0xB0, 0x9E, 0xD1, 0x81, 0x4A, 0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13,
];

/// Region entry flag: required.
pub const REGION_REQUIRED: u32 = 1;
/// Metadata entry flags.
pub const META_IS_USER: u32 = 1;
/// See [`META_IS_USER`].
pub const META_IS_VIRTUAL_DISK: u32 = 2;
/// See [`META_IS_USER`].
pub const META_IS_REQUIRED: u32 = 4;
/// File parameters flags.
pub const FP_LEAVE_BLOCK_ALLOCATED: u32 = 1;
/// See [`FP_LEAVE_BLOCK_ALLOCATED`].
pub const FP_HAS_PARENT: u32 = 2;

/// BAT entry states.
pub const PAYLOAD_BLOCK_NOT_PRESENT: u8 = 0;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_UNDEFINED: u8 = 1;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_ZERO: u8 = 2;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_UNMAPPED: u8 = 3;
/// Reserved; qemu's draft-0.95 "UNMAPPED" value.
pub const PAYLOAD_BLOCK_UNMAPPED_V095: u8 = 5;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u8 = 6;
/// See [`PAYLOAD_BLOCK_NOT_PRESENT`].
pub const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u8 = 7;
/// Sector bitmap entry states.
pub const SB_BLOCK_NOT_PRESENT: u8 = 0;
/// See [`SB_BLOCK_NOT_PRESENT`].
pub const SB_BLOCK_PRESENT: u8 = 6;
/// Bits 3..19 of a BAT entry are reserved.
pub const BAT_RESERVED_MASK: u64 = 0x000F_FFF8;
/// Bits 20..63: FileOffsetMB.
pub const BAT_OFFSET_MASK: u64 = 0xFFFF_FFFF_FFF0_0000;

/// File type identifier (first 520 bytes of the first 64 KiB).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    /// `vhdxfile`.
    pub signature: [u8; 8],
    /// UTF-16LE, optionally NUL-terminated; diagnostic only.
    pub creator: [u16; 256],
}

/// Header (first 80 bytes of 4 KiB; the rest is reserved and covered by the checksum).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `head`.
    pub signature: [u8; 4],
    /// CRC-32C over 4 KiB with this field zeroed.
    pub checksum: u32,
    /// Larger is newer.
    pub sequence_number: u64,
    /// Changed before the first write of a session.
    pub file_write_guid: [u8; 16],
    /// Changed before the first user-visible change; children link to it.
    pub data_write_guid: [u8; 16],
    /// Zero: no log to replay.
    pub log_guid: [u8; 16],
    /// Must be 0.
    pub log_version: u16,
    /// Must be 1.
    pub version: u16,
    /// Multiple of 1 MiB.
    pub log_length: u32,
    /// Multiple of 1 MiB, >= 1 MiB.
    pub log_offset: u64,
}

/// Region table header (16 bytes).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTableHeader {
    /// `regi`.
    pub signature: [u8; 4],
    /// CRC-32C over 64 KiB with this field zeroed.
    pub checksum: u32,
    /// At most 2047.
    pub entry_count: u32,
    /// Reserved.
    pub reserved: u32,
}

/// Region table entry (32 bytes).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTableEntry {
    /// Region kind.
    pub guid: [u8; 16],
    /// 1 MiB multiple, >= 1 MiB.
    pub file_offset: u64,
    /// 1 MiB multiple.
    pub length: u32,
    /// Bit 0: required.
    pub flags: u32,
}

/// Metadata table header (32 bytes).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTableHeader {
    /// `metadata`.
    pub signature: [u8; 8],
    /// Reserved.
    pub reserved: u16,
    /// At most 2047.
    pub entry_count: u16,
    /// Reserved.
    pub reserved2: [u8; 20],
}

/// Metadata table entry (32 bytes).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTableEntry {
    /// Item kind; (item_id, IsUser) unique.
    pub item_id: [u8; 16],
    /// From the start of the metadata region; >= 64 KiB unless length is 0.
    pub offset: u32,
    /// At most 1 MiB.
    pub length: u32,
    /// IsUser, IsVirtualDisk, IsRequired.
    pub flags: u32,
    /// Reserved.
    pub reserved: u32,
}

/// File parameters item (8 bytes).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileParameters {
    /// Power of two, 1..256 MiB.
    pub block_size: u32,
    /// LeaveBlockAllocated, HasParent.
    pub flags: u32,
}

/// Parent locator header (20 bytes).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocatorHeader {
    /// Must be the VHDX locator type.
    pub locator_type: [u8; 16],
    /// Reserved.
    pub reserved: u16,
    /// Entries that follow.
    pub key_value_count: u16,
}

/// Parent locator entry (12 bytes); offsets from the start of the item.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLocatorEntry {
    /// Key offset from the item start.
    pub key_offset: u32,
    /// Value offset from the item start.
    pub value_offset: u32,
    /// Key length in bytes.
    pub key_length: u16,
    /// Value length in bytes.
    pub value_length: u16,
}

/// Log entry header (64 bytes).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntryHeader {
    /// `loge`.
    pub signature: [u8; 4],
    /// CRC-32C over EntryLength bytes with this field zeroed.
    pub checksum: u32,
    /// 4 KiB multiple.
    pub entry_length: u32,
    /// Ring offset of the first entry of the sequence.
    pub tail: u32,
    /// > 0.
    pub sequence_number: u64,
    /// Descriptors that follow.
    pub descriptor_count: u32,
    /// Reserved.
    pub reserved: u32,
    /// Must match the header's.
    pub log_guid: [u8; 16],
    /// Stable file size when written.
    pub flushed_file_offset: u64,
    /// Size all allocated structures fit in.
    pub last_file_offset: u64,
}

/// Log descriptor (32 bytes): `desc` (data) or `zero`.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDescriptor {
    /// `desc` or `zero`.
    pub signature: [u8; 4],
    /// Data: TrailingBytes (target bytes 4092..4096); zero: reserved.
    pub trailing_bytes: [u8; 4],
    /// Data: LeadingBytes (target bytes 0..8); zero: ZeroLength (u64 LE).
    pub leading_bytes: [u8; 8],
    /// 4 KiB multiple.
    pub file_offset: u64,
    /// The entry's sequence number.
    pub sequence_number: u64,
}

/// Log data sector header fields (first 8 bytes; the low sequence half is at +4092).
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDataSectorHead {
    /// `data`.
    pub signature: [u8; 4],
    /// High 32 bits of the sequence number.
    pub sequence_high: u32,
}

/// Parse a little-endian struct from `buf`, reporting `structure` at `offset` on failure.
pub fn parse<T>(buf: &[u8], structure: &'static str, offset: u64) -> Result<T>
where
    T: for<'a> BinRead<Args<'a> = ()>,
{
    T::read_le(&mut Cursor::new(buf)).map_err(|e| {
        Error::corrupt(
            structure,
            offset,
            format!(
                "cannot parse {} bytes: {}",
                buf.len(),
                crate::util::binrw_text(&e)
            ),
        )
    })
}

/// CRC-32C of `buf` with the 4 bytes at `checksum_at` taken as zero.
pub fn crc32c_with_zeroed(buf: &[u8], checksum_at: usize) -> u32 {
    let end = checksum_at.saturating_add(4).min(buf.len());
    let head = buf.get(..checksum_at.min(buf.len())).unwrap_or(&[]);
    let tail = buf.get(end..).unwrap_or(&[]);
    let c = crc32c::crc32c(head);
    let c = crc32c::crc32c_append(c, &[0u8; 4][..end.saturating_sub(checksum_at.min(end))]);
    crc32c::crc32c_append(c, tail)
}

// ---- vhdxlink ----

/// Where a metadata table entry's `offset` and `length` ([`MetadataItemPlace`]) start in it.
pub const METADATA_ENTRY_PLACE_OFFSET: u64 = 16;

/// The `offset` and `length` fields of a metadata table entry (8 bytes), the part a moved or
/// resized item rewrites.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataItemPlace {
    /// From the start of the metadata region.
    pub offset: u32,
    /// Item length in bytes.
    pub length: u32,
}

/// Bytes of the parent locator header ([`ParentLocatorHeader`]); the entries follow it.
pub const PARENT_LOCATOR_HEADER_BYTES: usize = 20;
/// Bytes of one parent locator entry ([`ParentLocatorEntry`]).
pub const PARENT_LOCATOR_ENTRY_BYTES: usize = 12;
/// Where `key_value_count` lies in the parent locator header.
pub const PARENT_LOCATOR_COUNT_OFFSET: u64 = 18;

// ---- vhdxread ----

/// Size of the file type identifier structure read at offset 0.
pub const FILE_IDENTIFIER_SIZE: usize = 520;
/// Offset of the CRC-32C field in a header, region table and log entry.
pub const CHECKSUM_OFFSET: usize = 4;
/// Offset of `log_version` inside a header (where a bad LogVersion is reported).
pub const HEADER_LOG_VERSION_OFFSET: u64 = 64;
/// Header `version` this crate reads and writes.
pub const HEADER_VERSION: u16 = 1;
/// Size of [`RegionTableHeader`]; entries follow it.
pub const REGION_TABLE_HEADER_SIZE: u64 = 16;
/// Size of one [`RegionTableEntry`].
pub const REGION_TABLE_ENTRY_SIZE: u64 = 32;
/// Offset of `entry_count` inside a region table header.
pub const REGION_TABLE_ENTRY_COUNT_OFFSET: u64 = 8;
/// Size of [`MetadataTableHeader`]; entries follow it.
pub const METADATA_TABLE_HEADER_SIZE: u64 = 32;
/// Size of one [`MetadataTableEntry`].
pub const METADATA_TABLE_ENTRY_SIZE: u64 = 32;
/// Offset of `entry_count` inside a metadata table header.
pub const METADATA_TABLE_ENTRY_COUNT_OFFSET: u64 = 10;
/// Size of one BAT entry.
pub const BAT_ENTRY_SIZE: u64 = 8;
/// Bits 0..2 of a BAT entry: the state.
pub const BAT_STATE_MASK: u64 = 7;
/// Size of [`LogEntryHeader`]; descriptors follow it.
pub const LOG_ENTRY_HEADER_SIZE: u64 = 64;
/// Size of one [`LogDescriptor`].
pub const LOG_DESCRIPTOR_SIZE: u64 = 32;
/// Log sectors (entry header sectors and data sectors) are 4 KiB.
pub const LOG_SECTOR_SIZE: u64 = KIB4;
/// Target bytes a data descriptor carries at the start of its sector (LeadingBytes).
pub const LOG_LEADING_BYTES: usize = 8;
/// Target bytes a data descriptor carries at the end of its sector (TrailingBytes).
pub const LOG_TRAILING_BYTES: usize = 4;
/// Target bytes a data sector carries: the rest of the 4 KiB.
pub const LOG_DATA_BYTES: usize = 4096 - LOG_LEADING_BYTES - LOG_TRAILING_BYTES;
/// Where [`LogDataSector::data`] starts inside a data sector (after [`LogDataSectorHead`]).
pub const LOG_DATA_SECTOR_DATA_OFFSET: usize = 8;
/// Where [`LogDataSector::sequence_low`] sits inside a data sector. Readers parse the head and
/// this field alone rather than the whole sector when they only validate it.
pub const LOG_DATA_SECTOR_SEQUENCE_LOW_OFFSET: usize = LOG_DATA_SECTOR_DATA_OFFSET + LOG_DATA_BYTES;

/// Log data sector (4 KiB): the middle 4084 bytes of the target sector between two halves of
/// the sequence number; the descriptor holds the first 8 and last 4 target bytes.
#[binrw]
#[brw(little)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDataSector {
    /// `data`.
    pub signature: [u8; 4],
    /// High 32 bits of the sequence number.
    pub sequence_high: u32,
    /// Target bytes 8..4092.
    pub data: [u8; LOG_DATA_BYTES],
    /// Low 32 bits of the sequence number.
    pub sequence_low: u32,
}

/// Encode a little-endian struct into bytes.
pub fn encode<T>(v: &T) -> Vec<u8>
where
    T: for<'a> binrw::BinWrite<Args<'a> = ()>,
{
    let mut c = Cursor::new(Vec::new());
    // Writing fixed-size plain fields into a Vec cannot fail.
    let _ = v.write_le(&mut c);
    c.into_inner()
}

/// Set the little-endian CRC-32C of `buf` (computed with the field zeroed) at [`CHECKSUM_OFFSET`].
pub fn set_checksum(buf: &mut [u8]) {
    let crc = crc32c_with_zeroed(buf, CHECKSUM_OFFSET);
    if let Some(dst) = buf.get_mut(CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4) {
        dst.copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use binrw::BinWrite;

    fn round_trip<T>(v: &T, len: usize)
    where
        T: for<'a> BinRead<Args<'a> = ()>
            + for<'a> BinWrite<Args<'a> = ()>
            + PartialEq
            + std::fmt::Debug,
    {
        let mut c = Cursor::new(Vec::new());
        v.write_le(&mut c).unwrap();
        let bytes = c.into_inner();
        assert_eq!(bytes.len(), len);
        let back: T = parse(&bytes, "t", 0).unwrap();
        assert_eq!(&back, v);
    }

    #[test]
    fn struct_sizes_and_round_trips() {
        round_trip(
            &FileIdentifier {
                signature: FILE_IDENTIFIER_SIGNATURE,
                creator: [0x41; 256],
            },
            520,
        );
        round_trip(
            &Header {
                signature: HEADER_SIGNATURE,
                checksum: 1,
                sequence_number: 2,
                file_write_guid: [3; 16],
                data_write_guid: [4; 16],
                log_guid: [5; 16],
                log_version: 0,
                version: 1,
                log_length: 1 << 20,
                log_offset: 1 << 20,
            },
            80,
        );
        round_trip(
            &RegionTableHeader {
                signature: REGION_TABLE_SIGNATURE,
                checksum: 7,
                entry_count: 2,
                reserved: 0,
            },
            16,
        );
        round_trip(
            &RegionTableEntry {
                guid: BAT_REGION_GUID,
                file_offset: 3 << 20,
                length: 1 << 20,
                flags: 1,
            },
            32,
        );
        round_trip(
            &MetadataTableHeader {
                signature: METADATA_TABLE_SIGNATURE,
                reserved: 0,
                entry_count: 5,
                reserved2: [0; 20],
            },
            32,
        );
        round_trip(
            &MetadataTableEntry {
                item_id: FILE_PARAMETERS_GUID,
                offset: 0x10000,
                length: 8,
                flags: 4,
                reserved: 0,
            },
            32,
        );
        round_trip(
            &FileParameters {
                block_size: 1 << 21,
                flags: 2,
            },
            8,
        );
        round_trip(
            &ParentLocatorHeader {
                locator_type: VHDX_LOCATOR_TYPE_GUID,
                reserved: 0,
                key_value_count: 5,
            },
            20,
        );
        round_trip(
            &ParentLocatorEntry {
                key_offset: 80,
                value_offset: 108,
                key_length: 28,
                value_length: 76,
            },
            12,
        );
        round_trip(
            &LogEntryHeader {
                signature: LOG_ENTRY_SIGNATURE,
                checksum: 1,
                entry_length: 8192,
                tail: 0,
                sequence_number: 7,
                descriptor_count: 1,
                reserved: 0,
                log_guid: [9; 16],
                flushed_file_offset: 1 << 20,
                last_file_offset: 2 << 20,
            },
            64,
        );
        round_trip(
            &LogDescriptor {
                signature: DATA_DESCRIPTOR_SIGNATURE,
                trailing_bytes: [1; 4],
                leading_bytes: [2; 8],
                file_offset: 0x200000,
                sequence_number: 7,
            },
            32,
        );
        round_trip(
            &LogDataSectorHead {
                signature: DATA_SECTOR_SIGNATURE,
                sequence_high: 0,
            },
            8,
        );
        round_trip(
            &LogDataSector {
                signature: DATA_SECTOR_SIGNATURE,
                sequence_high: 1,
                data: [7; LOG_DATA_BYTES],
                sequence_low: 2,
            },
            4096,
        );
    }

    #[test]
    fn truncated_parse_is_corruption() {
        let e = parse::<Header>(&[0u8; 10], "vhdx header 1", 0x10000).unwrap_err();
        assert!(e.is_corruption());
        assert!(
            e.to_string().contains("vhdx header 1 at offset 0x10000"),
            "{e}"
        );
    }

    #[test]
    fn crc_with_zeroed_field() {
        let mut b = b"1234XXXX56789".to_vec();
        let c = crc32c_with_zeroed(&b, 4);
        b[4..8].copy_from_slice(&[0; 4]);
        assert_eq!(c, crc32c::crc32c(&b));
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    /// The offsets and sizes named for the link editor agree with the structs they point into.
    #[test]
    fn link_layouts_match_the_structs() {
        fn bytes<T: for<'a> BinWrite<Args<'a> = ()>>(v: &T) -> Vec<u8> {
            let mut c = Cursor::new(Vec::new());
            v.write_le(&mut c).unwrap();
            c.into_inner()
        }
        let place = MetadataItemPlace {
            offset: 0x10028,
            length: 580,
        };
        round_trip(&place, 8);
        let entry = bytes(&MetadataTableEntry {
            item_id: PARENT_LOCATOR_GUID,
            offset: place.offset,
            length: place.length,
            flags: 0,
            reserved: 0,
        });
        assert_eq!(entry.len() as u64, METADATA_TABLE_ENTRY_SIZE);
        let at = METADATA_ENTRY_PLACE_OFFSET as usize;
        assert_eq!(entry[at..at + 8], bytes(&place)[..]);
        let table = bytes(&MetadataTableHeader {
            signature: METADATA_TABLE_SIGNATURE,
            reserved: 0,
            entry_count: 1,
            reserved2: [0; 20],
        });
        assert_eq!(table.len() as u64, METADATA_TABLE_HEADER_SIZE);
        let header = bytes(&ParentLocatorHeader {
            locator_type: VHDX_LOCATOR_TYPE_GUID,
            reserved: 0,
            key_value_count: 0x0102,
        });
        assert_eq!(header.len(), PARENT_LOCATOR_HEADER_BYTES);
        let at = PARENT_LOCATOR_COUNT_OFFSET as usize;
        assert_eq!(header[at..at + 2], [0x02, 0x01]);
        let e = bytes(&ParentLocatorEntry {
            key_offset: 0,
            value_offset: 0,
            key_length: 0,
            value_length: 0,
        });
        assert_eq!(e.len(), PARENT_LOCATOR_ENTRY_BYTES);
    }
}

// ---- check ----

/// Header layout beyond [`Header`] (its checksum is at [`CHECKSUM_OFFSET`]).
pub mod header_fields {
    /// Bytes of the fields of [`super::Header`]; the rest of the 4 KiB is reserved.
    #[cfg(test)]
    pub const BYTES: usize = 80;
}

/// Region table layout beyond [`RegionTableHeader`] and [`RegionTableEntry`] (checksum at
/// [`CHECKSUM_OFFSET`], sizes [`REGION_TABLE_HEADER_SIZE`] and [`REGION_TABLE_ENTRY_SIZE`]).
pub mod region_table_fields {
    /// An entry's `file_offset` (then `length`), from the entry's first byte.
    pub const ENTRY_FILE_OFFSET: u64 = 16;
}

/// File parameters item layout beyond [`FileParameters`].
pub mod file_parameters_fields {
    /// Bytes of the item.
    pub const BYTES: u64 = 8;
    /// `flags`, from the item's first byte.
    pub const FLAGS: u64 = 4;
    /// The flag bits the spec defines; the others are reserved.
    pub const KNOWN_FLAGS: u32 = super::FP_LEAVE_BLOCK_ALLOCATED | super::FP_HAS_PARENT;
}

/// Lengths of the fixed-size metadata items (MS-VHDX 2.6.2).
pub mod metadata_item_bytes {
    /// Virtual Disk Size: a `u64`.
    pub const VIRTUAL_DISK_SIZE: u64 = 8;
    /// Virtual Disk ID: a GUID.
    pub const VIRTUAL_DISK_ID: u64 = 16;
    /// Logical and Physical Sector Size: a `u32` each.
    pub const SECTOR_SIZE: u64 = 4;
}

#[cfg(test)]
mod field_tests {
    //! One pinning test per structure for the offsets the checker names.
    use super::*;
    use crate::util::binrw_bytes as bytes;

    /// The four little-endian bytes of `b` at `at`.
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn header_offsets() {
        let h = bytes(&Header {
            signature: HEADER_SIGNATURE,
            checksum: 0x0102_0304,
            sequence_number: 0,
            file_write_guid: [0; 16],
            data_write_guid: [0; 16],
            log_guid: [0; 16],
            log_version: 0,
            version: 1,
            log_length: 0,
            log_offset: 0,
        });
        assert_eq!(h.len(), header_fields::BYTES);
        assert_eq!(u32_at(&h, CHECKSUM_OFFSET), 0x0102_0304);
    }

    #[test]
    fn region_table_offsets() {
        let t = bytes(&RegionTableHeader {
            signature: REGION_TABLE_SIGNATURE,
            checksum: 0x0102_0304,
            entry_count: 0,
            reserved: 0,
        });
        assert_eq!(t.len() as u64, REGION_TABLE_HEADER_SIZE);
        assert_eq!(u32_at(&t, CHECKSUM_OFFSET), 0x0102_0304);
        let e = bytes(&RegionTableEntry {
            guid: [0; 16],
            file_offset: 0x0102_0304_0506_0708,
            length: 0,
            flags: 0,
        });
        assert_eq!(e.len() as u64, REGION_TABLE_ENTRY_SIZE);
        let o = region_table_fields::ENTRY_FILE_OFFSET as usize;
        assert_eq!(&e[o..o + 8], &0x0102_0304_0506_0708u64.to_le_bytes());
    }

    #[test]
    fn metadata_table_header_offsets() {
        let m = bytes(&MetadataTableHeader {
            signature: METADATA_TABLE_SIGNATURE,
            reserved: 0,
            entry_count: 0x0102,
            reserved2: [0; 20],
        });
        assert_eq!(m.len() as u64, METADATA_TABLE_HEADER_SIZE);
        let o = METADATA_TABLE_ENTRY_COUNT_OFFSET as usize;
        assert_eq!(&m[o..o + 2], &0x0102u16.to_le_bytes());
    }

    #[test]
    fn file_parameters_and_bat_entry_fields() {
        let p = bytes(&FileParameters {
            block_size: 0,
            flags: 0x0102_0304,
        });
        assert_eq!(p.len() as u64, file_parameters_fields::BYTES);
        assert_eq!(
            u32_at(&p, file_parameters_fields::FLAGS as usize),
            0x0102_0304
        );
        assert_eq!(file_parameters_fields::KNOWN_FLAGS, 3);
        assert_eq!(BAT_ENTRY_SIZE, std::mem::size_of::<u64>() as u64);
        assert_eq!(BAT_RESERVED_MASK & BAT_STATE_MASK, 0);
        assert_eq!(BAT_OFFSET_MASK & BAT_STATE_MASK, 0);
    }
}
