//! The bundled lab is exactly what `make-testdata` produces.

use std::process::Command;

#[test]
fn bundled_lab_is_reproducible() {
    let d = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_make-testdata"))
        .arg(d.path())
        .status()
        .unwrap();
    assert!(st.success());
    let lab = vhdkit_testkit::testdata_dir().join("lab");
    for f in ["base.vhd", "base.vhdx", "vm1/disk.vhd", "vm1/disk.vhdx"] {
        assert_eq!(
            std::fs::read(d.path().join(f)).unwrap(),
            std::fs::read(lab.join(f)).unwrap(),
            "testdata/lab/{f} differs from what make-testdata writes"
        );
    }
}

#[test]
fn bundled_exported_lab_is_reproducible() {
    let d = tempfile::tempdir().unwrap();
    let st = Command::new(env!("CARGO_BIN_EXE_make-testdata"))
        .arg("--exported-lab")
        .arg(d.path())
        .status()
        .unwrap();
    assert!(st.success());
    let lab = vhdkit_testkit::testdata_dir().join("exported-lab");
    for vm in ["Web01", "Web02", "Db01"] {
        for f in ["Base-2022.vhdx".to_string(), format!("{vm}.avhdx")] {
            let rel = std::path::Path::new(vm).join("Virtual Hard Disks").join(&f);
            assert_eq!(
                std::fs::read(d.path().join(&rel)).unwrap(),
                std::fs::read(lab.join(&rel)).unwrap(),
                "testdata/exported-lab/{} differs from what make-testdata writes",
                rel.display()
            );
        }
    }
}
