//! Issue 17: `check`, `check --chain`, `chain` and `info` on children made by other writers
//! (vhdkit_testkit::foreign) print the same and exit the same from any working directory,
//! including one that holds a decoy parent of the same name, and report no dead locator.

use std::path::{Path, PathBuf};
use std::process::Command;

use vhdkit_testkit::foreign::{self, Writer};
use vhdkit_testkit::vhd::VhdBuilder;

use crate::util::{tmp, vhdkit, Run};

const SIZE: u64 = 4 << 20;

/// One child per writer, each with its parent where that writer keeps it.
fn lab(root: &Path) -> Vec<(Writer, PathBuf)> {
    let mut out = Vec::new();
    for (i, w) in Writer::ALL.into_iter().enumerate() {
        let base = root.join(w.name());
        let vm = base.join("vm");
        let ref_dir = match w {
            Writer::XenOrchestra | Writer::VirtualBox7 | Writer::Windows => base.join("ref"),
            _ => vm.clone(),
        };
        std::fs::create_dir_all(&vm).unwrap();
        std::fs::create_dir_all(&ref_dir).unwrap();
        let mut id = *b"parent-of-writer";
        id[15] = u8::try_from(i).unwrap();
        let parent = ref_dir.join("base.vhd");
        let mut p = foreign::parent(w, SIZE, id);
        p.write(0, &[0x11; 4096]);
        p.build().write_to(&parent);
        let child = vm.join("child.vhd");
        let mut c = foreign::child(w, &child, &parent, id, SIZE);
        c.write(512, &[0x22; 1024]);
        c.build().write_to(&child);
        out.push((w, child));
    }
    out
}

fn run_in(cwd: &Path, args: &[&str], file: &Path) -> Run {
    vhdkit()
        .current_dir(cwd)
        .args(args)
        .arg(file)
        .output()
        .expect("spawn vhdkit")
        .into()
}

#[test]
fn same_output_from_any_working_directory() {
    let t = tmp();
    let root = std::fs::canonicalize(t.path()).unwrap();
    let children = lab(&root);
    // A decoy: a disk named like every parent, with another identity, in a working directory.
    let decoy = root.join("decoy");
    std::fs::create_dir_all(&decoy).unwrap();
    let mut d = VhdBuilder::dynamic(SIZE).unique_id(*b"decoy-not-parent");
    d.write(0, &[0xDD; 512]);
    d.build().write_to(&decoy.join("base.vhd"));
    let commands: [&[&str]; 8] = [
        &["check"],
        &["check", "--json"],
        &["check", "--chain"],
        &["check", "--chain", "--json"],
        &["chain"],
        &["chain", "--json"],
        &["info"],
        &["info", "--json"],
    ];
    let mut compared = 0;
    for (w, child) in &children {
        let cwds: [PathBuf; 4] = [
            root.clone(),
            child.parent().unwrap().to_path_buf(),
            PathBuf::from("/"),
            decoy.clone(),
        ];
        for args in commands {
            let first = run_in(&cwds[0], args, child);
            assert!(
                !first.stdout.contains("locator.dead") && !first.stdout.contains("not found\""),
                "{} {args:?}: {first:?}",
                w.name()
            );
            let expect_code = match (args[0], w.little_endian_name()) {
                // The little-endian parent name is a warning: exit 1, the same everywhere.
                ("check", true) => 1,
                _ => 0,
            };
            assert_eq!(first.code, expect_code, "{} {args:?}: {first:?}", w.name());
            for cwd in &cwds[1..] {
                let r = run_in(cwd, args, child);
                assert_eq!(
                    (r.code, &r.stdout, &r.stderr),
                    (first.code, &first.stdout, &first.stderr),
                    "{} {args:?} from {} differs from {}",
                    w.name(),
                    cwd.display(),
                    cwds[0].display()
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, Writer::ALL.len() * commands.len() * 3);
}

/// `reparent` keeps the child's parent-name style and says so, in text and JSON.
#[test]
fn reparent_reports_the_parent_name_style() {
    let t = tmp();
    let root = std::fs::canonicalize(t.path()).unwrap();
    let children = lab(&root);
    let (_, xo) = children
        .iter()
        .find(|(w, _)| *w == Writer::XenOrchestra)
        .unwrap();
    let base = xo.parent().unwrap().parent().unwrap();
    let moved = base.join("moved/base.vhd");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::copy(base.join("ref/base.vhd"), &moved).unwrap();
    let r: Run = Command::new(env!("CARGO_BIN_EXE_vhdkit"))
        .args(["reparent", "--dry-run"])
        .arg(xo)
        .arg("--parent")
        .arg(&moved)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("parent name:   ../moved/base.vhd")
            && r.stdout
                .contains("name style:    kept (Relative -> Relative)"),
        "{}",
        r.stdout
    );
    let r: Run = Command::new(env!("CARGO_BIN_EXE_vhdkit"))
        .args(["reparent", "--json"])
        .arg(xo)
        .arg("--parent")
        .arg(&moved)
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    let style = &j["plan"]["parent_name_style"];
    assert_eq!(style["before"], "relative", "{j}");
    assert_eq!(style["written"], "relative", "{j}");
    assert_eq!(style["kept"], true, "{j}");
    assert_eq!(
        foreign::xo_find_parent(xo),
        Some(std::fs::canonicalize(&moved).unwrap())
    );
}

/// A VHDX child whose physical sector size differs from its parent's (Windows:
/// `New-VHD -Differencing -PhysicalSectorSizeBytes 512` over a 512e parent): `chain`, `check
/// --chain`, `convert` and `reparent` onto an identical copy all accept it; check reports the
/// info code `chain.physical_sector_size_mismatch`.
#[test]
fn physical_sector_size_may_differ_everywhere() {
    use uuid::Uuid;
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
    let t = tmp();
    let dir = std::fs::canonicalize(t.path()).unwrap();
    let mut p = VhdxBuilder::new(Kind::Dynamic, SIZE, 1 << 20, 512);
    p.data_write_guid = Uuid::from_u128(0x5151);
    p.physical_sector_size = 4096;
    p.write(0, &[0x77; 4096]);
    std::fs::write(dir.join("base.vhdx"), p.build().bytes).unwrap();
    std::fs::create_dir_all(dir.join("copy")).unwrap();
    std::fs::copy(dir.join("base.vhdx"), dir.join("copy/base.vhdx")).unwrap();
    let mut c = VhdxBuilder::new(Kind::Differencing, SIZE, 1 << 20, 512);
    c.physical_sector_size = 512;
    c.parent_linkage = Uuid::from_u128(0x5151);
    c.relative_path = Some(r".\base.vhdx".into());
    c.write(512, &[0x88; 512]);
    let child = dir.join("child.avhdx");
    std::fs::write(&child, c.build().bytes).unwrap();

    let r = run_in(&dir, &["chain"], &child);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("note: physical sector size differs: parent 4096, child 512"),
        "{r:?}"
    );
    let r = run_in(&dir, &["check", "--chain", "--json"], &child);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("\"chain.physical_sector_size_mismatch\""),
        "{}",
        r.stdout
    );
    let r: Run = vhdkit()
        .args(["convert", "--to", "raw"])
        .arg(&child)
        .arg(dir.join("flat.raw"))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    let flat = std::fs::read(dir.join("flat.raw")).unwrap();
    assert_eq!(&flat[..512], &[0x77; 512]);
    assert_eq!(&flat[512..1024], &[0x88; 512]);
    let r: Run = vhdkit()
        .arg("reparent")
        .arg(&child)
        .arg("--parent")
        .arg(dir.join("copy/base.vhdx"))
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("physical sector size differs"), "{r:?}");
}

/// `relink` judges a locator by what it holds: a child found through a relative path in any
/// slot (vhd-lib's `W2ku`, blktap's `W2ku`/`MacX`) needs nothing; VirtualBox 2.x's absolute POSIX
/// path in `W2ru` is an absolute link and is made relative.
#[test]
fn relink_repoints_only_children_found_through_an_absolute_path() {
    let dir = tmp();
    let lab = lab(dir.path());
    let r: Run = vhdkit()
        .args(["relink", "--dry-run", "--json"])
        .arg(dir.path())
        .output()
        .unwrap()
        .into();
    let json = r.json();
    let text = json.to_string();
    for (w, child) in &lab {
        let named = text.contains(&child.display().to_string());
        assert_eq!(
            named,
            *w == Writer::VirtualBox2,
            "{}: {}",
            w.name(),
            serde_json::to_string_pretty(&json).unwrap()
        );
    }
}
