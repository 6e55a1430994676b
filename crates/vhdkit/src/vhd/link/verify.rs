//! Simulating a link plan in memory and re-opening the result: it must parse, map every block
//! exactly as before, keep its size and identity, and carry exactly the planned locators,
//! parent name and linkage.

use crate::disk::OpenOptions;
use crate::error::Result;
use crate::source::read_struct;
use crate::txn::Plan;

use super::super::{format, VhdFile};
use super::edit::Expected;

use crate::simulate::{differs, same as check};

/// `after` maps every block as `before` does and keeps its virtual size and unique id: what
/// every link edit (reparent, unlink) must leave as it was.
pub(super) fn same_disk(before: &VhdFile, after: &VhdFile) -> Result<()> {
    check(same_table(before, after)?, "block allocation table")?;
    check(
        after.shape.virtual_size == before.shape.virtual_size,
        "virtual size",
    )?;
    check(
        after.footer.raw.unique_id == before.footer.raw.unique_id,
        "unique id",
    )
}

/// Lay `plan` over the source `before` was parsed from, parse it, and compare with `before`.
/// Returns the simulated result as parsed.
pub(super) fn simulate(
    before: VhdFile,
    opts: &OpenOptions,
    plan: &Plan,
    expect: &Expected,
) -> Result<VhdFile> {
    let writes = plan.write_pairs();
    // The file before is kept as parsed; the overlay shares its source.
    let src = Box::new(before.src.clone());
    let after = crate::simulate::reopen(src, writes, plan.new_len, |s| VhdFile::open(s, opts))?;
    same_disk(&before, &after)?;
    let (Some(a), Some(b)) = (after.header.as_ref(), before.header.as_ref()) else {
        return Err(differs("dynamic header"));
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
    )?;
    Ok(after)
}

/// Whether both files' tables hold the same bytes, compared 1 MiB at a time so neither is
/// held whole.
fn same_table(before: &VhdFile, after: &VhdFile) -> Result<bool> {
    const CHUNK: u64 = 1 << 20;
    const STRUCTURE: &str = "vhd block allocation table";
    let (Some(b), Some(a)) = (&before.bat, &after.bat) else {
        return Ok(before.bat.is_none() && after.bat.is_none());
    };
    if (a.offset(), a.len()) != (b.offset(), b.len()) {
        return Ok(false);
    }
    let total = b.len().saturating_mul(format::BAT_ENTRY_BYTES);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut done = 0u64;
    while done < total {
        // At most CHUNK bytes.
        let n = usize::try_from((total - done).min(CHUNK)).unwrap_or(0);
        x.resize(n, 0);
        y.resize(n, 0);
        let at = b.offset().saturating_add(done);
        read_struct(&*before.src, at, &mut x, STRUCTURE)?;
        read_struct(&*after.src, at, &mut y, STRUCTURE)?;
        if x != y {
            return Ok(false);
        }
        done += CHUNK;
    }
    Ok(true)
}
