//! Simulating a link plan in memory and re-opening the result: it must parse, map every block
//! exactly as before, keep its size and identity, and carry exactly the planned locators,
//! parent name and linkage.

use crate::disk::OpenOptions;
use crate::error::Result;
use crate::txn::Plan;

use super::super::{SharedSource, VhdFile};
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
    // The file before is kept as parsed; the overlay shares its source.
    let src = Box::new(SharedSource(before.src.clone()));
    let after = crate::simulate::reopen(src, writes, plan.new_len, |s| VhdFile::open(s, opts))?;
    check(same_table(&before, &after)?, "block allocation table")?;
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

/// Whether both files' tables hold the same entries: streamed from `before`, read on demand
/// from `after`, so neither is held whole.
fn same_table(before: &VhdFile, after: &VhdFile) -> Result<bool> {
    let (Some(b), Some(a)) = (&before.bat, &after.bat) else {
        return Ok(before.bat.is_none() && after.bat.is_none());
    };
    if (a.offset(), a.len()) != (b.offset(), b.len()) {
        return Ok(false);
    }
    let mut same = true;
    b.scan(0, |i, e| {
        same &= a.get(i)? == e;
        Ok(())
    })?;
    Ok(same)
}
