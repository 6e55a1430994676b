//! A write error on stdout (`>/dev/full`) is one line on stderr and exit 2, for every command
//! that prints, text or JSON, even with `RUST_BACKTRACE=1` (never a panic or a backtrace).

use std::path::Path;
use std::process::Stdio;

use crate::hostile::{lab, skip};
use crate::util::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run_to_dev_full(args: &[&str]) -> Run {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    vhdkit()
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
        .into()
}

#[test]
fn every_printing_command_reports_a_full_stdout_in_one_line() {
    if !Path::new("/dev/full").exists() {
        skip("/dev/full is missing");
        return;
    }
    let lab = lab();
    let d = lab.dir.path();
    let (c1, b2, vms, shared) = (s(&lab.child1), s(&lab.base2), s(&lab.vms), s(&lab.shared));
    let out = d.join("out.vhdx");
    let new = d.join("new.vhd");
    let new2 = d.join("new2.vhd");
    let cases: Vec<Vec<&str>> = vec![
        vec!["info", c1],
        vec!["info", "--json", c1],
        vec!["chain", c1],
        vec!["chain", "--json", c1],
        vec!["check", vms],
        vec!["check", "--json", "--chain", c1],
        vec!["reparent", c1, "--parent", b2, "--dry-run"],
        vec!["reparent", c1, "--parent", b2, "--dry-run", "--json"],
        vec!["repair", "--dry-run", c1],
        vec!["repair", "--json", c1],
        vec!["share", vms, "--into", shared, "--dry-run"],
        vec!["share", vms, "--into", shared, "--dry-run", "--json"],
        vec!["relink", vms, "--dry-run"],
        vec!["relink", vms, "--dry-run", "--json"],
        vec!["convert", "--to", "vhdx", c1, s(&out)],
        vec!["create", s(&new), "--size", "8M"],
        vec!["create", "--json", s(&new2), "--size", "8M"],
        vec!["reparent", c1, "--parent", b2],
    ];
    for args in &cases {
        let r = run_to_dev_full(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        // Warnings about the inputs may come first; the error is one line, and the last.
        let errors: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| !l.starts_with("vhdkit: warning:"))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {r:?}");
        assert!(
            errors[0].starts_with("vhdkit: error: writing output:"),
            "{args:?}: {r:?}"
        );
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("backtrace"),
            "{args:?}: {r:?}"
        );
    }
}
