//! Small helpers that several formats and commands share: byte ranges, UTF-16 text, GUID text.
//! One copy each, so that a fix reaches every caller.

use std::ops::Range;

use uuid::Uuid;

/// Whether two half-open byte ranges intersect (`a.start < b.end && b.start < a.end`; an empty
/// range strictly inside the other counts, as every caller has always treated it).
pub(crate) fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// `v` rounded up to a multiple of `to` (`to` > 0), or `None` on overflow.
pub(crate) fn round_up(v: u64, to: u64) -> Option<u64> {
    debug_assert!(to > 0);
    v.checked_add(to.checked_sub(1)?)
        .and_then(|x| x.checked_div(to))
        .and_then(|x| x.checked_mul(to))
}

/// UTF-16LE bytes of `s` (no terminator).
pub(crate) fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The text of UTF-16LE bytes, or `None` when they are an odd count or not valid UTF-16.
pub(crate) fn from_utf16le(b: &[u8]) -> Option<String> {
    if b.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

/// A GUID as Windows writes it in locators and logs: `{xxxxxxxx-xxxx-...}`, lower case.
pub(crate) fn braced(u: &Uuid) -> String {
    format!("{{{}}}", u.hyphenated())
}

/// A little-endian u32 at `at` in `b`, or 0 where `b` is too short (callers check lengths
/// first when a short buffer is an error).
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = at.checked_add(4).and_then(|end| b.get(at..end)) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// `s` as one line of plain text: terminal escape sequences dropped, every run of whitespace
/// (line breaks included) one space. Messages end up in one-line reports and JSON fields.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in @..~
            if chars.next_if_eq(&'[').is_some() {
                for x in chars.by_ref() {
                    if ('@'..='~').contains(&x) {
                        break;
                    }
                }
            }
            continue;
        }
        if c.is_whitespace() || c.is_control() {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            continue;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out
}

/// binrw's error as one line: its innermost cause (a backtrace error nests the cause in
/// several decorated, coloured lines).
pub(crate) fn binrw_text(e: &binrw::Error) -> String {
    one_line(&e.root_cause().to_string())
}

/// The bytes binrw writes for `v` in its own byte order (format.rs pinning tests).
#[cfg(test)]
pub(crate) fn binrw_bytes<T>(v: &T) -> Vec<u8>
where
    T: for<'a> binrw::BinWrite<Args<'a> = ()> + binrw::meta::WriteEndian,
{
    let mut c = std::io::Cursor::new(Vec::new());
    v.write(&mut c).expect("writing to memory");
    c.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_drops_escapes_and_line_breaks() {
        let s = "\u{1b}[1mbad\u{1b}[0m value\n  \u{2577}\n \u{2570} at 0x4\r\n\tend\n";
        assert_eq!(one_line(s), "bad value \u{2577} \u{2570} at 0x4 end");
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line("\n\n"), "");
    }

    /// A nested struct whose inner assertion fails: binrw reports it as a backtrace over
    /// several lines; the text is one line, the assertion's own message.
    #[test]
    fn binrw_errors_are_one_line() {
        #[binrw::binread]
        #[br(little)]
        #[allow(dead_code)] // read only to fail its assertion
        struct Inner {
            #[br(assert(v == 7, "v is {} not 7", v))]
            v: u8,
        }
        #[binrw::binread]
        #[br(little)]
        struct Outer {
            _a: u8,
            _inner: Inner,
        }
        use binrw::BinRead;
        let e = Outer::read(&mut std::io::Cursor::new([1u8, 9]))
            .err()
            .expect("fails");
        assert!(e.to_string().contains('\n'), "{e}");
        let t = binrw_text(&e);
        assert!(!t.contains('\n') && !t.contains('\u{1b}'), "{t}");
        assert!(t.contains("v is 9 not 7"), "{t}");
    }

    #[test]
    fn ranges_overlap_only_when_they_share_a_byte() {
        assert!(overlaps(&(0..10), &(9..11)));
        assert!(!overlaps(&(0..10), &(10..11)));
        assert!(!overlaps(&(10..10), &(0..10)));
    }

    #[test]
    fn round_up_is_checked() {
        assert_eq!(round_up(1, 512), Some(512));
        assert_eq!(round_up(512, 512), Some(512));
        assert_eq!(round_up(u64::MAX, 512), None);
        assert_eq!(round_up(7, 1), Some(7));
    }

    #[test]
    fn utf16_round_trips_and_rejects_odd_lengths() {
        let b = utf16le("Base-2022.vhdx");
        assert_eq!(from_utf16le(&b).as_deref(), Some("Base-2022.vhdx"));
        assert_eq!(from_utf16le(&b[..3]), None);
        assert_eq!(le_u32(&[1, 0, 0, 0, 9], 0), 1);
        assert_eq!(le_u32(&[1, 0, 0], 0), 0);
        assert_eq!(le_u32(&[1, 0, 0], usize::MAX), 0);
    }
}
