//! Differencing VHDs as other writers make them, and each writer's own parent lookup.
//!
//! Built from reading each writer's published source (facts, not code): which locator slots it
//! fills and in what order, what each holds (relative or absolute, which separators), the unit
//! of the data space field (sectors or bytes), the byte order of the parent unicode name and of
//! the sector bitmaps. The lookups ([`blktap_find_parent`], [`xo_find_parent`]) are the
//! writers' own rules, so a test can show that a reparented child is still found by the tool
//! that made it. Independent of the `vhdkit` crate.

use std::path::{Component, Path, PathBuf};

use crate::vhd::{Locator, VhdBuilder};

/// A writer of differencing VHDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// blktap's tapdisk 0.1 (creator `tap` version 0x00000001): LSB-first bitmaps, the parent
    /// name in native (little-endian) UTF-16, data space in sectors; `MacX`, `W2ku`, `W2ru`
    /// all hold the path relative to the child (`./base.vhd`), `MacX` as `file://./base.vhd`.
    BlktapOld,
    /// blktap's vhd-util 1.3: as above but MSB-first bitmaps, a big-endian bare parent name
    /// and data space in bytes ("to be compatible with MSFT", says its source).
    BlktapNew,
    /// VirtualBox 2.x: `Wi2r`, `Wi2k`, `W2ru`, `W2ku` in slots 0..3, data space in sectors;
    /// the relative slots hold the parent path as it was given, an absolute POSIX path; the
    /// parent name is the file name in little-endian UTF-16.
    VirtualBox2,
    /// VirtualBox 7: the same slots, data space in bytes, relative slots relative to the
    /// child's folder with `/`, absolute slots the POSIX path; big-endian file name.
    VirtualBox7,
    /// Xen Orchestra's vhd-lib: one `W2ku` in slot 0 holding the path relative to the child's
    /// folder (`path.posix.relative`), and the same relative path as the parent name, which
    /// is the only thing vhd-lib reads back.
    XenOrchestra,
    /// DiscUtils: `W2ku` (absolute) and `W2ru` (`.\base.vhd`) in the last two slots (7 and 6),
    /// 512-byte data spaces, the bare file name as the parent name.
    DiscUtils,
    /// Windows (Hyper-V) over a Disk2vhd parent: `W2ku` with an absolute Windows path, `W2ru`
    /// `.\base.vhd` or `..\ref\base.vhd`, the absolute Windows path as the parent name.
    Windows,
}

impl Writer {
    /// Every writer.
    pub const ALL: [Writer; 7] = [
        Writer::BlktapOld,
        Writer::BlktapNew,
        Writer::VirtualBox2,
        Writer::VirtualBox7,
        Writer::XenOrchestra,
        Writer::DiscUtils,
        Writer::Windows,
    ];

    /// A short name for messages and file names.
    pub fn name(self) -> &'static str {
        match self {
            Writer::BlktapOld => "blktap-0.1",
            Writer::BlktapNew => "blktap-1.3",
            Writer::VirtualBox2 => "virtualbox-2",
            Writer::VirtualBox7 => "virtualbox-7",
            Writer::XenOrchestra => "xen-orchestra",
            Writer::DiscUtils => "discutils",
            Writer::Windows => "windows",
        }
    }

    /// True when the writer stores the parent name little-endian.
    pub fn little_endian_name(self) -> bool {
        matches!(self, Writer::BlktapOld | Writer::VirtualBox2)
    }
}

/// `target` relative to the folder `dir`, as `path.posix.relative` gives it (`base.vhd`,
/// `../ref/base.vhd`). Both absolute.
pub fn posix_relative(dir: &Path, target: &Path) -> String {
    let parts = |p: &Path| -> Vec<String> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    let d = parts(dir);
    let t = parts(target);
    let common = d.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out: Vec<String> = vec!["..".to_string(); d.len() - common];
    out.extend(t[common..].iter().cloned());
    out.join("/")
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn sectors_for(len: usize) -> u32 {
    u32::try_from(len.div_ceil(512).max(1)).expect("small")
}

/// A locator whose data space is written as a sector count (the spec's unit).
fn in_sectors(l: Locator) -> Locator {
    let n = sectors_for(l.data.len());
    l.data_space(n)
}

/// The parent as the writer's side of the lab makes it: a dynamic VHD of `size` bytes with
/// the given unique id (Disk2vhd's creator for [`Writer::Windows`]).
pub fn parent(w: Writer, size: u64, id: [u8; 16]) -> VhdBuilder {
    let (app, ver) = match w {
        Writer::BlktapOld => (b"tap\0", 0x0000_0001),
        Writer::BlktapNew => (b"tap\0", 0x0001_0003),
        Writer::VirtualBox2 => (b"vbox", 0x0002_0002),
        Writer::VirtualBox7 => (b"vbox", 0x0007_0000),
        Writer::XenOrchestra => (b"xo  ", 0x0001_0000),
        Writer::DiscUtils => (b"dscu", 0x0001_0000),
        Writer::Windows => (b"d2v ", 0x0002_0001),
    };
    let b = VhdBuilder::dynamic(size).unique_id(id).creator(app, ver);
    if w == Writer::BlktapOld {
        b.lsb_bitmaps()
    } else {
        b
    }
}

/// A differencing child at `child` of the parent file at `parent` (both absolute, the parent
/// already written), made the way `w` makes it.
pub fn child(w: Writer, child: &Path, parent: &Path, parent_id: [u8; 16], size: u64) -> VhdBuilder {
    let child_dir = child.parent().expect("child folder");
    let parent_dir = parent.parent().expect("parent folder");
    let file_name = parent
        .file_name()
        .expect("parent file name")
        .to_string_lossy()
        .into_owned();
    let posix_rel = posix_relative(child_dir, parent);
    let abs = parent.to_string_lossy().into_owned();
    let b = VhdBuilder::differencing(size, parent_id);
    match w {
        Writer::BlktapOld | Writer::BlktapNew => {
            let rel = if parent_dir == child_dir {
                format!("./{posix_rel}")
            } else {
                posix_rel
            };
            let mtime = std::fs::metadata(parent)
                .and_then(|m| m.modified())
                .expect("parent mtime")
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs()
                - 946_684_800;
            let locs = [
                Locator::macx(&format!("file://{rel}")),
                Locator::w2ku(&rel),
                Locator::w2ru(&rel),
            ];
            let mut b = b
                .parent_timestamp(u32::try_from(mtime).expect("before 2136"))
                .creator(b"tap\0", 0x0001_0003);
            if w == Writer::BlktapOld {
                b = b
                    .creator(b"tap\0", 0x0000_0001)
                    .lsb_bitmaps()
                    .parent_name_raw(utf16le(&file_name));
                for l in locs {
                    b = b.locator(in_sectors(l));
                }
            } else {
                b = b.parent_name(&file_name);
                for l in locs {
                    b = b.locator(l);
                }
            }
            b
        }
        Writer::VirtualBox2 => b
            .creator(b"vbox", 0x0002_0002)
            .parent_name_raw(utf16le(&file_name))
            .locator(Locator::wi2r(&abs).data_space(1).slot(0))
            .locator(Locator::wi2k(&abs).data_space(1).slot(1))
            .locator(Locator::w2ru(&abs).data_space(2).slot(2))
            .locator(Locator::w2ku(&abs).data_space(2).slot(3)),
        Writer::VirtualBox7 => b
            .creator(b"vbox", 0x0007_0000)
            .parent_name(&file_name)
            .locator(Locator::wi2r(&posix_rel).data_space(512).slot(0))
            .locator(Locator::wi2k(&abs).data_space(512).slot(1))
            .locator(Locator::w2ru(&posix_rel).data_space(1024).slot(2))
            .locator(Locator::w2ku(&abs).data_space(1024).slot(3)),
        Writer::XenOrchestra => b
            .creator(b"xo  ", 0x0001_0000)
            .parent_name(&posix_rel)
            .locator(Locator::w2ku(&posix_rel).slot(0)),
        Writer::DiscUtils => {
            let win_rel = format!(".\\{}", posix_rel.replace('/', "\\"));
            b.creator(b"dscu", 0x0001_0000)
                .parent_name(&file_name)
                .locator(
                    Locator::w2ku(&format!(r"C:\Disks\{file_name}"))
                        .data_space(512)
                        .slot(7),
                )
                .locator(Locator::w2ru(&win_rel).data_space(512).slot(6))
        }
        Writer::Windows => {
            let win_rel = if parent_dir == child_dir {
                format!(".\\{file_name}")
            } else {
                posix_rel.replace('/', "\\")
            };
            let win_abs = format!(r"C:\Lab\ref\{file_name}");
            b.creator(b"win ", 0x000A_0000)
                .parent_name(&win_abs)
                .locator(Locator::w2ku(&win_abs).data_space(4096).slot(1))
                .locator(Locator::w2ru(&win_rel).data_space(65536).slot(2))
        }
    }
}

/// The fields of a VHD's dynamic header that parent lookups read, parsed here from raw bytes.
#[derive(Debug, Clone)]
pub struct RawHeader {
    /// The 512 bytes of the parent unicode name field.
    pub parent_name: Vec<u8>,
    /// `(code, data)` of each non-empty locator slot, in slot order.
    pub locators: Vec<([u8; 4], Vec<u8>)>,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Read the dynamic header of the VHD at `path` (through the footer copy at offset 0).
pub fn raw_header(path: &Path) -> RawHeader {
    let f = std::fs::read(path).expect("read the child");
    let h = usize::try_from(be_u64(&f, 16)).expect("header offset");
    let hdr = &f[h..h + 1024];
    let mut locators = Vec::new();
    for i in 0..8 {
        let e = &hdr[576 + 24 * i..600 + 24 * i];
        let code: [u8; 4] = e[0..4].try_into().expect("code");
        if code == [0; 4] {
            continue;
        }
        let len = be_u32(e, 8) as usize;
        let off = usize::try_from(be_u64(e, 16)).expect("offset");
        locators.push((code, f[off..off + len].to_vec()));
    }
    RawHeader {
        parent_name: hdr[64..576].to_vec(),
        locators,
    }
}

fn utf16_string(b: &[u8], big_endian: bool) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| {
            if big_endian {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_le_bytes([c[0], c[1]])
            }
        })
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// blktap's lookup (`vhd_parent_locator_get`, `vhd_find_parent`): the `MacX`, `W2ku` and
/// `W2ru` slots in slot order; `\` becomes `/` and a `C:` prefix is dropped; an absolute path
/// is used when readable, anything else is joined to the child's real folder.
pub fn blktap_find_parent(child: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(child).ok()?;
    let dir = real.parent()?.to_path_buf();
    for (code, data) in raw_header(child).locators {
        let name = match &code {
            b"MacX" => String::from_utf8(data)
                .ok()?
                .strip_prefix("file://")?
                .to_string(),
            b"W2ku" | b"W2ru" => {
                let s = utf16_string(&data, false).replace('\\', "/");
                s.strip_prefix("C:")
                    .or_else(|| s.strip_prefix("c:"))
                    .map_or(s.clone(), str::to_string)
            }
            _ => continue,
        };
        if name.starts_with('/') && Path::new(&name).is_file() {
            return Some(PathBuf::from(name));
        }
        let cand = dir.join(&name);
        if cand.is_file() {
            return std::fs::canonicalize(cand).ok();
        }
    }
    None
}

/// vhd-lib's lookup: the parent unicode name (big-endian), resolved from the child's folder
/// (`path.resolve(dirname(child), name)`); no locator is read.
pub fn xo_find_parent(child: &Path) -> Option<PathBuf> {
    let name = utf16_string(&raw_header(child).parent_name, true);
    if name.is_empty() {
        return None;
    }
    let cand = child.parent()?.join(name);
    cand.is_file()
        .then(|| std::fs::canonicalize(cand).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_relative_is_vhd_libs_form() {
        let d = Path::new("/lab/vm");
        assert_eq!(posix_relative(d, Path::new("/lab/vm/base.vhd")), "base.vhd");
        assert_eq!(
            posix_relative(d, Path::new("/lab/ref/base.vhd")),
            "../ref/base.vhd"
        );
        assert_eq!(
            posix_relative(d, Path::new("/srv/x/base.vhd")),
            "../../srv/x/base.vhd"
        );
    }
}
