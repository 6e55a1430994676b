//! How many times a reparent parses each file (issue #11: "a reparent parses the child at
//! most twice and the new parent at most twice").
//!
//! Counted by [`crate::parse_count`]: every [`Disk::open_with`] (the new parent, chains) and
//! every source the neutral layer hands out for the child (its own parse and each `open` call
//! of the format plan). The VHDX format plan re-opens its simulated result on the source it
//! already has, so that parse is not seen here (it is one more, as for VHD).

use std::path::Path;

use super::*;
use crate::parse_count;
use crate::{create, CreateParams};

struct Counts {
    child_plan: usize,
    child_apply: usize,
    np_plan: usize,
    np_apply: usize,
}

fn count(ext: &str, verify: bool) -> Counts {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join(format!("base.{ext}"));
    let child = d.path().join(format!("child.{ext}"));
    create(&base, &CreateParams::dynamic(8 << 20)).unwrap();
    create(&child, &CreateParams::differencing(&base)).unwrap();
    std::fs::create_dir(d.path().join("ref")).unwrap();
    let np = d.path().join("ref").join(format!("base.{ext}"));
    std::fs::copy(&base, &np).unwrap();
    let opts = ReparentOptions {
        new_parent: np.clone(),
        verify_content: verify.then(|| base.clone()),
        ..ReparentOptions::default()
    };
    let of = |c: &std::collections::HashMap<PathBuf, usize>, p: &Path| parse_count::of(c, p);
    parse_count::take();
    let p = plan(&child, &opts).unwrap();
    let planned = parse_count::take();
    let report = apply(&p).unwrap();
    let applied = parse_count::take();
    assert!(report.chain.is_some_and(|c| c.intact && c.links.len() == 2));
    Counts {
        child_plan: of(&planned, &child),
        child_apply: of(&applied, &child),
        np_plan: of(&planned, &np),
        np_apply: of(&applied, &np),
    }
}

#[test]
fn parses_per_file() {
    for (ext, verify) in [
        ("vhd", false),
        ("vhdx", false),
        ("vhd", true),
        ("vhdx", true),
    ] {
        let c = count(ext, verify);
        eprintln!(
            "{ext} verify_content={verify}: child {} + {}, new parent {} + {} (plan + apply)",
            c.child_plan, c.child_apply, c.np_plan, c.np_apply
        );
        // The child: once here, then the format plan (VHD: as it is and the simulated result,
        // both through `open`; VHDX: once through `open`), then the chain re-opened by apply.
        let format_opens = if ext == "vhd" { 2 } else { 1 };
        assert_eq!(c.child_plan, 1 + format_opens, "{ext}");
        assert_eq!(c.child_apply, 1, "{ext}");
        // The new parent: once with its chain (also for --verify-content), then under the
        // lock (is it still the planned disk?) and in the re-opened chain.
        assert_eq!(c.np_plan, 1, "{ext}");
        assert_eq!(c.np_apply, 2, "{ext}");
    }
}

/// A change made as asked is not an error of `apply` when the chain does not resolve here (an
/// absolute Windows path only, no map): the report says the chain is broken, and why.
#[test]
fn apply_reports_a_chain_that_does_not_resolve_here() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.vhdx");
    let child = d.path().join("child.vhdx");
    create(&base, &CreateParams::dynamic(8 << 20)).unwrap();
    create(&child, &CreateParams::differencing(&base)).unwrap();
    std::fs::create_dir(d.path().join("ref")).unwrap();
    let np = d.path().join("ref").join("base.vhdx");
    std::fs::copy(&base, &np).unwrap();
    std::fs::remove_file(&base).unwrap();
    let opts = ReparentOptions {
        new_parent: np,
        mode: LocatorMode::AbsoluteOnly,
        windows_path: Some(r"C:\Lab\ref\base.vhdx".into()),
        ..ReparentOptions::default()
    };
    let report = apply(&plan(&child, &opts).unwrap()).unwrap();
    let chain = report.chain.unwrap();
    assert!(!chain.intact);
    assert!(chain.broken_reason.is_some_and(|r| r.contains("not found")));
}
