//! Every corruption a reader refuses carries the `check` finding code of the rule it breaks,
//! the structure and the offset: a table of crafted corruptions of both formats, each opened
//! (the error's kind, code and offset) and checked (`check` reports the same code there).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use vhdkit::check::{check_file, CheckOptions, Severity};
use vhdkit::{Disk, ErrorKind};
use vhdkit_testkit::vhd::{checksum, VhdBuilder};
use vhdkit_testkit::vhdx::{Built, Kind, VhdxBuilder};

const MIB: usize = 1 << 20;

/// One corruption: the damaged file, the code and offset of the error opening it, and the
/// offset at which `check` reports the same code (`None`: the same offset).
struct Case {
    name: &'static str,
    ext: &'static str,
    bytes: Vec<u8>,
    code: &'static str,
    offset: u64,
    check_offset: Option<u64>,
}

fn be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn le64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn rd_le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A dynamic VHD with blocks 0 and 1 written (2 MiB blocks).
fn vhd_dynamic() -> vhdkit_testkit::vhd::BuiltVhd {
    let mut v = VhdBuilder::dynamic(8 << 20);
    v.write(0, &[1; 512]);
    v.write(2 << 20, &[2; 512]);
    v.build()
}

/// Recompute the dynamic header's checksum after editing it.
fn fix_header(b: &mut [u8], hdr: usize) {
    let c = checksum(&b[hdr..hdr + 1024], 36);
    be32(b, hdr + 36, c);
}

fn vhd_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let base = vhd_dynamic();
    let (hdr, bat, foot) = (
        base.header_offset.unwrap(),
        base.bat_offset.unwrap(),
        base.footer_offset,
    );
    let mut case =
        |name, code, offset: usize, check_offset: Option<usize>, f: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = base.bytes.clone();
            f(&mut bytes);
            out.push(Case {
                name,
                ext: "vhd",
                bytes,
                code,
                offset: offset as u64,
                check_offset: check_offset.map(|o| o as u64),
            });
        };
    // The end footer's checksum, and the front copy unusable: nothing to fall back on.
    case(
        "footer checksum",
        "vhd.footer.checksum",
        foot + 64,
        None,
        &|b| {
            b[foot + 64] ^= 0xff;
            b[0] = b'x';
        },
    );
    case("header cookie", "vhd.header.cookie", hdr, None, &|b| {
        b[hdr] = b'x'
    });
    case(
        "header checksum",
        "vhd.header.checksum",
        hdr + 36,
        None,
        &|b| b[hdr + 36] ^= 0xff,
    );
    case(
        "header block size",
        "vhd.header.block_size",
        hdr + 32,
        None,
        &|b| {
            be32(b, hdr + 32, 3 << 20);
            fix_header(b, hdr);
        },
    );
    // BAT entry 1 (a sector number) far past the end footer.
    case(
        "bat entry past eof",
        "vhd.block.past_eof",
        bat + 4,
        None,
        &|b| be32(b, bat + 4, 0x0100_0000),
    );
    // BAT entry 1 points at block 0's sectors.
    case(
        "overlapping blocks",
        "vhd.block.overlap",
        bat + 4,
        None,
        &|b| {
            let e0: [u8; 4] = b[bat..bat + 4].try_into().unwrap();
            b[bat + 4..bat + 8].copy_from_slice(&e0);
        },
    );
    // Max table entries below what the size needs.
    case("bat too small", "vhd.bat.too_small", hdr + 28, None, &|b| {
        be32(b, hdr + 28, 1);
        fix_header(b, hdr);
    });
    out
}

/// A dynamic VHDX with blocks 0 and 1 written (1 MiB blocks).
fn vhdx_dynamic() -> Built {
    let mut v = VhdxBuilder::new(Kind::Dynamic, 8 << 20, 1 << 20, 512);
    v.write(0, &[1; 512]);
    v.write(1 << 20, &[2; 512]);
    v.build()
}

fn vhdx_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let base = vhdx_dynamic();
    let l = base.layout.clone();
    let (bat, meta) = (l.bat_offset as usize, l.metadata_offset as usize);
    let mut case =
        |name, code, offset: usize, check_offset: Option<usize>, f: &dyn Fn(&mut Built)| {
            let mut built = base.clone();
            f(&mut built);
            out.push(Case {
                name,
                ext: "vhdx",
                bytes: built.bytes,
                code,
                offset: offset as u64,
                check_offset: check_offset.map(|o| o as u64),
            });
        };
    case(
        "both headers",
        "vhdx.header.none_valid",
        0x10000,
        None,
        &|b| {
            b.bytes[0x10000 + 8] ^= 0xff;
            b.bytes[0x20000 + 8] ^= 0xff;
        },
    );
    // Two valid headers with one sequence number that differ (FileWriteGuid): neither can be
    // taken as current. Reader and check name the pair at header 1.
    case("header tie", "vhdx.header.tie", 0x10000, None, &|b| {
        let h1 = b.bytes[0x10000..0x11000].to_vec();
        b.bytes[0x20000..0x21000].copy_from_slice(&h1);
        b.bytes[0x20000 + 16] ^= 0x5a;
        b.fix_header_crc(1);
    });
    // Both region tables with a bad CRC: the first one's error is the one returned.
    case(
        "region table crc",
        "vhdx.region.checksum",
        0x30000,
        None,
        &|b| {
            b.bytes[0x30000 + 16] ^= 0xff;
            b.bytes[0x40000 + 16] ^= 0xff;
        },
    );
    case(
        "region table signature",
        "vhdx.region.signature",
        0x30000,
        None,
        &|b| {
            b.bytes[0x30000] = b'x';
            b.bytes[0x40000] = b'x';
        },
    );
    case(
        "metadata signature",
        "vhdx.metadata.signature",
        meta,
        None,
        &|b| b.bytes[meta] = b'x',
    );
    case(
        "metadata entry count",
        "vhdx.metadata.entry_count",
        meta + 10,
        None,
        &|b| b.bytes[meta + 10..meta + 12].copy_from_slice(&4000u16.to_le_bytes()),
    );
    // BAT entry 1 FULLY_PRESENT far past the end of the file.
    case(
        "bat entry past eof",
        "vhdx.bat.past_eof",
        bat + 8,
        None,
        &|b| le64(&mut b.bytes, bat + 8, (1 << 40) | 6),
    );
    case(
        "overlapping blocks",
        "vhdx.bat.overlap",
        bat + 8,
        None,
        &|b| {
            let e0 = rd_le64(&b.bytes, bat);
            le64(&mut b.bytes, bat + 8, e0);
        },
    );
    case(
        "bat reserved state",
        "vhdx.bat.state_invalid",
        bat + 8,
        None,
        &|b| {
            let e1 = rd_le64(&b.bytes, bat + 8);
            le64(&mut b.bytes, bat + 8, (e1 & !7) | 4);
        },
    );
    // FULLY_PRESENT at file offset 0 (offsets count whole MiB from bit 20).
    case(
        "bat block at offset 0",
        "vhdx.bat.offset_invalid",
        bat + 8,
        None,
        &|b| le64(&mut b.bytes, bat + 8, 6),
    );
    case(
        "bat reserved bits",
        "vhdx.bat.reserved_bits",
        bat + 8,
        None,
        &|b| {
            let e1 = rd_le64(&b.bytes, bat + 8);
            le64(&mut b.bytes, bat + 8, e1 | (MIB as u64 / 2));
        },
    );
    // A log GUID with no log entry to go with it.
    case(
        "log corrupt",
        "vhdx.log.corrupt",
        l.log_offset as usize,
        None,
        &|b| b.set_log_guid(uuid::Uuid::from_u128(0x1234_5678)),
    );
    out
}

#[test]
fn every_crafted_corruption_carries_its_check_code_and_offset() {
    let t = tempfile::tempdir().unwrap();
    let cases: Vec<Case> = vhd_cases().into_iter().chain(vhdx_cases()).collect();
    for c in &cases {
        let path = t
            .path()
            .join(format!("{}.{}", c.name.replace(' ', "_"), c.ext));
        std::fs::write(&path, &c.bytes).unwrap();
        let e = Disk::open(&path)
            .err()
            .unwrap_or_else(|| panic!("{}: opens", c.name));
        let ErrorKind::Corrupt { code, location } = e.kind() else {
            panic!("{}: not a corruption: {e:?}", c.name);
        };
        assert_eq!(code, Some(c.code), "{}: {e}", c.name);
        assert_eq!(e.code(), Some(c.code), "{}", c.name);
        assert_eq!(location.offset, c.offset, "{}: {e}", c.name);
        assert_eq!(location.path.as_deref(), Some(path.as_path()), "{}", c.name);
        let report = check_file(&path, &CheckOptions::default()).unwrap();
        let want = c.check_offset.unwrap_or(c.offset);
        assert!(
            report.findings.iter().any(|f| f.code == c.code
                && f.offset == Some(want)
                && f.severity >= Severity::Warning),
            "{}: check does not report {} at {want:#x}: {:#?}",
            c.name,
            c.code,
            report.findings
        );
    }
    assert!(cases.len() >= 16, "{}", cases.len());
}
