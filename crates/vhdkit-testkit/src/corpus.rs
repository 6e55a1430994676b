//! The hostile corpus for `vhdkit check`: well-formed images from the independent builders in
//! this crate, each broken in exactly one way, with the finding code `check` must report.
//! Deterministic (no randomness besides fixed GUIDs), so every run sees the same bytes.

use uuid::Uuid;

use crate::vhd::{Locator, VhdBuilder};
use crate::vhdx::{Kind as XKind, LogOptions, VhdxBuilder};

const MIB: u64 = 1 << 20;

/// One malformed case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique name.
    pub name: String,
    /// Files to write into one folder: the first is the disk to check; the others are its
    /// chain (parents).
    pub files: Vec<(String, Vec<u8>)>,
    /// The finding code `check` must report.
    pub expect: &'static str,
    /// Whether the check follows the chain (`--chain`).
    pub chain: bool,
}

fn be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn le16(b: &mut [u8], at: u64, v: u16) {
    let at = at as usize;
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn le32(b: &mut [u8], at: u64, v: u32) {
    let at = at as usize;
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn le64(b: &mut [u8], at: u64, v: u64) {
    let at = at as usize;
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn vhd_ck(b: &[u8], at: usize) -> u32 {
    crate::vhd::checksum(b, at)
}

fn id(n: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = n;
    a[15] = 0x5a;
    a
}

/// Dynamic VHD, 8 MiB, 2 blocks written.
fn vhd_dyn() -> crate::vhd::BuiltVhd {
    let mut b = VhdBuilder::dynamic(8 * MIB).unique_id(id(1));
    b.write(0, &[0xab; 4096]);
    b.write(5 * MIB, &[0xcd; 4096]);
    b.build()
}

/// Differencing VHD over `vhd_parent()`, W2ku + W2ru locators, 1 block written.
fn vhd_diff_builder(parent_id: [u8; 16], size: u64, parent_file: &str) -> VhdBuilder {
    let mut b = VhdBuilder::differencing(size, parent_id)
        .unique_id(id(2))
        .parent_name(&format!("C:\\lab\\{parent_file}"))
        .locator(Locator::w2ku(&format!("C:\\lab\\{parent_file}")))
        .locator(Locator::w2ru(&format!(".\\{parent_file}")));
    b.write(MIB, &[0x11; 512]);
    b
}

fn vhd_diff() -> crate::vhd::BuiltVhd {
    vhd_diff_builder(id(1), 8 * MIB, "parent.vhd").build()
}

fn vhd_fixed() -> crate::vhd::BuiltVhd {
    let mut b = VhdBuilder::fixed(MIB).unique_id(id(3));
    b.write(0, &[0x77; 512]);
    b.build()
}

fn vhdx_dyn() -> crate::vhdx::Built {
    let mut b = VhdxBuilder::new(XKind::Dynamic, 64 * MIB, 2 << 20, 512);
    b.write(0, &[0xab; 8192]);
    b.write(10 * MIB, &[0xcd; 4096]);
    b.build()
}

fn vhdx_diff() -> crate::vhdx::Built {
    let mut b = VhdxBuilder::new(XKind::Differencing, 64 * MIB, 2 << 20, 512);
    b.parent_linkage = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
    b.relative_path = Some(".\\parent.vhdx".into());
    b.write(0, &[0xab; 4096]);
    b.build()
}

fn one(name: &str, bytes: Vec<u8>, expect: &'static str, ext: &str) -> Case {
    Case {
        name: name.to_string(),
        files: vec![(format!("{name}.{ext}"), bytes)],
        expect,
        chain: false,
    }
}

/// Every case. Chain cases come last; `deep_chain` adds the 1000-deep chain.
pub fn cases(deep_chain: bool) -> Vec<Case> {
    let mut v = Vec::new();
    vhd_cases(&mut v);
    vhdx_cases(&mut v);
    chain_cases(&mut v, deep_chain);
    v
}

fn vhd_cases(v: &mut Vec<Case>) {
    let base = vhd_dyn();
    let fo = base.footer_offset;
    let h = base.header_offset.unwrap_or(512);
    let bat = base.bat_offset.unwrap_or(1536);
    let blk0 = *base.blocks.values().next().unwrap_or(&0);
    let len = base.bytes.len();
    let add = |name: &str, expect: &'static str, f: &dyn Fn(&mut crate::vhd::BuiltVhd)| {
        let mut b = base.clone();
        f(&mut b);
        one(name, b.bytes, expect, "vhd")
    };
    // Truncation at every structure boundary.
    v.push(add("vhd-trunc-0", "file.not_a_disk", &|b| {
        b.bytes.truncate(0)
    }));
    v.push(add("vhd-trunc-300", "file.not_a_disk", &|b| {
        b.bytes.truncate(300)
    }));
    v.push(add("vhd-trunc-front-copy", "vhd.header.truncated", &|b| {
        b.bytes.truncate(512)
    }));
    v.push(add("vhd-trunc-header", "vhd.footer.missing", &|b| {
        b.bytes.truncate(h + 1024)
    }));
    v.push(add("vhd-trunc-mid-header", "vhd.footer.missing", &|b| {
        b.bytes.truncate(h + 700)
    }));
    v.push(add("vhd-trunc-bat", "vhd.footer.missing", &|b| {
        b.bytes.truncate(bat + 512)
    }));
    v.push(add("vhd-trunc-mid-block", "vhd.footer.missing", &|b| {
        b.bytes.truncate(blk0 + 4096)
    }));
    v.push(add("vhd-trunc-footer", "vhd.footer.missing", &|b| {
        b.bytes.truncate(fo)
    }));
    v.push(add("vhd-trunc-footer-1", "vhd.footer.short", &|b| {
        b.bytes.truncate(len - 1)
    }));
    v.push(add("vhd-trunc-footer-100", "vhd.footer.missing", &|b| {
        b.bytes.truncate(len - 100)
    }));
    // Checksums.
    v.push(add("vhd-footer-checksum", "vhd.footer.checksum", &|b| {
        b.bytes[fo + 64] ^= 1
    }));
    v.push(add(
        "vhd-footer-copy-checksum",
        "vhd.footer_copy.checksum",
        &|b| b.bytes[64] ^= 1,
    ));
    v.push(add(
        "vhd-footer-both-checksums",
        "vhd.footer.checksum",
        &|b| {
            b.bytes[64] ^= 1;
            b.bytes[fo + 64] ^= 1;
        },
    ));
    v.push(add(
        "vhd-footer-copy-zeroed",
        "vhd.footer_copy.missing",
        &|b| b.bytes[..512].fill(0),
    ));
    v.push(add("vhd-footer-end-zeroed", "vhd.footer.missing", &|b| {
        b.bytes[fo..].fill(0)
    }));
    v.push(add(
        "vhd-footer-copy-differs",
        "vhd.footer_copy.differs",
        &|b| {
            b.bytes[24] ^= 1; // time stamp of the copy
            let c = vhd_ck(&b.bytes[..512], 64);
            be32(&mut b.bytes, 64, c);
        },
    ));
    v.push(add("vhd-header-checksum", "vhd.header.checksum", &|b| {
        b.bytes[h + 36] ^= 1
    }));
    v.push(add("vhd-header-cookie", "vhd.header.cookie", &|b| {
        b.bytes[h] = b'X'
    }));
    // Footer fields (both copies, checksums fixed).
    let footer_field = |name: &str, expect: &'static str, at: usize, val: u64, wide: bool| {
        let mut b = base.clone();
        for o in [0, fo] {
            if wide {
                be64(&mut b.bytes, o + at, val);
            } else {
                be32(&mut b.bytes, o + at, val as u32);
            }
        }
        b.fix_footer_checksums();
        one(name, b.bytes, expect, "vhd")
    };
    v.push(footer_field(
        "vhd-footer-version",
        "vhd.footer.version",
        12,
        0x0002_0000,
        false,
    ));
    v.push(footer_field(
        "vhd-footer-features-zero",
        "vhd.footer.features",
        8,
        0,
        false,
    ));
    v.push(footer_field(
        "vhd-footer-disk-type-7",
        "vhd.footer.disk_type",
        60,
        7,
        false,
    ));
    v.push(footer_field(
        "vhd-footer-disk-type-0",
        "vhd.footer.disk_type",
        60,
        0,
        false,
    ));
    v.push(footer_field(
        "vhd-footer-size-zero",
        "vhd.footer.size_zero",
        48,
        0,
        true,
    ));
    v.push(footer_field(
        "vhd-footer-size-unaligned",
        "vhd.footer.size_unaligned",
        48,
        8 * MIB + 1,
        true,
    ));
    v.push(footer_field(
        "vhd-footer-size-max",
        "vhd.footer.size_too_large",
        48,
        u64::MAX - 511,
        true,
    ));
    v.push(footer_field(
        "vhd-footer-size-4t",
        "vhd.bat.too_small",
        48,
        4 << 40,
        true,
    ));
    v.push(footer_field(
        "vhd-footer-data-offset-eof",
        "vhd.header.truncated",
        16,
        1 << 40,
        true,
    ));
    v.push(footer_field(
        "vhd-footer-data-offset-zero",
        "vhd.footer.data_offset",
        16,
        0,
        true,
    ));
    v.push(footer_field(
        "vhd-footer-data-offset-max",
        "vhd.footer.data_offset",
        16,
        u64::MAX,
        true,
    ));
    v.push(footer_field(
        "vhd-footer-data-offset-overlap",
        "vhd.header.cookie",
        16,
        0x600,
        true,
    ));
    v.push(footer_field(
        "vhd-footer-saved-state",
        "vhd.footer.saved_state",
        84,
        0x0100_0000,
        false,
    ));
    // Header fields (checksum fixed).
    let header_field = |name: &str, expect: &'static str, at: usize, val: u64, wide: bool| {
        let mut b = base.clone();
        if wide {
            be64(&mut b.bytes, h + at, val);
        } else {
            be32(&mut b.bytes, h + at, val as u32);
        }
        b.fix_header_checksum();
        one(name, b.bytes, expect, "vhd")
    };
    v.push(header_field(
        "vhd-header-version",
        "vhd.header.version",
        24,
        0x0009_0000,
        false,
    ));
    v.push(header_field(
        "vhd-block-size-zero",
        "vhd.header.block_size",
        32,
        0,
        false,
    ));
    v.push(header_field(
        "vhd-block-size-odd",
        "vhd.header.block_size",
        32,
        3000,
        false,
    ));
    v.push(header_field(
        "vhd-block-size-max",
        "vhd.header.block_size",
        32,
        u64::from(u32::MAX),
        false,
    ));
    v.push(header_field(
        "vhd-block-size-512m",
        "vhd.header.block_size",
        32,
        512 << 20,
        false,
    ));
    v.push(header_field(
        "vhd-bat-entries-zero",
        "vhd.bat.too_small",
        28,
        0,
        false,
    ));
    v.push(header_field(
        "vhd-bat-entries-max",
        "vhd.bat.past_eof",
        28,
        u64::from(u32::MAX),
        false,
    ));
    v.push(header_field(
        "vhd-bat-entries-excess",
        "vhd.bat.excess_entries",
        28,
        5,
        false,
    ));
    v.push(header_field(
        "vhd-bat-offset-eof",
        "vhd.bat.past_eof",
        16,
        1 << 50,
        true,
    ));
    v.push(header_field(
        "vhd-bat-offset-max",
        "vhd.bat.past_eof",
        16,
        u64::MAX,
        true,
    ));
    v.push(header_field(
        "vhd-bat-offset-unaligned",
        "vhd.bat.unaligned",
        16,
        bat as u64 + 3,
        true,
    ));
    v.push(header_field(
        "vhd-bat-offset-zero",
        "vhd.bat.overlaps_metadata",
        16,
        0,
        true,
    ));
    v.push(header_field(
        "vhd-bat-offset-header",
        "vhd.bat.overlaps_metadata",
        16,
        h as u64,
        true,
    ));
    // BAT entries.
    let bat_entry = |name: &str, expect: &'static str, i: usize, val: u32| {
        let mut b = base.clone();
        b.set_bat(i, val);
        one(name, b.bytes, expect, "vhd")
    };
    let blk0_sector = (blk0 / 512) as u32;
    v.push(bat_entry(
        "vhd-bat-entry-eof",
        "vhd.block.past_eof",
        1,
        0x00F0_0000,
    ));
    v.push(bat_entry(
        "vhd-bat-entry-max",
        "vhd.block.past_eof",
        1,
        0xFFFF_FFFE,
    ));
    v.push(bat_entry(
        "vhd-bat-entry-zero",
        "vhd.block.overlaps_metadata",
        1,
        0,
    ));
    v.push(bat_entry(
        "vhd-bat-entry-header",
        "vhd.block.overlaps_metadata",
        1,
        (h / 512) as u32,
    ));
    v.push(bat_entry(
        "vhd-bat-entry-bat",
        "vhd.block.overlaps_metadata",
        1,
        (bat / 512) as u32,
    ));
    v.push(bat_entry(
        "vhd-bat-entry-duplicate",
        "vhd.block.overlap",
        3,
        blk0_sector,
    ));
    v.push(bat_entry(
        "vhd-bat-entry-overlap",
        "vhd.block.overlap",
        3,
        blk0_sector + 8,
    ));

    // Differencing: parent name and locators.
    let d = vhd_diff();
    let dh = d.header_offset.unwrap_or(512);
    let addd = |name: &str, expect: &'static str, f: &dyn Fn(&mut crate::vhd::BuiltVhd)| {
        let mut b = d.clone();
        f(&mut b);
        b.fix_header_checksum();
        one(name, b.bytes, expect, "vhd")
    };
    let l0 = d.locator_entry(0);
    let l1 = d.locator_entry(1);
    let dbat = d.bat_offset.unwrap_or(0);
    let dlen = d.bytes.len();
    v.push(addd(
        "vhd-locator-offset-eof",
        "vhd.locator.out_of_bounds",
        &|b| be64(&mut b.bytes, l0 + 16, 1 << 40),
    ));
    v.push(addd(
        "vhd-locator-offset-max",
        "vhd.locator.out_of_bounds",
        &|b| be64(&mut b.bytes, l0 + 16, u64::MAX),
    ));
    v.push(addd(
        "vhd-locator-offset-zero",
        "vhd.locator.out_of_bounds",
        &|b| be64(&mut b.bytes, l0 + 16, 0),
    ));
    v.push(addd(
        "vhd-locator-length-max",
        "vhd.locator.out_of_bounds",
        &|b| be32(&mut b.bytes, l0 + 8, u32::MAX),
    ));
    v.push(addd(
        "vhd-locator-length-over-space",
        "vhd.locator.length",
        &|b| be32(&mut b.bytes, l0 + 4, 0),
    ));
    v.push(addd(
        "vhd-locator-space-invalid",
        "vhd.locator.length",
        &|b| be32(&mut b.bytes, l0 + 4, 1000),
    ));
    v.push(addd(
        "vhd-locator-odd-length",
        "vhd.locator.undecodable",
        &|b| be32(&mut b.bytes, l0 + 8, 7),
    ));
    v.push(addd(
        "vhd-locator-utf16-surrogate",
        "vhd.locator.undecodable",
        &|b| {
            let off = crate_be64(&b.bytes, l0 + 16) as usize;
            b.bytes[off..off + 2].copy_from_slice(&0xD800u16.to_le_bytes());
            b.bytes[off + 2..off + 4].copy_from_slice(&0x0041u16.to_le_bytes());
        },
    ));
    v.push(addd(
        "vhd-locator-unknown-code",
        "vhd.locator.platform_code",
        &|b| b.bytes[l0..l0 + 4].copy_from_slice(b"ABCD"),
    ));
    v.push(addd(
        "vhd-locator-overlaps-bat",
        "vhd.locator.overlaps_metadata",
        &|b| be64(&mut b.bytes, l1 + 16, dbat as u64),
    ));
    v.push(addd(
        "vhd-locator-overlaps-header",
        "vhd.locator.overlaps_metadata",
        &|b| be64(&mut b.bytes, l1 + 16, dh as u64),
    ));
    v.push(addd(
        "vhd-locator-past-footer",
        "vhd.locator.out_of_bounds",
        &|b| be64(&mut b.bytes, l1 + 16, (dlen - 8) as u64),
    ));
    v.push(addd(
        "vhd-parent-name-surrogate",
        "vhd.header.parent_name",
        &|b| {
            b.bytes[dh + 64..dh + 66].copy_from_slice(&0xDC00u16.to_be_bytes());
        },
    ));
    v.push(addd("vhd-no-locator-no-name", "vhd.locator.none", &|b| {
        b.bytes[dh + 64..dh + 576 + 48].fill(0);
    }));
    v.push(addd(
        "vhd-parent-id-zero",
        "vhd.header.parent_id_zero",
        &|b| b.bytes[dh + 40..dh + 56].fill(0),
    ));
    // A locator on a dynamic disk.
    {
        let mut b = VhdBuilder::dynamic(4 * MIB).locator(Locator::w2ru(".\\x.vhd"));
        b.write(0, &[1; 512]);
        v.push(one(
            "vhd-locator-on-dynamic",
            b.build().bytes,
            "vhd.locator.on_non_differencing",
            "vhd",
        ));
    }
    // Fixed disks.
    let fx = vhd_fixed();
    let ffo = fx.footer_offset;
    let addf = |name: &str, expect: &'static str, f: &dyn Fn(&mut crate::vhd::BuiltVhd)| {
        let mut b = fx.clone();
        f(&mut b);
        one(name, b.bytes, expect, "vhd")
    };
    v.push(addf(
        "vhd-fixed-size-larger",
        "vhd.fixed.size_mismatch",
        &|b| {
            be64(&mut b.bytes, ffo + 48, 4 * MIB);
            b.fix_footer_checksums();
        },
    ));
    v.push(addf(
        "vhd-fixed-data-offset",
        "vhd.footer.data_offset",
        &|b| {
            be64(&mut b.bytes, ffo + 16, 512);
            b.fix_footer_checksums();
        },
    ));
    v.push(addf("vhd-fixed-checksum", "vhd.footer.checksum", &|b| {
        b.bytes[ffo + 64] ^= 0x80
    }));
    v.push(addf("vhd-fixed-trunc-data", "file.not_a_disk", &|b| {
        b.bytes.truncate(4096)
    }));
    {
        let mut b = VhdBuilder::fixed(MIB).footer_511();
        b.write(0, &[1; 512]);
        v.push(one(
            "vhd-fixed-511-footer",
            b.build().bytes,
            "vhd.footer.short",
            "vhd",
        ));
    }
}

fn crate_be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn vhdx_cases(v: &mut Vec<Case>) {
    let base = vhdx_dyn();
    let len = base.bytes.len() as u64;
    let mo = base.layout.metadata_offset;
    let bo = base.layout.bat_offset;
    let blk0 = *base.layout.block_offsets.values().next().unwrap_or(&0);
    let add = |name: &str, expect: &'static str, f: &dyn Fn(&mut crate::vhdx::Built)| {
        let mut b = base.clone();
        f(&mut b);
        one(name, b.bytes, expect, "vhdx")
    };
    // Truncation at every structure boundary.
    v.push(add("vhdx-trunc-ident", "vhdx.header.none_valid", &|b| {
        b.bytes.truncate(0x10000)
    }));
    v.push(add(
        "vhdx-trunc-mid-header1",
        "vhdx.header.none_valid",
        &|b| b.bytes.truncate(0x10000 + 100),
    ));
    v.push(add("vhdx-trunc-header2", "vhdx.header.signature", &|b| {
        b.bytes.truncate(0x20000)
    }));
    v.push(add("vhdx-trunc-region1", "vhdx.region.none_valid", &|b| {
        b.bytes.truncate(0x30000)
    }));
    v.push(add("vhdx-trunc-region2", "vhdx.region.signature", &|b| {
        b.bytes.truncate(0x40000)
    }));
    v.push(add("vhdx-trunc-log", "vhdx.header.log_placement", &|b| {
        b.bytes.truncate((MIB + MIB / 2) as usize)
    }));
    v.push(add("vhdx-trunc-metadata", "vhdx.region.past_eof", &|b| {
        b.bytes.truncate((2 * MIB + 4096) as usize)
    }));
    v.push(add("vhdx-trunc-bat", "vhdx.region.past_eof", &|b| {
        b.bytes.truncate((3 * MIB + 4096) as usize)
    }));
    v.push(add("vhdx-trunc-payload", "vhdx.bat.past_eof", &|b| {
        b.bytes.truncate((blk0 + MIB) as usize)
    }));
    v.push(add("vhdx-trunc-last-byte", "vhdx.bat.past_eof", &|b| {
        b.bytes.truncate((len - 1) as usize)
    }));
    // Headers.
    v.push(add("vhdx-header1-checksum", "vhdx.header.checksum", &|b| {
        b.bytes[0x10000 + 100] ^= 1
    }));
    v.push(add("vhdx-header2-checksum", "vhdx.header.checksum", &|b| {
        b.bytes[0x20000 + 4] ^= 1
    }));
    v.push(add(
        "vhdx-headers-both-checksums",
        "vhdx.header.none_valid",
        &|b| {
            b.bytes[0x10000 + 4] ^= 1;
            b.bytes[0x20000 + 4] ^= 1;
        },
    ));
    v.push(add(
        "vhdx-header1-signature",
        "vhdx.header.signature",
        &|b| b.bytes[0x10000] = b'x',
    ));
    v.push(add("vhdx-header-version", "vhdx.header.version", &|b| {
        le16(&mut b.bytes, 0x10000 + 66, 2);
        b.fix_header_crc(0);
    }));
    v.push(add("vhdx-header-tie", "vhdx.header.tie", &|b| {
        let s = u64::from_le_bytes(b.bytes[0x10008..0x10010].try_into().unwrap_or([0; 8]));
        le64(&mut b.bytes, 0x20008, s);
        b.bytes[0x20000 + 20] ^= 0x55; // FileWriteGuid differs
        b.fix_header_crc(1);
    }));
    let hdr_both = |name: &str, expect: &'static str, at: u64, val: u64, w: usize| {
        let mut b = base.clone();
        for (slot, off) in [0x10000u64, 0x20000].into_iter().enumerate() {
            match w {
                2 => le16(&mut b.bytes, off + at, val as u16),
                4 => le32(&mut b.bytes, off + at, val as u32),
                _ => le64(&mut b.bytes, off + at, val),
            }
            b.fix_header_crc(slot);
        }
        one(name, b.bytes, expect, "vhdx")
    };
    v.push(hdr_both(
        "vhdx-log-offset-unaligned",
        "vhdx.header.log_placement",
        72,
        MIB + 4096,
        8,
    ));
    v.push(hdr_both(
        "vhdx-log-offset-zero",
        "vhdx.header.log_placement",
        72,
        0,
        8,
    ));
    v.push(hdr_both(
        "vhdx-log-offset-eof",
        "vhdx.header.log_placement",
        72,
        1 << 40,
        8,
    ));
    v.push(hdr_both(
        "vhdx-log-offset-max",
        "vhdx.header.log_placement",
        72,
        !(MIB - 1),
        8,
    ));
    v.push(hdr_both(
        "vhdx-log-length-unaligned",
        "vhdx.header.log_placement",
        68,
        4096,
        4,
    ));
    v.push(hdr_both(
        "vhdx-log-length-max",
        "vhdx.header.log_placement",
        68,
        u64::from(u32::MAX),
        4,
    ));
    v.push(hdr_both(
        "vhdx-log-overlaps-metadata",
        "vhdx.region.overlap",
        68,
        2 * MIB,
        4,
    ));
    {
        let mut b = base.clone();
        b.set_log_guid(Uuid::from_u128(7));
        for (slot, off) in [0x10000u64, 0x20000].into_iter().enumerate() {
            le16(&mut b.bytes, off + 64, 1);
            b.fix_header_crc(slot);
        }
        v.push(one(
            "vhdx-log-version",
            b.bytes,
            "vhdx.header.log_version",
            "vhdx",
        ));
    }
    // Region tables.
    let rt = 0x30000u64;
    let rt_both = |name: &str, expect: &'static str, f: &dyn Fn(&mut Vec<u8>, u64)| {
        let mut b = base.clone();
        for (slot, off) in [0x30000u64, 0x40000].into_iter().enumerate() {
            f(&mut b.bytes, off);
            b.fix_region_crc(slot);
        }
        one(name, b.bytes, expect, "vhdx")
    };
    // Entry 0 = BAT (offset at +16+16, length at +16+24), entry 1 = metadata.
    v.push(rt_both(
        "vhdx-region-count-max",
        "vhdx.region.entry_count",
        &|b, o| le32(b, o + 8, u32::MAX),
    ));
    v.push(rt_both(
        "vhdx-region-bat-unaligned",
        "vhdx.region.unaligned",
        &|b, o| le64(b, o + 32, 3 * MIB + 512),
    ));
    v.push(rt_both(
        "vhdx-region-bat-zero",
        "vhdx.region.unaligned",
        &|b, o| le64(b, o + 32, 0),
    ));
    v.push(rt_both(
        "vhdx-region-bat-eof",
        "vhdx.region.past_eof",
        &|b, o| le64(b, o + 32, 1 << 40),
    ));
    v.push(rt_both(
        "vhdx-region-bat-max",
        "vhdx.region.past_eof",
        &|b, o| le64(b, o + 32, !(MIB - 1)),
    ));
    v.push(rt_both(
        "vhdx-region-bat-length-zero",
        "vhdx.region.unaligned",
        &|b, o| le32(b, o + 40, 0),
    ));
    v.push(rt_both(
        "vhdx-region-bat-length-max",
        "vhdx.region.unaligned",
        &|b, o| le32(b, o + 40, u32::MAX),
    ));
    v.push(rt_both(
        "vhdx-region-bat-on-metadata",
        "vhdx.region.overlap",
        &|b, o| le64(b, o + 32, 2 * MIB),
    ));
    v.push(rt_both(
        "vhdx-region-bat-on-log",
        "vhdx.region.overlap",
        &|b, o| le64(b, o + 32, MIB),
    ));
    v.push(rt_both(
        "vhdx-region-duplicate",
        "vhdx.region.duplicate",
        &|b, o| {
            let e0: Vec<u8> = b[(o + 16) as usize..(o + 48) as usize].to_vec();
            b[(o + 48) as usize..(o + 80) as usize].copy_from_slice(&e0);
        },
    ));
    v.push(rt_both(
        "vhdx-region-unknown-required",
        "vhdx.region.unknown_required",
        &|b, o| {
            le32(b, o + 8, 3);
            let e = (o + 80) as usize;
            b[e..e + 16].copy_from_slice(&[0x42; 16]);
            le64(b, o + 96, 4 * MIB);
            le32(b, o + 104, MIB as u32);
            le32(b, o + 108, 1);
        },
    ));
    v.push(rt_both(
        "vhdx-region-missing-metadata",
        "vhdx.region.missing",
        &|b, o| le32(b, o + 8, 1),
    ));
    v.push(add("vhdx-region1-checksum", "vhdx.region.checksum", &|b| {
        b.bytes[(rt + 200) as usize] ^= 1
    }));
    v.push(add(
        "vhdx-region2-signature",
        "vhdx.region.signature",
        &|b| b.bytes[0x40000] = 0,
    ));
    v.push(add(
        "vhdx-regions-both-broken",
        "vhdx.region.none_valid",
        &|b| {
            b.bytes[0x30004] ^= 1;
            b.bytes[0x40000] = 0;
        },
    ));
    v.push(add(
        "vhdx-regions-differ",
        "vhdx.region.copies_differ",
        &|b| {
            b.bytes[0x40000 + 1000] = 1;
            b.fix_region_crc(1);
        },
    ));
    // Metadata table: entries at mo + 32 + 32 i (0 fp, 1 size, 2 logical, 3 physical, 4 id).
    let e = |i: u64| mo + 32 + 32 * i;
    v.push(add(
        "vhdx-metadata-signature",
        "vhdx.metadata.signature",
        &|b| b.bytes[mo as usize] = b'X',
    ));
    v.push(add(
        "vhdx-metadata-count-max",
        "vhdx.metadata.entry_count",
        &|b| le16(&mut b.bytes, mo + 10, u16::MAX),
    ));
    v.push(add(
        "vhdx-metadata-item-past-region",
        "vhdx.metadata.item_bounds",
        &|b| le32(&mut b.bytes, e(1) + 16, 0xFFFFC),
    ));
    v.push(add(
        "vhdx-metadata-item-in-table",
        "vhdx.metadata.item_bounds",
        &|b| le32(&mut b.bytes, e(1) + 16, 64),
    ));
    v.push(add(
        "vhdx-metadata-item-length-max",
        "vhdx.metadata.item_bounds",
        &|b| le32(&mut b.bytes, e(4) + 20, u32::MAX),
    ));
    v.push(add(
        "vhdx-metadata-item-overlap",
        "vhdx.metadata.item_overlap",
        &|b| le32(&mut b.bytes, e(4) + 16, 0x10004),
    ));
    v.push(add(
        "vhdx-metadata-duplicate",
        "vhdx.metadata.duplicate",
        &|b| {
            let e1: Vec<u8> = b.bytes[e(1) as usize..e(1) as usize + 16].to_vec();
            b.bytes[e(2) as usize..e(2) as usize + 16].copy_from_slice(&e1);
        },
    ));
    v.push(add(
        "vhdx-metadata-unknown-required",
        "vhdx.metadata.unknown_required",
        &|b| {
            le16(&mut b.bytes, mo + 10, 6);
            let x = e(5) as usize;
            b.bytes[x..x + 16].copy_from_slice(&[0x99; 16]);
            le32(&mut b.bytes, e(5) + 16, 0x20000);
            le32(&mut b.bytes, e(5) + 20, 8);
            le32(&mut b.bytes, e(5) + 24, 4);
        },
    ));
    v.push(add(
        "vhdx-metadata-missing-fp",
        "vhdx.metadata.missing_item",
        &|b| b.bytes[e(0) as usize] ^= 0xff,
    ));
    v.push(add(
        "vhdx-metadata-missing-id",
        "vhdx.metadata.missing_item",
        &|b| le32(&mut b.bytes, e(4) + 20, 8),
    ));
    let item = |i: u64| mo + 0x10000 + [0u64, 8, 16, 20, 24][i as usize];
    v.push(add(
        "vhdx-block-size-3m",
        "vhdx.metadata.block_size",
        &|b| le32(&mut b.bytes, item(0), 3 << 20),
    ));
    v.push(add(
        "vhdx-block-size-zero",
        "vhdx.metadata.block_size",
        &|b| le32(&mut b.bytes, item(0), 0),
    ));
    v.push(add(
        "vhdx-block-size-max",
        "vhdx.metadata.block_size",
        &|b| le32(&mut b.bytes, item(0), u32::MAX),
    ));
    v.push(add(
        "vhdx-block-size-512m",
        "vhdx.metadata.block_size",
        &|b| le32(&mut b.bytes, item(0), 512 << 20),
    ));
    v.push(add(
        "vhdx-fp-reserved-flags",
        "vhdx.metadata.file_parameters",
        &|b| le32(&mut b.bytes, item(0) + 4, 0x10),
    ));
    v.push(add("vhdx-size-zero", "vhdx.metadata.virtual_size", &|b| {
        le64(&mut b.bytes, item(1), 0)
    }));
    v.push(add("vhdx-size-65t", "vhdx.metadata.virtual_size", &|b| {
        le64(&mut b.bytes, item(1), 65 << 40)
    }));
    v.push(add("vhdx-size-max", "vhdx.metadata.virtual_size", &|b| {
        le64(&mut b.bytes, item(1), u64::MAX)
    }));
    v.push(add(
        "vhdx-size-unaligned",
        "vhdx.metadata.virtual_size",
        &|b| le64(&mut b.bytes, item(1), 64 * MIB + 1),
    ));
    v.push(add("vhdx-size-64t-bat-small", "vhdx.bat.too_small", &|b| {
        le64(&mut b.bytes, item(1), 64 << 40)
    }));
    v.push(add(
        "vhdx-logical-sector-1000",
        "vhdx.metadata.sector_size",
        &|b| le32(&mut b.bytes, item(2), 1000),
    ));
    v.push(add(
        "vhdx-physical-sector-0",
        "vhdx.metadata.sector_size",
        &|b| le32(&mut b.bytes, item(3), 0),
    ));
    v.push(add(
        "vhdx-has-parent-no-locator",
        "vhdx.metadata.missing_item",
        &|b| le32(&mut b.bytes, item(0) + 4, 2),
    ));
    // BAT entries: payload entry 0 present at blk0; entry 1 is block 1 (not present).
    let bat_e = |i: u64| bo + 8 * i;
    v.push(add("vhdx-bat-state-4", "vhdx.bat.state_invalid", &|b| {
        le64(&mut b.bytes, bat_e(1), 4)
    }));
    v.push(add("vhdx-bat-state-5", "vhdx.bat.state_invalid", &|b| {
        le64(&mut b.bytes, bat_e(1), 5)
    }));
    v.push(add(
        "vhdx-bat-partial-on-dynamic",
        "vhdx.bat.state_invalid",
        &|b| le64(&mut b.bytes, bat_e(0), blk0 | 7),
    ));
    v.push(add(
        "vhdx-bat-present-offset-zero",
        "vhdx.bat.offset_invalid",
        &|b| le64(&mut b.bytes, bat_e(1), 6),
    ));
    v.push(add("vhdx-bat-present-eof", "vhdx.bat.past_eof", &|b| {
        le64(&mut b.bytes, bat_e(1), (1 << 40) | 6)
    }));
    v.push(add("vhdx-bat-present-max", "vhdx.bat.past_eof", &|b| {
        le64(&mut b.bytes, bat_e(1), BAT_MAX | 6)
    }));
    v.push(add(
        "vhdx-bat-present-on-log",
        "vhdx.bat.overlaps_metadata",
        &|b| le64(&mut b.bytes, bat_e(1), MIB | 6),
    ));
    v.push(add(
        "vhdx-bat-present-on-bat",
        "vhdx.bat.overlaps_metadata",
        &|b| le64(&mut b.bytes, bat_e(1), bo | 6),
    ));
    v.push(add("vhdx-bat-duplicate", "vhdx.bat.overlap", &|b| {
        le64(&mut b.bytes, bat_e(1), blk0 | 6)
    }));
    v.push(add("vhdx-bat-overlap-half", "vhdx.bat.overlap", &|b| {
        le64(&mut b.bytes, bat_e(1), (blk0 + MIB) | 6)
    }));
    v.push(add(
        "vhdx-bat-zero-with-offset",
        "vhdx.bat.offset_reserved",
        &|b| le64(&mut b.bytes, bat_e(1), blk0 | 2),
    ));
    v.push(add(
        "vhdx-bat-reserved-bits",
        "vhdx.bat.reserved_bits",
        &|b| le64(&mut b.bytes, bat_e(0), blk0 | 6 | 0x100),
    ));

    // Differencing: locator and sector bitmaps.
    let d = vhdx_diff();
    let loc = d.layout.locator_offset.unwrap_or(0);
    let dcr = d.layout.chunk_ratio;
    let dbo = d.layout.bat_offset;
    let addd = |name: &str, expect: &'static str, f: &dyn Fn(&mut crate::vhdx::Built)| {
        let mut b = d.clone();
        f(&mut b);
        one(name, b.bytes, expect, "avhdx")
    };
    v.push(addd("vhdx-locator-type", "vhdx.locator.invalid", &|b| {
        b.bytes[loc as usize] ^= 1
    }));
    v.push(addd(
        "vhdx-locator-count-max",
        "vhdx.locator.invalid",
        &|b| le16(&mut b.bytes, loc + 18, u16::MAX),
    ));
    v.push(addd(
        "vhdx-locator-key-offset-max",
        "vhdx.locator.invalid",
        &|b| le32(&mut b.bytes, loc + 20, u32::MAX),
    ));
    v.push(addd(
        "vhdx-locator-value-length-max",
        "vhdx.locator.invalid",
        &|b| le16(&mut b.bytes, loc + 30, u16::MAX),
    ));
    v.push(addd(
        "vhdx-locator-key-utf16",
        "vhdx.locator.invalid",
        &|b| {
            let ko = u32::from_le_bytes(
                b.bytes[(loc + 20) as usize..(loc + 24) as usize]
                    .try_into()
                    .unwrap_or([0; 4]),
            );
            let at = (loc + u64::from(ko)) as usize;
            b.bytes[at..at + 2].copy_from_slice(&0xDFFFu16.to_le_bytes());
        },
    ));
    v.push(addd(
        "vhdx-locator-no-linkage",
        "vhdx.locator.invalid",
        &|b| {
            let ko = u32::from_le_bytes(
                b.bytes[(loc + 20) as usize..(loc + 24) as usize]
                    .try_into()
                    .unwrap_or([0; 4]),
            );
            let at = (loc + u64::from(ko)) as usize;
            b.bytes[at] = b'q'; // "parent_linkage" -> "qarent_linkage"
        },
    ));
    v.push(addd("vhdx-locator-no-path", "vhdx.locator.no_path", &|b| {
        le16(&mut b.bytes, loc + 18, 1)
    }));
    v.push(addd("vhdx-sb-missing", "vhdx.bat.bitmap_missing", &|b| {
        le64(&mut b.bytes, dbo + 8 * dcr, 0)
    }));
    v.push(addd(
        "vhdx-bat-sb-state-3",
        "vhdx.bat.state_invalid",
        &|b| le64(&mut b.bytes, dbo + 8 * dcr, 3),
    ));
    v.push(addd("vhdx-sb-eof", "vhdx.bat.past_eof", &|b| {
        le64(&mut b.bytes, dbo + 8 * dcr, (1 << 40) | 6)
    }));
    {
        let mut b = vhdx_dyn();
        // A locator item on a disk without a parent: add the differencing file's item.
        let dm = d.layout.metadata_offset;
        let x = (dm + 32 + 32 * 5) as usize;
        let entry = d.bytes[x..x + 32].to_vec();
        let item_off = u32::from_le_bytes(entry[16..20].try_into().unwrap_or([0; 4])) as u64;
        let item_len = u32::from_le_bytes(entry[20..24].try_into().unwrap_or([0; 4])) as usize;
        let src = (dm + item_off) as usize;
        let data = d.bytes[src..src + item_len].to_vec();
        let y = (mo + 32 + 32 * 5) as usize;
        b.bytes[y..y + 32].copy_from_slice(&entry);
        b.bytes[(mo + item_off) as usize..(mo + item_off) as usize + item_len]
            .copy_from_slice(&data);
        le16(&mut b.bytes, mo + 10, 6);
        v.push(one(
            "vhdx-locator-on-dynamic",
            b.bytes,
            "vhdx.locator.without_parent",
            "vhdx",
        ));
    }

    // Logs.
    let dirty =
        |name: &str, expect: &'static str, o: LogOptions, f: &dyn Fn(&mut crate::vhdx::Built)| {
            let mut b = vhdx_dyn();
            b.make_dirty(&[bo, bo + 4096, mo], &[(bo + 8192, 8192)], &o);
            f(&mut b);
            one(name, b.bytes, expect, "vhdx")
        };
    let lo = base.layout.log_offset;
    v.push(dirty(
        "vhdx-log-dirty",
        "vhdx.log.dirty",
        LogOptions::default(),
        &|_| {},
    ));
    v.push(dirty(
        "vhdx-log-wraps",
        "vhdx.log.dirty",
        LogOptions {
            wrap: true,
            ..LogOptions::default()
        },
        &|_| {},
    ));
    v.push(dirty(
        "vhdx-log-bad-crc",
        "vhdx.log.corrupt",
        LogOptions {
            bad_crc: true,
            ..LogOptions::default()
        },
        &|_| {},
    ));
    v.push(dirty(
        "vhdx-log-wrong-guid",
        "vhdx.log.corrupt",
        LogOptions {
            wrong_guid: true,
            ..LogOptions::default()
        },
        &|_| {},
    ));
    v.push(dirty(
        "vhdx-log-torn",
        "vhdx.log.corrupt",
        LogOptions {
            torn: true,
            ..LogOptions::default()
        },
        &|_| {},
    ));
    v.push(dirty(
        "vhdx-log-flushed-past-eof",
        "vhdx.log.corrupt",
        LogOptions {
            flushed_file_offset: Some(1 << 40),
            ..LogOptions::default()
        },
        &|_| {},
    ));
    v.push(dirty(
        "vhdx-log-entry-length-max",
        "vhdx.log.corrupt",
        LogOptions {
            entry_length_override: Some(!4095),
            ..LogOptions::default()
        },
        &|_| {},
    ));
    v.push(dirty(
        "vhdx-log-bad-middle-sector",
        "vhdx.log.corrupt",
        LogOptions::default(),
        &|b| {
            // The entry's second data sector (of three), in the middle of the entry.
            b.bytes[(lo + 2 * 4096 + 100) as usize] ^= 0xff;
        },
    ));
    v.push(dirty(
        "vhdx-log-bad-descriptor",
        "vhdx.log.corrupt",
        LogOptions::default(),
        &|b| {
            b.bytes[(lo + 64 + 32) as usize] = b'X';
        },
    ));
    v.push(dirty(
        "vhdx-log-guid-empty-ring",
        "vhdx.log.corrupt",
        LogOptions::default(),
        &|b| {
            let s = lo as usize;
            b.bytes[s..s + MIB as usize].fill(0);
        },
    ));
}

const BAT_MAX: u64 = 0xFFFF_FFFF_FFF0_0000;

fn chain_cases(v: &mut Vec<Case>, deep: bool) {
    let parent = {
        let mut b = VhdBuilder::dynamic(8 * MIB).unique_id(id(1));
        b.write(0, &[0x42; 4096]);
        b.build().bytes
    };
    let child = vhd_diff().bytes;
    let chain = |name: &str, expect: &'static str, files: Vec<(String, Vec<u8>)>| Case {
        name: name.into(),
        files,
        expect,
        chain: true,
    };
    v.push(chain(
        "chain-parent-missing",
        "chain.parent_missing",
        vec![("child.vhd".into(), child.clone())],
    ));
    {
        let wrong = {
            let mut b = VhdBuilder::dynamic(8 * MIB).unique_id(id(9));
            b.write(0, &[0x42; 512]);
            b.build().bytes
        };
        v.push(chain(
            "chain-identity-mismatch",
            "chain.identity_mismatch",
            vec![
                ("child.vhd".into(), child.clone()),
                ("parent.vhd".into(), wrong),
            ],
        ));
    }
    {
        let small = {
            let mut b = VhdBuilder::dynamic(4 * MIB).unique_id(id(1));
            b.write(0, &[0x42; 512]);
            b.build().bytes
        };
        v.push(chain(
            "chain-size-mismatch",
            "chain.size_mismatch",
            vec![
                ("child.vhd".into(), child.clone()),
                ("parent.vhd".into(), small),
            ],
        ));
    }
    {
        // A parent whose own footer is broken: the structural finding shows up for the parent.
        let mut p = parent.clone();
        let l = p.len();
        p[l - 512 + 64] ^= 1;
        v.push(chain(
            "chain-parent-footer-checksum",
            "vhd.footer.checksum",
            vec![
                ("child.vhd".into(), child.clone()),
                ("parent.vhd".into(), p),
            ],
        ));
    }
    {
        // A loop: a.vhd -> b.vhd -> a.vhd, ids matching.
        let mut a = VhdBuilder::differencing(8 * MIB, id(0x0b))
            .unique_id(id(0x0a))
            .parent_name("b.vhd")
            .locator(Locator::w2ru(".\\b.vhd"));
        a.write(0, &[1; 512]);
        let mut b = VhdBuilder::differencing(8 * MIB, id(0x0a))
            .unique_id(id(0x0b))
            .parent_name("a.vhd")
            .locator(Locator::w2ru(".\\a.vhd"));
        b.write(0, &[2; 512]);
        v.push(chain(
            "chain-loop",
            "chain.loop",
            vec![
                ("a.vhd".into(), a.build().bytes),
                ("b.vhd".into(), b.build().bytes),
            ],
        ));
    }
    {
        // VHDX: parent with 4096-byte logical sectors under a 512-byte child.
        let mut p = VhdxBuilder::new(XKind::Dynamic, 64 * MIB, 2 << 20, 4096);
        p.data_write_guid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
        p.write(0, &[3; 4096]);
        v.push(chain(
            "chain-vhdx-sector-size",
            "chain.sector_size_mismatch",
            vec![
                ("child.avhdx".into(), vhdx_diff().bytes),
                ("parent.vhdx".into(), p.build().bytes),
            ],
        ));
    }
    if deep {
        // 1000 differencing disks, d0 -> d1 -> ... -> d999 (dynamic base).
        let n = 1000u32;
        let mut files = Vec::new();
        let uid = |i: u32| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&i.to_be_bytes());
            a[15] = 0xdd;
            a
        };
        for i in 0..n {
            let bytes = if i + 1 == n {
                VhdBuilder::dynamic(MIB).unique_id(uid(i)).build().bytes
            } else {
                let pn = format!("d{}.vhd", i + 1);
                VhdBuilder::differencing(MIB, uid(i + 1))
                    .unique_id(uid(i))
                    .parent_name(&pn)
                    .locator(Locator::w2ru(&format!(".\\{pn}")))
                    .build()
                    .bytes
            };
            files.push((format!("d{i}.vhd"), bytes));
        }
        v.push(chain("chain-1000-deep", "chain.too_deep", files));
    }
}
