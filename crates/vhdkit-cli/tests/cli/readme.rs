//! The README's first command, run exactly as written, on the bundled exported lab.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::util::{run, run_success, sha256_file};

/// The first ```sh block of the README: the command a new user runs first.
fn readme_first_command() -> Vec<String> {
    let readme = vhdkit_testkit::workspace_root().join("README.md");
    let text = std::fs::read_to_string(readme).unwrap();
    let block = text.split("```sh\n").nth(1).unwrap();
    let line = block.lines().next().unwrap();
    line.split_whitespace().map(str::to_owned).collect()
}

/// Every file under `dir`, relative name -> SHA-256.
fn tree_hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), sha256_file(&p));
            }
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, _) in tree_hashes(from) {
        let dst = to.join(&rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), dst).unwrap();
    }
}

/// The virtual contents of a disk through its chain, as a hash.
fn virtual_sha(disk: &Path, scratch: &Path) -> String {
    let raw = scratch.join("virtual.raw");
    let _ = std::fs::remove_file(&raw);
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        disk.as_os_str(),
        raw.as_os_str(),
    ]);
    sha256_file(&raw)
}

const CHILDREN: [&str; 3] = ["Web01", "Web02", "Db01"];

fn child_path(lab: &Path, vm: &str) -> PathBuf {
    lab.join(vm)
        .join("Virtual Hard Disks")
        .join(format!("{vm}.avhdx"))
}

#[test]
fn readme_share_dry_run_on_the_bundled_lab_writes_nothing() {
    let cmd = readme_first_command();
    let dashes = cmd.iter().position(|a| a == "--").unwrap();
    assert_eq!(
        &cmd[..dashes],
        ["cargo", "run", "--release", "-p", "vhdkit-cli"],
        "the README leads with something else: {cmd:?}"
    );
    let args = &cmd[dashes + 1..];
    assert_eq!(args[0], "share");
    assert!(args.iter().any(|a| a == "--dry-run"), "{args:?}");
    let root = vhdkit_testkit::workspace_root();
    let lab = root.join("testdata/exported-lab");
    let before = tree_hashes(&lab);
    assert_eq!(before.len(), 6, "three VMs, each a parent copy and a child");

    let mut json_args = args.to_vec();
    json_args.push("--json".into());
    let out = crate::util::vhdkit()
        .current_dir(&root)
        .args(&json_args)
        .output()
        .unwrap();
    let r: crate::util::Run = out.into();
    assert_eq!(r.code, 0, "{r:?}");
    let plan = &r.json()["plan"];
    assert_eq!(plan["children_to_repoint"], 3, "{}", r.stdout);
    assert_eq!(plan["groups"].as_array().unwrap().len(), 1);
    assert_eq!(plan["groups"][0]["copies"].as_array().unwrap().len(), 2);
    assert!(plan["bytes_freed"].as_u64().unwrap() > 0);

    // And the text form, exactly as the README runs it.
    let out = crate::util::vhdkit()
        .current_dir(&root)
        .args(args)
        .output()
        .unwrap();
    let r: crate::util::Run = out.into();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("3 children to repoint"), "{}", r.stdout);
    assert!(
        r.stdout.contains("dry run: nothing written"),
        "{}",
        r.stdout
    );
    assert_eq!(
        tree_hashes(&lab),
        before,
        "the dry run changed the bundled lab"
    );
    assert!(!lab.join("Shared").exists(), "the dry run created Shared/");
}

#[test]
fn readme_share_for_real_on_a_copy_leaves_one_parent_and_same_contents() {
    let d = tempfile::tempdir().unwrap();
    let lab = d.path().join("exported-lab");
    copy_tree(
        &vhdkit_testkit::workspace_root().join("testdata/exported-lab"),
        &lab,
    );
    let scratch = tempfile::tempdir().unwrap();
    let before: Vec<String> = CHILDREN
        .iter()
        .map(|vm| virtual_sha(&child_path(&lab, vm), scratch.path()))
        .collect();
    assert_eq!(
        before
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "each VM wrote its own data"
    );

    let shared = lab.join("Shared");
    run_success([
        "share".as_ref(),
        lab.as_os_str(),
        "--into".as_ref(),
        shared.as_os_str(),
        "--delete-copies".as_ref(),
    ]);
    let parents: Vec<_> = tree_hashes(&lab)
        .into_keys()
        .filter(|p| p.file_name().unwrap() == "Base-2022.vhdx")
        .collect();
    assert_eq!(parents, [PathBuf::from("Shared/Base-2022.vhdx")]);
    for (vm, sha) in CHILDREN.iter().zip(&before) {
        let child = child_path(&lab, vm);
        assert_eq!(
            &virtual_sha(&child, scratch.path()),
            sha,
            "{vm} reads differently"
        );
        let r = run(["check".as_ref(), "--chain".as_ref(), child.as_os_str()]);
        assert_eq!(r.code, 0, "{vm}: {r:?}");
    }
    // A second run finds nothing left to do.
    let r = run_success([
        "share".as_ref(),
        lab.as_os_str(),
        "--into".as_ref(),
        shared.as_os_str(),
        "--delete-copies".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(r.json()["nothing_to_do"], true, "{}", r.stdout);
}
