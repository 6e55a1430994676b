//! Partial outputs on storage shared between hosts: a pid means something only on the host
//! that runs it, so a leftover is removed only when its name records this host and its process
//! is gone here; another host's (or one recording no host) is kept and reported as unknown.

use crate::util::*;

/// pid_max on Linux is at most 2^22: no process has this pid.
const DEAD: u32 = 4_999_999;

/// A host id that is not this host's.
fn other_host() -> &'static str {
    match vhdkit::sidefile::host_id() {
        Some("0123456789ab") => "ba9876543210",
        _ => "0123456789ab",
    }
}

#[test]
fn only_this_hosts_dead_leftovers_are_removed_others_are_reported_unknown() {
    let d = tmp();
    let src = p(d.path(), "src.vhd");
    run_success(["create", src.to_str().unwrap(), "--size", "8M"]);
    let out_dir = d.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("x.vhd");
    let mine = vhdkit::sidefile::partial_output_of(&out, DEAD);
    // Another host's run may be writing right now, whatever pid it has here (1 runs here).
    let elsewhere_dead = out_dir.join(format!(".x.vhd.vhdkit-partial-{}-{DEAD}", other_host()));
    let elsewhere_live = out_dir.join(format!(".x.vhd.vhdkit-share-tmp-{}-1", other_host()));
    let no_host = out_dir.join(format!(".x.vhd.vhdkit-partial-{DEAD}"));
    for f in [&mine, &elsewhere_dead, &elsewhere_live, &no_host] {
        std::fs::write(f, b"half a disk").unwrap();
    }

    let r = run(["check", "--json", out_dir.to_str().unwrap()]);
    assert_eq!(r.code, 1, "this host's leftover is a warning: {r:?}");
    let j = r.json();
    let code_of = |name: &std::path::Path| -> String {
        let files = j["files"].as_array().unwrap();
        let f = files
            .iter()
            .find(|f| f["path"].as_str() == name.to_str())
            .unwrap_or_else(|| panic!("{} not reported: {j}", name.display()));
        f["findings"][0]["code"].as_str().unwrap().to_string()
    };
    assert_eq!(code_of(&mine), "file.partial_output.stale");
    for f in [&elsewhere_dead, &elsewhere_live, &no_host] {
        assert_eq!(code_of(f), "file.partial_output.unknown", "{}", f.display());
    }

    run_success([
        "convert",
        "--to",
        "vhd",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(!mine.exists(), "this host's dead leftover was not removed");
    for f in [&elsewhere_dead, &elsewhere_live, &no_host] {
        assert_eq!(std::fs::read(f).unwrap(), b"half a disk", "{}", f.display());
    }
    // Unknown writers alone are information: check exits 0 and says why they stay.
    let r = run(["check", out_dir.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout.matches("file.partial_output.unknown").count(),
        3,
        "{r:?}"
    );
    assert!(r.stdout.contains("another host"), "{r:?}");
}
