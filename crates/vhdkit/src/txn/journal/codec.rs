//! The bytes of a journal: magic, version, the plan's lengths, every write's old and new bytes,
//! then a CRC-32C of all of it. Decoding refuses anything vhdkit would not have written.

use crate::txn::{Plan, WriteOp};

const MAGIC: &[u8; 8] = b"VHDKITJ1";
const VERSION: u32 = 1;
/// A journal holds metadata only (headers, locators, footers); 64 MiB is far beyond any plan.
pub(super) const MAX_JOURNAL_BYTES: u64 = 64 << 20;
/// The most a journal file may hold: what is read back (and so held in memory) when a disk is
/// opened. A plan whose journal would be larger is refused before anything is written.
pub const MAX_JOURNAL_FILE: u64 = 16 << 20;

/// The journal bytes for `plan`.
pub(super) fn encode(plan: &Plan) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(
        &u32::try_from(plan.writes.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    b.extend_from_slice(&plan.old_len.to_le_bytes());
    b.extend_from_slice(&plan.new_len.to_le_bytes());
    for w in &plan.writes {
        let what = w.what.as_bytes();
        let what = what.get(..what.len().min(u16::MAX as usize)).unwrap_or(&[]);
        b.extend_from_slice(&w.offset.to_le_bytes());
        b.extend_from_slice(
            &u32::try_from(w.data.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        b.extend_from_slice(&u16::try_from(what.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(what);
        b.extend_from_slice(&w.old);
        b.extend_from_slice(&w.data);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Size in bytes of the journal that applying `plan` writes.
pub fn encoded_len(plan: &Plan) -> usize {
    encode(plan).len()
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("journal truncated at byte {}", self.pos))?;
        let s = self.b.get(self.pos..end).ok_or("journal truncated")?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> std::result::Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// Parse a journal; `Err` says why it is not a valid vhdkit journal.
pub(super) fn decode(bytes: &[u8]) -> std::result::Result<Plan, String> {
    let body_len = bytes
        .len()
        .checked_sub(4)
        .ok_or("journal shorter than its checksum")?;
    let (body, crc) = bytes.split_at(body_len);
    let stored = crate::util::le_u32(crc, 0);
    if crc32c::crc32c(body) != stored {
        return Err("journal checksum does not match (torn or foreign journal)".into());
    }
    let mut c = Cursor { b: body, pos: 0 };
    if c.take(8)? != MAGIC {
        return Err("not a vhdkit journal (bad magic)".into());
    }
    let v = c.u32()?;
    if v != VERSION {
        return Err(format!("journal version {v} is not supported"));
    }
    let plan = decode_plan(&mut c)?;
    if c.pos != body.len() {
        return Err("journal has trailing bytes".into());
    }
    check_bounds(&plan)?;
    Ok(plan)
}

/// The lengths and records after the version.
fn decode_plan(c: &mut Cursor<'_>) -> std::result::Result<Plan, String> {
    let count = c.u32()?;
    let mut plan = Plan {
        old_len: c.u64()?,
        new_len: c.u64()?,
        ..Plan::default()
    };
    for _ in 0..count {
        let offset = c.u64()?;
        let len = usize::try_from(c.u32()?).map_err(|_| "record too large")?;
        let what_len = usize::from(c.u16()?);
        let what = String::from_utf8_lossy(c.take(what_len)?).into_owned();
        let old = c.take(len)?.to_vec();
        let data = c.take(len)?.to_vec();
        plan.writes.push(WriteOp {
            offset,
            data,
            old,
            what,
        });
    }
    Ok(plan)
}

/// vhdkit changes a file's length only to relocate metadata (a locator and the footer); a
/// journal that claims more, or writes past the file's new end, was not written by vhdkit and
/// must not be able to make recovery resize the file arbitrarily.
fn check_bounds(plan: &Plan) -> std::result::Result<(), String> {
    let limit = plan.new_len;
    if plan.new_len.abs_diff(plan.old_len) > MAX_JOURNAL_BYTES {
        return Err(format!(
            "journal grows the file from {} to {} bytes, more than any vhdkit change",
            plan.old_len, plan.new_len
        ));
    }
    for w in &plan.writes {
        let end = w.offset.checked_add(w.data.len() as u64);
        if end.is_none_or(|e| e > limit) {
            return Err(format!(
                "journal record '{}' at offset {:#x} lies past the file's end ({limit:#x})",
                w.what, w.offset
            ));
        }
    }
    Ok(())
}
