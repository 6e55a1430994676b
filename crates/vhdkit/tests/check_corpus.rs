//! The hostile corpus (`vhdkit_testkit::corpus`): every case must produce its expected finding
//! code from `check`, and `check`, `info` (open), `chain` (inspect), `convert` (to raw) and
//! `reparent` (plan) must each fail cleanly or succeed, in bounded time, without changing a byte
//! or the mtime of any file. Prints the table case -> codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use vhdkit::check::{check_file, CheckOptions};
use vhdkit::convert::{to_path, ConvertOptions, Target};
use vhdkit::reparent::{plan, ReparentOptions};
use vhdkit::{Chain, ChainOptions, Disk};
use vhdkit_testkit::corpus::{cases, Case};
use vhdkit_testkit::sha256_file;

fn snapshot(files: &[PathBuf]) -> Vec<(String, SystemTime)> {
    files
        .iter()
        .map(|p| {
            (
                sha256_file(p),
                std::fs::metadata(p).unwrap().modified().unwrap(),
            )
        })
        .collect()
}

/// Run every consumer on the case; returns (codes found, outcome summary).
fn run_case(dir: &Path, c: &Case) -> (Vec<&'static str>, String) {
    let paths: Vec<PathBuf> = c
        .files
        .iter()
        .map(|(n, b)| {
            let p = dir.join(n);
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect();
    // Make every mtime older than "now" so a write would show.
    let before = snapshot(&paths);
    let target = &paths[0];
    let opts = CheckOptions::default().chain(c.chain);
    let report = check_file(target, &opts).expect("check runs on every case");
    let codes = report.codes();

    let mut outcome = Vec::new();
    let disk = Disk::open(target);
    outcome.push(if disk.is_ok() { "info:ok" } else { "info:err" });
    let co = ChainOptions::default();
    outcome.push(match Chain::inspect(target, &co) {
        Ok(r) if r.intact => "chain:ok",
        Ok(_) => "chain:broken",
        Err(_) => "chain:err",
    });
    // convert: only for disks small enough to copy quickly (hostile sizes are refused above).
    if let Ok(d) = &disk {
        if d.virtual_size() <= 256 << 20 {
            let out = dir.join("out.raw");
            let r = Chain::open(target, &co).and_then(|ch| {
                to_path(
                    &ch.into_view(),
                    &out,
                    Target::Raw,
                    &ConvertOptions::default().overwrite(true),
                    (),
                )
            });
            outcome.push(if r.is_ok() {
                "convert:ok"
            } else {
                "convert:err"
            });
            let _ = std::fs::remove_file(&out);
        } else {
            outcome.push("convert:skipped(size)");
        }
    } else {
        outcome.push("convert:err(open)");
    }
    let np = paths.get(1).unwrap_or(target).clone();
    let ro = ReparentOptions {
        new_parent: np,
        ..ReparentOptions::default()
    };
    outcome.push(if plan(target, &ro).is_ok() {
        "reparent:planned"
    } else {
        "reparent:err"
    });

    let after = snapshot(&paths);
    assert_eq!(before, after, "{}: a file changed", c.name);
    let _ = std::fs::remove_dir_all(dir);
    (codes, outcome.join(" "))
}

#[test]
fn hostile_corpus() {
    let all = cases(true);
    let names: HashSet<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), all.len(), "case names are unique");
    assert!(all.len() >= 100, "only {} cases", all.len());
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    println!("{:<34} {:<34} found codes | consumers", "case", "expected");
    for (i, c) in all.iter().enumerate() {
        let dir = tmp.path().join(format!("c{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Instant::now();
        let (codes, outcome) = run_case(&dir, c);
        let took = t.elapsed();
        println!(
            "{:<34} {:<34} {} | {outcome} ({} ms)",
            c.name,
            c.expect,
            codes.join(","),
            took.as_millis()
        );
        if !codes.contains(&c.expect) {
            failures.push(format!(
                "{}: expected {}, got {:?}",
                c.name, c.expect, codes
            ));
        }
        assert!(took < Duration::from_secs(60), "{} took {took:?}", c.name);
    }
    println!("{} cases", all.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn clean_builds_are_clean() {
    // The unbroken bases of the corpus report nothing above info.
    use vhdkit_testkit::vhd::VhdBuilder;
    use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut b = VhdBuilder::dynamic(8 << 20);
    b.write(0, &[1; 4096]);
    files.push(("d.vhd", b.build().bytes));
    let mut b = VhdBuilder::fixed(1 << 20);
    b.write(0, &[1; 512]);
    files.push(("f.vhd", b.build().bytes));
    for (n, k) in [
        ("x.vhdx", Kind::Dynamic),
        ("xf.vhdx", Kind::Fixed),
        ("xd.avhdx", Kind::Differencing),
    ] {
        let mut b = VhdxBuilder::new(k, 64 << 20, 2 << 20, 512);
        b.write(0, &[2; 4096]);
        files.push((n, b.build().bytes));
    }
    for (n, bytes) in files {
        let p = tmp.path().join(n);
        std::fs::write(&p, bytes).unwrap();
        let r = check_file(&p, &CheckOptions::default()).unwrap();
        assert!(!r.has_problems(), "{n}: {:?}", r.findings);
    }
}
