//! Chain checks (`check --chain`): every parent resolves, identities, sizes and sector sizes
//! agree, no loops, bounded depth; and every parent passes the structural checks.

use std::path::Path;

use super::{check_source, CheckOptions, Finding};
use crate::chain::{Chain, ChainOptions};

fn structure(p: &Path) -> String {
    format!("chain link {}", p.display())
}

/// Follow the chain of `path` and report every broken link. Structural findings of the parents
/// are included with the parent's path in `structure`; the child's own are not (see
/// [`super::check_file`]).
pub fn check_chain(path: impl AsRef<Path>, opts: &ChainOptions) -> Vec<Finding> {
    let path = path.as_ref();
    let mut out = Vec::new();
    let report = match Chain::inspect(path, opts) {
        Ok(r) => r,
        Err(e) => {
            out.push(Finding::new(
                "chain.not_followed",
                structure(path),
                None,
                format!("the chain could not be followed because the disk does not open: {e}"),
            ));
            return out;
        }
    };
    let copts = CheckOptions::default().chain_options(opts.clone());
    for (i, link) in report.links.iter().enumerate() {
        if i > 0 {
            // Parents: structural check of each (the child is checked by the caller).
            if let Ok(f) = crate::fsx::open_disk(&link.path) {
                for mut finding in check_source(&f, &copts).1 {
                    finding.structure = format!("{} ({})", finding.structure, link.path.display());
                    out.push(finding);
                }
            }
        }
        if let Some(res) = &link.parent {
            for n in &res.notes {
                if n.starts_with("physical sector size") {
                    out.push(Finding::new(
                        "chain.physical_sector_size_mismatch",
                        structure(&link.path),
                        None,
                        n.clone(),
                    ));
                }
            }
            for w in &res.warnings {
                if w.contains("virtual size") {
                    out.push(Finding::new(
                        "chain.size_mismatch",
                        structure(&link.path),
                        None,
                        w.clone(),
                    ));
                }
            }
        }
    }
    let Some(broken) = &report.broken else {
        return out;
    };
    let last = report.links.last();
    let at = last.map_or_else(|| path.to_path_buf(), |l| l.path.clone());
    let code = broken.code();
    out.push(Finding::new(code, structure(&at), None, broken.to_string()));
    out
}
