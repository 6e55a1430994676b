//! Regenerates the bundled images (deterministic: same bytes every run).
//!
//! `cargo run -p vhdkit-testkit --bin make-testdata -- testdata/lab`
//! `cargo run -p vhdkit-testkit --bin make-testdata -- --exported-lab testdata/exported-lab`
//!
//! The images are written by the testkit's own writers (independent of the vhdkit library), so
//! the library is tested against files it did not make.

use std::path::PathBuf;

use uuid::Uuid;
use vhdkit_testkit::vhd::{Locator, VhdBuilder};
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

const MIB: u64 = 1 << 20;

/// Recognisable, sector-granular contents: a text banner, then a byte pattern.
fn banner(text: &str, fill: u8, len: usize) -> Vec<u8> {
    let mut v = vec![fill; len];
    let t = text.as_bytes();
    v[..t.len()].copy_from_slice(t);
    v
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--exported-lab") {
        let out = args.get(1).map_or("testdata/exported-lab", String::as_str);
        exported_lab(&PathBuf::from(out));
        return;
    }
    let out = PathBuf::from(args.first().map_or("testdata/lab", String::as_str));
    let vm1 = out.join("vm1");
    std::fs::create_dir_all(&vm1).expect("create output folders");

    // VHDX: a dynamic base and a differencing child that overwrites parts of it.
    let mut base = VhdxBuilder::new(Kind::Dynamic, 8 * MIB, MIB as u32, 512);
    base.data_write_guid = Uuid::from_u128(0x6c61_6200_0000_4000_8000_0000_0000_0001);
    base.file_write_guid = Uuid::from_u128(0x6c61_6200_0000_4000_8000_0000_0000_0002);
    base.virtual_disk_id = Uuid::from_u128(0x6c61_6200_0000_4000_8000_0000_0000_0003);
    base.creator = "vhdkit make-testdata".into();
    base.write(0, &banner("vhdkit lab base disk (vhdx)", 0xB0, 4096));
    base.write(3 * MIB, &vec![0xB3; MIB as usize]);
    base.write(5 * MIB + 512, &vec![0xB5; 8192]);
    std::fs::write(out.join("base.vhdx"), base.build().bytes).expect("write base.vhdx");

    let mut child = VhdxBuilder::new(Kind::Differencing, 8 * MIB, MIB as u32, 512);
    child.data_write_guid = Uuid::from_u128(0x6c61_6200_0000_4000_8000_0000_0000_0011);
    child.file_write_guid = Uuid::from_u128(0x6c61_6200_0000_4000_8000_0000_0000_0012);
    child.virtual_disk_id = base.virtual_disk_id;
    child.parent_linkage = base.data_write_guid;
    child.relative_path = Some(r"..\base.vhdx".into());
    child.absolute_win32_path = Some(r"C:\Lab\base.vhdx".into());
    child.creator = "vhdkit make-testdata".into();
    child.write(512, &banner("vm1 writes here", 0xC1, 1024));
    child.write(3 * MIB + 4096, &vec![0xC3; 3 * 512]);
    child.write(6 * MIB, &vec![0xC6; MIB as usize]);
    std::fs::write(vm1.join("disk.vhdx"), child.build().bytes).expect("write disk.vhdx");

    // VHD: the same shape.
    let base_id = *Uuid::from_u128(0x6c61_6276_6864_4000_8000_0000_0000_0001).as_bytes();
    let mut vbase = VhdBuilder::dynamic(8 * MIB)
        .unique_id(base_id)
        .timestamp(0x3000_0000);
    vbase.write(0, &banner("vhdkit lab base disk (vhd)", 0xB0, 4096));
    vbase.write(3 * MIB, &vec![0xB3; MIB as usize]);
    vbase.build().write_to(&out.join("base.vhd"));

    let child_id = *Uuid::from_u128(0x6c61_6276_6864_4000_8000_0000_0000_0011).as_bytes();
    let mut vchild = VhdBuilder::differencing(8 * MIB, base_id)
        .unique_id(child_id)
        .timestamp(0x3000_0001)
        .parent_name(r"C:\Lab\base.vhd")
        .locator(Locator::w2ku(r"C:\Lab\base.vhd"))
        .locator(Locator::w2ru(r"..\base.vhd"));
    // Sectors 1, 3 and 6 of a bitmap byte (0x52), the case a common reader gets wrong.
    for s in [1u64, 3, 6] {
        vchild.write(s * 512, &vec![0xC0 + s as u8; 512]);
    }
    vchild.write(3 * MIB + 4096, &vec![0xC3; 3 * 512]);
    vchild.build().write_to(&vm1.join("disk.vhd"));
    println!("wrote the lab to {}", out.display());
}

/// The VMs of the exported lab: name, and a byte that marks what each one wrote.
const EXPORTED_VMS: [(&str, u8); 3] = [("Web01", 0xA1), ("Web02", 0xA2), ("Db01", 0xA3)];

/// What Hyper-V's Export-VM leaves behind for a lab of differencing disks over one reference
/// disk: every VM folder holds its own copy of the parent (same DataWriteGuid, same bytes) and a
/// child whose locator points at that copy. This is the tree `vhdkit share` exists for.
fn exported_lab(out: &std::path::Path) {
    let mut base = VhdxBuilder::new(Kind::Dynamic, 4 * MIB, MIB as u32, 512);
    base.data_write_guid = Uuid::from_u128(0x6c61_6245_0000_4000_8000_0000_0000_0001);
    base.file_write_guid = Uuid::from_u128(0x6c61_6245_0000_4000_8000_0000_0000_0002);
    base.virtual_disk_id = Uuid::from_u128(0x6c61_6245_0000_4000_8000_0000_0000_0003);
    base.creator = "vhdkit make-testdata".into();
    base.write(0, &banner("vhdkit exported lab reference disk", 0xB0, 4096));
    base.write(2 * MIB, &vec![0xB2; 64 * 1024]);
    let base_bytes = base.build().bytes;
    for (i, (vm, mark)) in (1u128..).zip(EXPORTED_VMS) {
        let disks = out.join(vm).join("Virtual Hard Disks");
        std::fs::create_dir_all(&disks).expect("create VM folder");
        std::fs::write(disks.join("Base-2022.vhdx"), &base_bytes).expect("write parent copy");
        let mut child = VhdxBuilder::new(Kind::Differencing, 4 * MIB, MIB as u32, 512);
        child.data_write_guid = Uuid::from_u128(0x6c61_6245_0000_4000_8000_0000_0000_0010 + i);
        child.file_write_guid = Uuid::from_u128(0x6c61_6245_0000_4000_8000_0000_0000_0020 + i);
        child.virtual_disk_id = base.virtual_disk_id;
        child.parent_linkage = base.data_write_guid;
        child.relative_path = Some(r".\Base-2022.vhdx".into());
        child.absolute_win32_path =
            Some(format!(r"D:\Export\{vm}\Virtual Hard Disks\Base-2022.vhdx"));
        child.creator = "vhdkit make-testdata".into();
        child.write(512, &banner(&format!("{vm} writes here"), mark, 1024));
        child.write(3 * MIB, &vec![mark; 128 * 1024]);
        let name = format!("{vm}.avhdx");
        std::fs::write(disks.join(name), child.build().bytes).expect("write child");
    }
    println!("wrote the exported lab to {}", out.display());
}
