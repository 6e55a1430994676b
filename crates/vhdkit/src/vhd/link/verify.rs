//! Simulating a link plan in memory and re-opening the result: it must parse, map every block
//! exactly as before, keep its size and identity, and carry exactly the planned locators,
//! parent name and linkage.

use crate::disk::OpenOptions;
use crate::error::Result;
use crate::txn::Plan;

use super::super::VhdFile;
use super::edit::Expected;

use crate::simulate::same as check;

/// Lay `plan` over the source `before` was parsed from, parse it, and compare with `before`.
pub(super) fn simulate(
    before: VhdFile,
    opts: &OpenOptions,
    plan: &Plan,
    expect: &Expected,
) -> Result<()> {
    let writes = plan
        .writes
        .iter()
        .map(|w| (w.offset, w.data.clone()))
        .collect();
    // The file before is kept as parsed (its BAT among it); only its source moves under the
    // overlay.
    let VhdFile { src, .. } = before;
    let after = crate::simulate::reopen(src, writes, plan.new_len, |s| VhdFile::open(s, opts))?;
    check(after.bat == before.bat, "block allocation table")?;
    check(
        after.shape.virtual_size == before.shape.virtual_size,
        "virtual size",
    )?;
    check(
        after.footer.raw.unique_id == before.footer.raw.unique_id,
        "unique id",
    )?;
    let (Some(a), Some(b)) = (after.header.as_ref(), before.header.as_ref()) else {
        return check(false, "dynamic header");
    };
    check(
        (a.raw.block_size, a.raw.table_offset) == (b.raw.block_size, b.raw.table_offset),
        "block layout",
    )?;
    let got: Vec<(usize, String, Option<String>)> = after
        .slots
        .iter()
        .map(|s| (s.index, s.code.clone(), s.path.clone()))
        .collect();
    check(got == expect.locators, "set of parent locators")?;
    check(
        a.parent_name.name == expect.parent_name,
        "parent unicode name",
    )?;
    check(
        (a.raw.parent_unique_id, a.raw.parent_time_stamp) == expect.linkage,
        "parent linkage",
    )
}
