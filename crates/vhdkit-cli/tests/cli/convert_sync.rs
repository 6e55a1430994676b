//! `convert --no-sync` makes no `fsync` (nor `fdatasync`, nor early writeback) and still gives
//! DST its name only at the end; a default convert syncs its output and folder.

use crate::util::*;

/// The syscalls of interest `vhdkit ARGS` makes, one line each, from an strace log.
fn traced(dir: &std::path::Path, args: &[&std::ffi::OsStr]) -> Vec<String> {
    let log = dir.join("strace.log");
    let o = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&log)
        .args([
            "-e",
            "trace=fsync,fdatasync,sync_file_range,fadvise64,link,linkat,rename,renameat,renameat2",
        ])
        .arg(env!("CARGO_BIN_EXE_vhdkit"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    text.lines().map(str::to_owned).collect()
}

fn is_sync(l: &str) -> bool {
    ["fsync(", "fdatasync(", "sync_file_range(", "fadvise64("]
        .iter()
        .any(|s| l.contains(s))
}

#[test]
fn no_sync_never_syncs_and_names_dst_last() {
    if !need_tool("strace", "the syscalls of convert are traced with strace") {
        return;
    }
    let d = tmp();
    let src = p(d.path(), "src.img");
    // 9 MiB of data, then 4 KiB of zeros: direct writes, a page-cache tail, a hole.
    let mut data: Vec<u8> = (0..9u32 << 20)
        .map(|i| (i / 4096 % 250 + 1) as u8)
        .collect();
    data.extend([0u8; 4096]);
    std::fs::write(&src, &data).unwrap();
    for (flags, synced) in [(&["--no-sync"][..], false), (&[][..], true)] {
        let dst = p(d.path(), if synced { "synced.raw" } else { "fast.raw" });
        let mut a: Vec<&std::ffi::OsStr> = ["convert", "--from", "raw", "--to", "raw"]
            .iter()
            .map(|s| s.as_ref())
            .collect();
        a.extend(flags.iter().map(std::ffi::OsStr::new));
        a.extend([src.as_os_str(), dst.as_os_str()]);
        let lines = traced(d.path(), &a);
        let syncs: Vec<&String> = lines.iter().filter(|l| is_sync(l)).collect();
        let name = dst.file_name().unwrap().to_string_lossy().into_owned();
        let naming = lines
            .iter()
            .position(|l| (l.contains("link") || l.contains("rename")) && l.contains(&name))
            .unwrap_or_else(|| panic!("DST never named: {lines:#?}"));
        if synced {
            // The data before the name, the folder after it.
            let first = lines.iter().position(|l| l.contains("fsync(")).unwrap();
            let last = lines.iter().rposition(|l| l.contains("fsync(")).unwrap();
            assert!(first < naming && naming < last, "{lines:#?}");
        } else {
            assert!(syncs.is_empty(), "--no-sync synced: {syncs:#?}");
        }
        assert_eq!(std::fs::read(&dst).unwrap(), data);
    }
}
