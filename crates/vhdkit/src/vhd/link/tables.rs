//! The dynamic header and footer steps of a link edit: the header encoded from its parsed
//! fields with the new name, linkage and entries (and described field by field), and the
//! footers moved or synced. Both structures go through their binrw types in `vhd::format`.

use binrw::meta::WriteEndian;
use binrw::BinWrite;

use crate::error::{Error, Result};
use crate::txn::WriteOp;

use super::super::format::{self, ParentLocatorEntry};
use super::super::locator::code_text;
use super::edit::{read_padded, Editor};
use super::{LinkEdit, MAX_PARENT_NAME_UNITS};

const HEADER: &str = "vhd dynamic header";

/// The on-disk bytes of a binrw structure.
fn to_bytes<T>(v: &T, what: &str) -> Result<Vec<u8>>
where
    T: for<'a> BinWrite<Args<'a> = ()> + WriteEndian,
{
    let mut c = std::io::Cursor::new(Vec::new());
    v.write(&mut c)
        .map_err(|e| Error::Internal(format!("encoding the {what}: {e}")))?;
    Ok(c.into_inner())
}

fn describe_entry(e: &ParentLocatorEntry, path: Option<&str>) -> String {
    if e.platform_code == [0; 4] {
        return "(empty)".to_string();
    }
    format!(
        "{} {} (data {} bytes at {:#x}, space {})",
        code_text(e.platform_code),
        path.map_or_else(|| "(undecodable)".to_string(), |p| format!("\"{p}\"")),
        e.platform_data_length,
        e.platform_data_offset,
        e.platform_data_space
    )
}

/// The parent unicode name field for `name`: UTF-16 big-endian, zero-padded.
fn encode_parent_name(name: &str) -> Result<[u8; format::PARENT_NAME_BYTES]> {
    format::parent_name_field(name).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "parent unicode name of {} code units is longer than {MAX_PARENT_NAME_UNITS}",
            name.encode_utf16().count()
        ))
    })
}

impl Editor<'_> {
    /// The new dynamic header: parent name, linkage, locator entries, checksum.
    pub(super) fn header(&mut self, edit: &LinkEdit, values: [Option<&str>; 2]) -> Result<()> {
        let mut h = self.hdr.raw.clone();
        if let Some(name) = &edit.parent_name {
            h.parent_unicode_name = encode_parent_name(name)?;
        }
        h.parent_locators = self.entries;
        if let Some((id, ts)) = edit.linkage {
            h.parent_unique_id = id;
            h.parent_time_stamp = ts;
        }
        h.checksum = format::checksum(&to_bytes(&h, HEADER)?, format::DYNAMIC_CHECKSUM_OFFSET);
        let new = to_bytes(&h, HEADER)?;
        let old = to_bytes(&self.hdr.raw, HEADER)?;
        self.describe_header(edit, values, h.checksum);
        if new != old {
            self.writes.push(WriteOp {
                offset: self.hdr.offset,
                data: new,
                old,
                what: "dynamic header".into(),
            });
        }
        Ok(())
    }

    fn describe_header(&mut self, edit: &LinkEdit, values: [Option<&str>; 2], sum: u32) {
        let raw = &self.hdr.raw;
        let (old_id, old_ts, old_sum) = (raw.parent_unique_id, raw.parent_time_stamp, raw.checksum);
        if let Some(name) = &edit.parent_name {
            let old_name = self.hdr.parent_name.name.clone();
            let old_name = old_name.unwrap_or_else(|| "(undecodable)".to_string());
            self.change(HEADER, "parent unicode name".into(), old_name, name.clone());
        }
        if let Some((id, ts)) = edit.linkage {
            let g = crate::guid::from_vhd_bytes;
            let (old_g, new_g) = (g(old_id).to_string(), g(id).to_string());
            self.change(HEADER, "parent unique id".into(), old_g, new_g);
            let (old_t, new_t) = (old_ts.to_string(), ts.to_string());
            self.change(HEADER, "parent time stamp".into(), old_t, new_t);
        }
        for i in 0..format::LOCATOR_ENTRIES {
            let old_p = self.path_of(i);
            let new_p = match self.keep.iter().position(|s| *s == Some(i)) {
                Some(k) => values[k].map(str::to_string),
                None if self.entries[i] == self.old[i] => old_p.clone(),
                None => None,
            };
            let old_d = describe_entry(&self.old[i], old_p.as_deref());
            let new_d = describe_entry(&self.entries[i], new_p.as_deref());
            self.change(HEADER, format!("parent locator {i}"), old_d, new_d);
        }
        let hex = |v: u32| format!("{v:#010x}");
        self.change(HEADER, "checksum".into(), hex(old_sum), hex(sum));
    }

    /// Footers: content unchanged; the end one moves after relocated data, and with `sync` the
    /// copy in use goes to both places. Returns the new file length.
    pub(super) fn footers(&mut self, sync: bool) -> Result<u64> {
        let relocated = self.tail > self.first_tail;
        if !sync && !relocated {
            return Ok(self.file_len);
        }
        // The copy in use, as parsed (its checksum was verified at open).
        let footer = to_bytes(&self.file.footer.raw, "vhd footer")?;
        if sync {
            self.sync_front(&footer)?;
        }
        let (end_footer, file_len) = (self.end_footer, self.file_len);
        let new_at = if relocated { self.tail } else { end_footer };
        let old_end = read_padded(self.src, new_at, format::FOOTER_BYTES as u64, file_len)?;
        if new_at != end_footer {
            let (old, new) = (format!("{end_footer:#x}"), format!("{new_at:#x}"));
            self.change("vhd footer (end)", "offset".into(), old, new);
        }
        if old_end != footer {
            self.writes.push(WriteOp {
                offset: new_at,
                old: old_end,
                data: footer,
                what: if new_at == end_footer {
                    "end footer".into()
                } else {
                    "end footer, moved after the relocated locator data".into()
                },
            });
        }
        let new_len = new_at
            .checked_add(format::FOOTER_BYTES as u64)
            .ok_or_else(|| Error::InvalidArgument("the end footer would lie past 2^64".into()))?;
        let (old, new) = (file_len.to_string(), new_len.to_string());
        self.change("file", "length".into(), old, new);
        if new_len < file_len {
            return Err(Error::Internal(format!(
                "the plan would shrink the file from {file_len} to {new_len} bytes"
            )));
        }
        Ok(new_len)
    }

    /// Rewrite the copy at offset 0 when it differs from `footer`, the copy in use.
    fn sync_front(&mut self, footer: &[u8]) -> Result<()> {
        let front = read_padded(self.src, 0, format::FOOTER_BYTES as u64, self.file_len)?;
        if front != footer {
            let status = self.file.footer.copies.as_str();
            self.change(
                "vhd footer (copy at offset 0)",
                "contents".into(),
                format!("differs from the copy in use (status: {status})"),
                "the copy in use".into(),
            );
            self.writes.push(WriteOp {
                offset: 0,
                old: front,
                data: footer.to_vec(),
                what: "footer copy at offset 0".into(),
            });
        }
        Ok(())
    }
}
