//! Lint: on-disk layouts live in `vhd/format.rs` and `vhdx/format.rs` only (issue #11).
//!
//! Scans the logic files under `vhd/` and `vhdx/` (every `.rs` except `format.rs`, up to their
//! `mod tests`) for magic byte offsets, and fails naming file:line. The rule, after comments,
//! string and char literals are blanked out and `const`/`static` items skipped:
//! - a hex literal of 0x10 or more (offsets, sizes and masks are written in hex by habit);
//! - a slice range with a decimal bound of 2 or more inside `[...]`, `get(...)` or
//!   `get_mut(...)` (`b[4..8]`, `buf.get(..4092)`): a field position inside a structure;
//! - a byte helper called with a literal position of 2 or more as its second argument
//!   (`le_u32(b, 8)`, `put(&mut b, 64, ..)`): the same thing spelt as a call.
//!
//! Small numbers (0, 1, shifts, loop counts, sector counts outside ranges) are not flagged:
//! they are not structure offsets, and flagging them would bury the real findings.

use std::path::{Path, PathBuf};

/// `src` with comments, string literals and char literals replaced by spaces (newlines kept).
fn blank_non_code(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while let Some(&ch) = c.get(i) {
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while let Some(&x) = c.get(i) {
                if x == '\n' {
                    break;
                }
                blank(&mut out, x);
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0usize;
            while let Some(&x) = c.get(i) {
                let y = c.get(i + 1).copied();
                if x == '/' && y == Some('*') {
                    depth += 1;
                } else if x == '*' && y == Some('/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                    continue;
                }
                blank(&mut out, x);
                i += 1;
            }
        } else if ch == 'r' && matches!(next, Some('"') | Some('#')) && !ident_before(&c, i) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(ch);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let rest: String = c.get(j + 1..).unwrap_or(&[]).iter().collect();
            let len = rest.find(&close).map_or(rest.chars().count(), |p| {
                rest.get(..p).map_or(0, |s| s.chars().count()) + close.chars().count()
            });
            for k in i..(j + 1 + len).min(c.len()) {
                blank(&mut out, c.get(k).copied().unwrap_or(' '));
            }
            i = j + 1 + len;
        } else if ch == '"' || (ch == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\''))) {
            // A string or char literal ('x', '\n', '\u{..}'); a lifetime has no closing quote.
            i = blank_quoted(&c, i, &mut out);
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// Blank the quoted literal opening at `c[i]` (escapes honoured); returns the index after it.
fn blank_quoted(c: &[char], mut i: usize, out: &mut String) -> usize {
    let quote = c.get(i).copied().unwrap_or('"');
    out.push(' ');
    i += 1;
    while let Some(&x) = c.get(i) {
        out.push(if x == '\n' { '\n' } else { ' ' });
        i += 1;
        if x == '\\' {
            if let Some(&y) = c.get(i) {
                out.push(if y == '\n' { '\n' } else { ' ' });
                i += 1;
            }
        } else if x == quote {
            break;
        }
    }
    i
}

fn ident_before(c: &[char], i: usize) -> bool {
    i > 0
        && c.get(i - 1)
            .is_some_and(|p| p.is_alphanumeric() || *p == '_')
}

/// Hex literals of 0x10 or more in `line`.
fn big_hex(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 1 < b.len() {
        let starts = b[i] == b'0'
            && matches!(b[i + 1], b'x' | b'X')
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i + 2;
        let mut digits = String::new();
        while j < b.len() && (b[j].is_ascii_hexdigit() || b[j] == b'_') {
            if b[j] != b'_' {
                digits.push(char::from(b[j]));
            }
            j += 1;
        }
        let big = digits.trim_start_matches('0').len() > 1;
        if big {
            found.push(line[i..j].to_string());
        }
        i = j;
    }
    found
}

/// Slice ranges with a decimal bound of 2 or more inside `[..]`, `get(..)`, `get_mut(..)`.
fn magic_ranges(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (open, close) in [("[", ']'), ("get(", ')'), ("get_mut(", ')')] {
        let mut from = 0;
        while let Some(p) = line.get(from..).and_then(|s| s.find(open)) {
            let start = from + p + open.len();
            from = start;
            let Some(end) = line.get(start..).and_then(|s| s.find(close)) else {
                break;
            };
            let inner = line.get(start..start + end).unwrap_or("").trim();
            let Some((lo, hi)) = inner.split_once("..") else {
                continue;
            };
            let hi = hi.strip_prefix('=').unwrap_or(hi);
            let num = |s: &str| -> Option<u64> {
                let t = s.trim();
                let digits = t.trim_end_matches(|ch: char| ch.is_ascii_alphabetic());
                if t.is_empty() || !digits.chars().all(|ch| ch.is_ascii_digit() || ch == '_') {
                    return None;
                }
                digits.replace('_', "").parse().ok()
            };
            let lo_ok = lo.trim().is_empty() || num(lo).is_some();
            let hi_ok = hi.trim().is_empty() || num(hi).is_some();
            let magic = [num(lo), num(hi)].iter().flatten().any(|&v| v >= 2);
            if lo_ok && hi_ok && magic {
                found.push(format!("{open}{inner}{close}"));
            }
        }
    }
    found
}

/// Helpers that take (bytes, position, ..): a literal position is a structure offset.
const BYTE_HELPERS: &[&str] = &[
    "le_u16", "le_u32", "le_u64", "be_u16", "be_u32", "be_u64", "le16", "le32", "le64", "be16",
    "be32", "be64", "put",
];

/// Calls of [`BYTE_HELPERS`] whose second argument is a decimal literal of 2 or more.
fn magic_calls(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    for name in BYTE_HELPERS {
        let pat = format!("{name}(");
        let mut from = 0;
        while let Some(p) = line.get(from..).and_then(|s| s.find(&pat)) {
            let at = from + p;
            from = at + pat.len();
            let whole_word = line
                .get(..at)
                .and_then(|s| s.chars().next_back())
                .is_none_or(|ch| !(ch.is_alphanumeric() || ch == '_'));
            if !whole_word {
                continue;
            }
            let mut depth = 0i32;
            let mut args = vec![String::new()];
            for ch in line.get(from..).unwrap_or("").chars() {
                match ch {
                    '(' | '[' => depth += 1,
                    ')' | ']' if depth == 0 => break,
                    ')' | ']' => depth -= 1,
                    ',' if depth == 0 => {
                        args.push(String::new());
                        continue;
                    }
                    _ => {}
                }
                if let Some(last) = args.last_mut() {
                    last.push(ch);
                }
            }
            let second = args.get(1).map(|a| a.trim()).unwrap_or("");
            let digits = second.trim_end_matches(|ch: char| ch.is_ascii_alphabetic());
            let value: Option<u64> = (!digits.is_empty()
                && digits.chars().all(|ch| ch.is_ascii_digit() || ch == '_'))
            .then(|| digits.replace('_', "").parse().ok())
            .flatten();
            if value.is_some_and(|v| v >= 2) {
                found.push(format!("{name}(.., {second}, ..)"));
            }
        }
    }
    found
}

/// Findings `file:line: what` for one file's text.
fn scan(name: &str, text: &str) -> Vec<String> {
    let code = blank_non_code(text);
    let mut findings = Vec::new();
    let mut in_const = false;
    for (n, line) in code.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("mod tests") {
            break;
        }
        let item = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ");
        if item.starts_with("const ") || item.starts_with("static ") {
            in_const = true;
        }
        if in_const {
            if t.ends_with(';') {
                in_const = false;
            }
            continue;
        }
        for hit in big_hex(line)
            .into_iter()
            .chain(magic_ranges(line))
            .chain(magic_calls(line))
        {
            findings.push(format!("{name}:{}: magic offset {hit}", n + 1));
        }
    }
    findings
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn rule_catches_offsets_and_skips_consts_comments_and_strings() {
    let text = "const A: u64 = 0x40;\n\
                pub const B: [u8; 2] = [\n    0x66, 0x77,\n];\n\
                // at 0x40\n\
                let m = \"must be >= 0x10000\";\n\
                let x = buf[4092..4096];\n\
                let y = b.get(..8);\n\
                let z = off + 0x10;\n\
                let w = le_u32(&b, 8) + le_u32(&b, at) + simple_u32(b, 8);\n\
                let ok = b[..n]; let ok2 = &b[1..]; let c = 'x'; let s = 0xF;\n\
                mod tests {\n let t = 0x1000;\n}\n";
    let f = scan("t.rs", text);
    assert_eq!(
        f,
        vec![
            "t.rs:7: magic offset [4092..4096]",
            "t.rs:8: magic offset get(..8)",
            "t.rs:9: magic offset 0x10",
            "t.rs:10: magic offset le_u32(.., 8, ..)",
        ],
        "{f:#?}"
    );
}

#[test]
#[cfg(vhdkit_workspace)]
fn no_magic_offsets_outside_format_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for d in ["vhd", "vhdx"] {
        rs_files(&src.join(d), &mut files);
    }
    files.sort();
    assert!(files.len() > 10, "found only {files:?}");
    let mut findings = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(&src)
            .unwrap_or(&f)
            .to_string_lossy()
            .replace('\\', "/");
        if rel.ends_with("/format.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        findings.extend(scan(&rel, &text));
    }
    assert!(
        findings.is_empty(),
        "byte offsets belong in vhd/format.rs or vhdx/format.rs:\n{}",
        findings.join("\n")
    );
}
