//! Regenerates the bundled lab in `testdata/lab/` (deterministic: same bytes every run).
//!
//! `cargo run -p vhdkit-testkit --bin make-testdata -- testdata/lab`
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
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "testdata/lab".into()),
    );
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
