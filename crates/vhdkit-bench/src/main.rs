//! `vhdkit-bench`: time the real `vhdkit` binary against `qemu-img` on the same files, in the
//! same run, and check that both produce the same bytes.
//!
//! Each [`Case`] makes its inputs in a scratch folder, then names the commands to compare
//! (one per tool) and how to check their outputs. Runs are interleaved (tool A, tool B, A, B,
//! ...) with one discarded warm-up round first, since page-cache drops need root and a reboot-free
//! machine. Wall time is measured here; peak RSS comes from `/usr/bin/time -f '%e %M'`, which
//! writes to its own `-o` file so the tools' stderr stays readable.
//!
//! New cases (writes, reparent, shared parents) go in [`cases`]: a name, a `prepare` function and
//! a [`Check`].

#![forbid(unsafe_code)]

mod meta_cases;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use serde_json::{json, Value};

mod clone_case;
mod compact_case;
mod merge_case;
mod nbd_cases;
mod share_cases;
mod sync_cases;

type Res<T> = Result<T, String>;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

const USAGE: &str = "\
usage: vhdkit-bench [OPTIONS]

Compares `vhdkit` with `qemu-img` on the same generated images.

options:
  --vhdkit PATH     vhdkit binary (default: `vhdkit` beside this binary, else target/release/vhdkit)
  --qemu-img PATH   qemu-img binary (default: qemu-img)
  --qemu-io PATH    qemu-io binary, used to fill the inputs (default: qemu-io)
  --runs N          timed runs per tool, after one warm-up run (default: 5)
  --dir DIR         scratch folder, kept afterwards (default: a temp folder, removed)
  --case NAME       run only this case (repeatable); --list shows them
  --list            list the cases and exit
  --json            print JSON instead of a markdown table
  --smoke           run every case once (no timed runs) on small inputs (16 MiB instead of
                    1 GiB, a smaller share tree), checking the outputs only
  --cold            drop the page cache before every command (after its restore and sync),
                    as root through /proc/sys/vm/drop_caches: cold-cache timings
  -h, --help        this text
";

/// Command-line settings.
#[derive(Debug)]
struct Config {
    vhdkit: PathBuf,
    qemu_img: PathBuf,
    qemu_io: PathBuf,
    runs: usize,
    dir: Option<PathBuf>,
    cases: Vec<String>,
    list: bool,
    json: bool,
    smoke: bool,
    /// Drop the page cache before every command.
    cold: bool,
}

/// Size of the generated disks: 1 GiB, or 16 MiB for `--smoke`.
fn disk_bytes(cfg: &Config) -> u64 {
    if cfg.smoke {
        16 * MIB
    } else {
        GIB
    }
}

fn parse_args(args: impl Iterator<Item = OsString>) -> Res<Option<Config>> {
    let mut cfg = Config {
        vhdkit: default_vhdkit(),
        qemu_img: "qemu-img".into(),
        qemu_io: "qemu-io".into(),
        runs: 5,
        dir: None,
        cases: vec![],
        list: false,
        json: false,
        smoke: false,
        cold: false,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument is not UTF-8: {a:?}"))?;
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--vhdkit" => cfg.vhdkit = value("--vhdkit")?.into(),
            "--qemu-img" => cfg.qemu_img = value("--qemu-img")?.into(),
            "--qemu-io" => cfg.qemu_io = value("--qemu-io")?.into(),
            "--dir" => cfg.dir = Some(value("--dir")?.into()),
            "--case" => cfg
                .cases
                .push(value("--case")?.to_string_lossy().into_owned()),
            "--runs" => {
                let v = value("--runs")?;
                cfg.runs = v
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .filter(|&n: &usize| n > 0)
                    .ok_or_else(|| format!("--runs needs a positive integer, not {v:?}"))?;
            }
            "--list" => cfg.list = true,
            "--json" => cfg.json = true,
            "--smoke" => cfg.smoke = true,
            "--cold" => cfg.cold = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    if cfg.smoke {
        // The warm-up round only: every command runs once, nothing is timed.
        cfg.runs = 0;
    }
    Ok(Some(cfg))
}

/// `vhdkit` beside this binary (both land in `target/release`), else the documented default.
fn default_vhdkit() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("vhdkit")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("target/release/vhdkit"))
}

/// Which tool a command runs; the table's ratio is vhdkit's median over qemu-img's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Vhdkit,
    QemuImg,
    /// `cat` of the files a command reads: the cost of reading them once.
    Cat,
    /// vhdkit on a reference input, for cases that measure vhdkit against itself.
    VhdkitBaseline,
    /// `qemu-nbd` serving the same contents to the same NBD client.
    QemuNbd,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Vhdkit => "vhdkit",
            Tool::QemuImg => "qemu-img",
            Tool::Cat => "cat",
            Tool::VhdkitBaseline => "vhdkit (baseline)",
            Tool::QemuNbd => "qemu-nbd",
        }
    }
}

/// One command of a case.
#[derive(Debug)]
struct Contender {
    tool: Tool,
    argv: Vec<OsString>,
    /// File the command writes; removed before each run.
    output: Option<PathBuf>,
    /// `(pristine, work)`: before each run (untimed), `work` is replaced by a copy of
    /// `pristine` (for commands that change their input, like `share`).
    restore: Option<(PathBuf, PathBuf)>,
}

/// How a case's outputs are checked after the timed runs.
#[derive(Debug, Clone)]
enum Check {
    /// Every contender writes a raw image: all must be byte-identical, and vhdkit's must be
    /// sparse (fewer allocated blocks than its length needs).
    SameSparseRaw,
    /// Every contender writes an image of `fmt` (qemu's name): each must hold the virtual
    /// contents of `raw` (`qemu-img compare`), and pass `qemu-img check` where qemu has one.
    SameImage {
        fmt: &'static str,
        qemu_img: PathBuf,
        raw: PathBuf,
    },
    /// `vhdkit share` ran: a dry run on the last run's tree finds nothing to do, and exactly
    /// `parents` parent files remain under `into`.
    ShareDone {
        dir: PathBuf,
        into: PathBuf,
        parents: usize,
    },
    /// Every contender exits 0 (for `check`: the image is clean); no output files.
    AllClean,
}

/// A case ready to run.
#[derive(Debug)]
struct Prepared {
    contenders: Vec<Contender>,
    check: Check,
}

/// One benchmark.
struct Case {
    name: &'static str,
    about: &'static str,
    prepare: fn(&Config, &Path) -> Res<Prepared>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "convert-vhd-dynamic-1g",
            about: "1 GiB dynamic VHD, every other 2 MiB block written, converted to raw",
            prepare: |cfg, dir| prepare_convert(cfg, dir, "vpc", "in.vhd", "subformat=dynamic"),
        },
        Case {
            name: "share-1000-children",
            about: "vhdkit share --delete-copies: 10 parent groups x 10 copies (64 MiB virtual, 16 MiB data each) x 10 empty children = 1000 children",
            prepare: prepare_share,
        },
        Case { name: "share-seed-4", about: "vhdkit share --delete-copies vs cat of the copies: 4 VM folders, each a copy of an 8 GiB dynamic VHDX with 768 MiB of data and a child (issue 15)", prepare: |cfg, dir| share_cases::prepare_seed(cfg, dir, 4) },
        Case { name: "share-seed-10", about: "share-seed-4 with 10 VM folders", prepare: |cfg, dir| share_cases::prepare_seed(cfg, dir, 10) },
        Case { name: "share-seed-4-ext4", about: "share-seed-4 on an ext4 loop file made by mkfs.ext4's defaults (a journal, no online discard: a common desktop or server file system; root)", prepare: |cfg, dir| share_cases::prepare_seed_ext4(cfg, dir, 4) },
        Case { name: "share-seed-10-ext4", about: "share-seed-10 on that ext4 loop file (root)", prepare: |cfg, dir| share_cases::prepare_seed_ext4(cfg, dir, 10) },
        Case {
            name: "check-vhdx-64t",
            about: "vhdkit check vs qemu-img check -f vhdx on an empty 64 TiB sparse VHDX (256 MiB blocks)",
            prepare: |cfg, dir| {
                prepare_check(cfg, dir, "vhdx", "big.vhdx", "block_size=256M", "64T", &["check", "-f", "vhdx"])
            },
        },
        Case {
            name: "check-vhd-2040g",
            about: "vhdkit check vs qemu-img info -f vpc (qemu has no vpc check) on an empty 2040 GiB dynamic VHD",
            prepare: |cfg, dir| {
                prepare_check(cfg, dir, "vpc", "big.vhd", "subformat=dynamic,force_size=on", "2040G", &["info", "-f", "vpc"])
            },
        },
        Case {
            name: "convert-vhdx-dynamic-1g",
            about: "1 GiB dynamic VHDX (2 MiB blocks), every other block written, converted to raw",
            prepare: |cfg, dir| {
                prepare_convert(
                    cfg,
                    dir,
                    "vhdx",
                    "in.vhdx",
                    "subformat=dynamic,block_size=2M",
                )
            },
        },
        Case {
            name: "seqwrite-vhdx-dynamic-1g",
            about: "sequential write of 1 GiB of random data into a new dynamic VHDX \
                    (convert --to vhdx of a random raw image)",
            prepare: |cfg, dir| prepare_to_image(cfg, dir, "vhdx", RawFill::All),
        },
        Case {
            name: "seqwrite-vhd-dynamic-1g",
            about: "sequential write of 1 GiB of random data into a new dynamic VHD \
                    (convert --to vhd of a random raw image)",
            prepare: |cfg, dir| prepare_to_image(cfg, dir, "vpc", RawFill::All),
        },
        Case {
            name: "convert-raw-to-vhdx-1g",
            about: "1 GiB raw image, every other 2 MiB random, the rest zeros, converted to a \
                    dynamic VHDX",
            prepare: |cfg, dir| prepare_to_image(cfg, dir, "vhdx", RawFill::EveryOther2M),
        },
        Case { name: "merge-1g-vhdx", about: "vhdkit merge of a 1 GiB VHDX child with 512 MiB allocated into its parent, vs cp + sync of 512 MiB (the qemu-img row runs cp)", prepare: |cfg, dir| merge_case::prepare(cfg, dir, "vhdx") },
        Case { name: "merge-1g-vhd", about: "vhdkit merge of a 1 GiB VHD child with 512 MiB allocated into its parent, vs cp + sync of 512 MiB (the qemu-img row runs cp)", prepare: |cfg, dir| merge_case::prepare(cfg, dir, "vpc") },
        Case { name: "merge-1g-vhdx-xfs-reflink", about: "merge-1g-vhdx on XFS with reflink (loop file, root): vhdkit clones the child's payload; cp copies", prepare: |cfg, dir| merge_case::prepare_xfs(cfg, dir, "vhdx") },
        sync_cases::durable_vhdx(),
        sync_cases::durable_vhd(),
        sync_cases::nosync_vhdx(),
        sync_cases::depth8(),
        meta_cases::info_vhdx_64t(),
        meta_cases::info_vhd_2040g(),
        meta_cases::info_vhdx_64t_qemu_default(),
        meta_cases::check_vhdx_64t_qemu_default(),
        nbd_cases::nbdcopy_depth8(),
        nbd_cases::nbdinfo_map_64t(),
        compact_case::case(),
        compact_case::case_xfs(),
    ]
    .into_iter()
    .chain(clone_case::CASES)
    .collect()
}

/// What a generated raw input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RawFill {
    /// Random data everywhere: nothing can be skipped.
    All,
    /// Random data in every other 2 MiB, zeros between.
    EveryOther2M,
}

/// Write a raw image of `size` bytes (xorshift data, not compressible) unless it is already
/// there.
fn make_raw(path: &Path, fill: RawFill, size: u64) -> Res<()> {
    use std::io::Write as _;
    if fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let mut f = std::io::BufWriter::new(
        File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 2 * MIB as usize];
    for i in 0..size / (2 * MIB) {
        if fill == RawFill::EveryOther2M && i % 2 == 1 {
            buf.fill(0);
        } else {
            for c in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        f.write_all(&buf)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    f.flush()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A 1 GiB raw input and the two commands that turn it into a new dynamic image of `fmt`
/// (`vhdx` or `vpc`): `vhdkit convert --to vhdx|vhd` against `qemu-img convert -t writeback`
/// (both flush their output).
fn prepare_to_image(cfg: &Config, dir: &Path, fmt: &str, fill: RawFill) -> Res<Prepared> {
    let src = dir.join("in.raw");
    make_raw(&src, fill, disk_bytes(cfg))?;
    let (to, ext, opts) = match fmt {
        "vhdx" => ("vhdx", "vhdx", "subformat=dynamic"),
        _ => ("vhd", "vhd", "subformat=dynamic,force_size=on"),
    };
    let out_vhdkit = dir.join(format!("out.vhdkit.{ext}"));
    let out_qemu = dir.join(format!("out.qemu.{ext}"));
    let mut a: Vec<OsString> = vec![cfg.vhdkit.clone().into()];
    a.extend(["convert", "--no-progress", "--to", to].map(OsString::from));
    a.extend([src.clone().into(), out_vhdkit.clone().into()]);
    let mut q: Vec<OsString> = vec![cfg.qemu_img.clone().into()];
    q.extend(
        [
            "convert",
            "-t",
            "writeback",
            "-f",
            "raw",
            "-O",
            fmt,
            "-o",
            opts,
        ]
        .map(OsString::from),
    );
    q.extend([src.clone().into(), out_qemu.clone().into()]);
    Ok(Prepared {
        contenders: vec![
            Contender {
                tool: Tool::Vhdkit,
                argv: a,
                output: Some(out_vhdkit),
                restore: None,
            },
            Contender {
                tool: Tool::QemuImg,
                argv: q,
                output: Some(out_qemu),
                restore: None,
            },
        ],
        check: Check::SameImage {
            fmt: if fmt == "vhdx" { "vhdx" } else { "vpc" },
            qemu_img: cfg.qemu_img.clone(),
            raw: src,
        },
    })
}

/// Make a 1 GiB image of `fmt` with every other 2 MiB block written (so half the blocks are
/// allocated, in an interleaved pattern that defeats run coalescing), and the two convert
/// commands.
fn prepare_convert(cfg: &Config, dir: &Path, fmt: &str, name: &str, opts: &str) -> Res<Prepared> {
    let src = dir.join(name);
    let _ = fs::remove_file(&src);
    run_quiet(
        Command::new(&cfg.qemu_img)
            .args(["create", "-q", "-f", fmt, "-o", opts])
            .arg(&src)
            .arg(disk_bytes(cfg).to_string()),
    )?;
    let block = 2 * MIB;
    let mut io = Command::new(&cfg.qemu_io);
    io.args(["-f", fmt]);
    for (i, off) in (0..disk_bytes(cfg)).step_by(2 * block as usize).enumerate() {
        // Pattern 0x01..=0xff: never zero, differs between neighbouring blocks.
        let pattern = (i % 255) + 1;
        io.arg("-c")
            .arg(format!("write -P {pattern:#x} {off} {block}"));
    }
    run_quiet(io.arg(&src))?;

    let stem = fmt;
    let out_vhdkit = dir.join(format!("{stem}.vhdkit.raw"));
    let out_qemu = dir.join(format!("{stem}.qemu.raw"));
    let mut a: Vec<OsString> = vec![cfg.vhdkit.clone().into()];
    a.extend(["convert", "--to", "raw"].map(OsString::from));
    a.extend([src.clone().into(), out_vhdkit.clone().into()]);
    let mut q: Vec<OsString> = vec![cfg.qemu_img.clone().into()];
    // `-t writeback` makes qemu-img flush the output at the end, as vhdkit always does (its
    // default for convert, `unsafe`, never flushes): both then pay for durable output.
    q.extend(["convert", "-t", "writeback", "-f", fmt, "-O", "raw"].map(OsString::from));
    q.extend([src.into(), out_qemu.clone().into()]);
    Ok(Prepared {
        contenders: vec![
            Contender {
                tool: Tool::Vhdkit,
                argv: a,
                output: Some(out_vhdkit),
                restore: None,
            },
            Contender {
                tool: Tool::QemuImg,
                argv: q,
                output: Some(out_qemu),
                restore: None,
            },
        ],
        check: Check::SameSparseRaw,
    })
}

/// The `share` tree: `pristine/VM{vm}/base{g}.vhd` (10 groups, a copy in each of 10 VM folders)
/// with 10 differencing children each, made with qemu-img/qemu-io and `vhdkit create`.
fn prepare_share(cfg: &Config, dir: &Path) -> Res<Prepared> {
    let pristine = dir.join("pristine");
    let work = dir.join("work");
    let _ = fs::remove_dir_all(&pristine);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&pristine).map_err(|e| e.to_string())?;
    let (groups, copies, children) = if cfg.smoke {
        (2usize, 2usize, 2usize)
    } else {
        (10usize, 10usize, 10usize)
    };
    for g in 0..groups {
        let base = dir.join(format!("base{g}.vhd"));
        let _ = fs::remove_file(&base);
        run_quiet(
            Command::new(&cfg.qemu_img)
                .args(["create", "-q", "-f", "vpc", "-o", "subformat=dynamic"])
                .arg(&base)
                .arg((64 * MIB).to_string()),
        )?;
        let mut io = Command::new(&cfg.qemu_io);
        io.args(["-f", "vpc"]);
        for i in 0..8u64 {
            // 8 blocks of 2 MiB, spread over the disk, a pattern per group and block.
            let pattern = (g as u64 * 8 + i) % 255 + 1;
            io.arg("-c")
                .arg(format!("write -P {pattern:#x} {} {}", i * 8 * MIB, 2 * MIB));
        }
        run_quiet(io.arg(&base))?;
        for vm in 0..copies {
            let vmdir = pristine.join(format!("VM{vm}"));
            fs::create_dir_all(&vmdir).map_err(|e| e.to_string())?;
            let copy = vmdir.join(format!("base{g}.vhd"));
            fs::copy(&base, &copy).map_err(|e| e.to_string())?;
            for c in 0..children {
                run_quiet(
                    Command::new(&cfg.vhdkit)
                        .args(["create", "--parent"])
                        .arg(&copy)
                        .arg(vmdir.join(format!("g{g}-c{c}.vhd"))),
                )?;
            }
        }
    }
    let into = work.join("Shared");
    let mut a: Vec<OsString> = vec![cfg.vhdkit.clone().into()];
    a.extend(["share".into(), work.clone().into(), "--into".into()]);
    a.extend([into.clone().into(), "--delete-copies".into()]);
    Ok(Prepared {
        contenders: vec![Contender {
            tool: Tool::Vhdkit,
            argv: a,
            output: None,
            restore: Some((pristine, work.clone())),
        }],
        check: Check::ShareDone {
            dir: work,
            into,
            parents: groups,
        },
    })
}

/// A sparse image of `size` and the two commands that validate it: `vhdkit check` and the
/// qemu-img subcommand `qemu_args` (check for VHDX; info for VHD, which qemu cannot check).
fn prepare_check(
    cfg: &Config,
    dir: &Path,
    fmt: &str,
    name: &str,
    opts: &str,
    size: &str,
    qemu_args: &[&str],
) -> Res<Prepared> {
    let src = dir.join(name);
    let _ = fs::remove_file(&src);
    run_quiet(
        Command::new(&cfg.qemu_img)
            .args(["create", "-q", "-f", fmt, "-o", opts])
            .arg(&src)
            .arg(size),
    )?;
    let mut a: Vec<OsString> = vec![cfg.vhdkit.clone().into(), "check".into()];
    a.push(src.clone().into());
    let mut q: Vec<OsString> = vec![cfg.qemu_img.clone().into()];
    q.extend(qemu_args.iter().map(OsString::from));
    q.push(src.into());
    Ok(Prepared {
        contenders: vec![
            Contender {
                tool: Tool::Vhdkit,
                argv: a,
                output: None,
                restore: None,
            },
            Contender {
                tool: Tool::QemuImg,
                argv: q,
                output: None,
                restore: None,
            },
        ],
        check: Check::AllClean,
    })
}

fn run_quiet(cmd: &mut Command) -> Res<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall_s: f64,
    peak_rss_kib: u64,
    /// File-system inputs and outputs (`/usr/bin/time` %I %O, 512-byte blocks; reads served
    /// from the page cache are not counted).
    fs_in_blocks: u64,
    fs_out_blocks: u64,
}

/// Read every file under `dir` once (into nothing).
fn read_tree(dir: &Path) -> Res<()> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let kind = fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if kind.is_dir() {
            read_tree(&path)?;
        } else if kind.is_file() {
            let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            std::io::copy(&mut f, &mut std::io::sink())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Write back and drop the page cache (root only), so that the next command reads from disk.
fn drop_caches() -> Res<()> {
    run_quiet(&mut Command::new("sync"))?;
    fs::write("/proc/sys/vm/drop_caches", "3\n")
        .map_err(|e| format!("--cold: cannot drop the page cache (root only): {e}"))
}

/// Run `argv` under `/usr/bin/time`, returning wall time and peak RSS, or the command's error.
fn time_once(c: &Contender, time_file: &Path, cold: bool) -> Res<Sample> {
    if let Some(out) = &c.output {
        match fs::remove_file(out) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", out.display())),
        }
    }
    if let Some((pristine, work)) = &c.restore {
        let _ = fs::remove_dir_all(work);
        // Bytes copied, never cloned (cp's default on XFS and btrfs: the working copy would
        // not be cached, where the other tool reads a cached file), and runs of zeros written,
        // not left as holes (which cost no disk read: cold runs would read less than `cat`).
        run_quiet(
            Command::new("cp")
                .args(["-a", "--reflink=never", "--sparse=never"])
                .arg(pristine)
                .arg(work),
        )?;
        // Start from the same cache state as the copy left it, written back.
        run_quiet(&mut Command::new("sync"))?;
        if !cold {
            // Warm means read before, as the other tool's input was (by the copy): pages only
            // written so far cost more on their first read (the kernel moves them to its
            // active list then), which measured 0.05 s of a 0.12 s compaction on XFS.
            read_tree(work)?;
        }
    }
    if cold {
        drop_caches()?;
    }
    let start = Instant::now();
    let res = Command::new("/usr/bin/time")
        .args(["-f", "%e %M %I %O", "-o"])
        .arg(time_file)
        .args(&c.argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let wall_s = start.elapsed().as_secs_f64();
    let out = res.map_err(|e| format!("cannot run /usr/bin/time: {e}"))?;
    let timing = fs::read_to_string(time_file).unwrap_or_default();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} failed ({}): {}",
            c.argv
                .first()
                .map_or_else(String::new, |p| p.to_string_lossy().into_owned()),
            out.status,
            stderr.trim()
        ));
    }
    if let Some(o) = c.output.as_deref().filter(|o| !o.exists()) {
        return Err(format!(
            "{} exited successfully but wrote no {} (does it support `{}` yet?)",
            c.tool.name(),
            o.display(),
            c.argv
                .iter()
                .skip(1)
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let peak_rss_kib = parse_time_output(&timing)
        .ok_or_else(|| format!("cannot parse /usr/bin/time output {timing:?}"))?
        .1;
    let (fs_in_blocks, fs_out_blocks) = parse_time_io(&timing).unwrap_or((0, 0));
    Ok(Sample {
        wall_s,
        peak_rss_kib,
        fs_in_blocks,
        fs_out_blocks,
    })
}

/// Parse the last `'%e %M'` line: elapsed seconds and peak RSS in KiB.
fn parse_time_output(s: &str) -> Option<(f64, u64)> {
    let line = s.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut it = line.split_whitespace();
    let e = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    Some((e, m))
}

/// The `%I %O` fields (3rd and 4th) of the last line.
fn parse_time_io(s: &str) -> Option<(u64, u64)> {
    let line = s.lines().rev().find(|l| !l.trim().is_empty())?;
    let mut it = line.split_whitespace().skip(2);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => s.get(n / 2).copied(),
        _ => Some((s.get(n / 2 - 1)? + s.get(n / 2)?) / 2.0),
    }
}

/// Results for one contender.
#[derive(Debug)]
struct ToolResult {
    tool: Tool,
    samples: Vec<Sample>,
    error: Option<String>,
    /// Output file: apparent size and allocated bytes (`st_blocks * 512`).
    output_size: Option<(u64, u64)>,
}

impl ToolResult {
    fn walls(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.wall_s).collect()
    }
    fn min(&self) -> Option<f64> {
        self.walls().into_iter().reduce(f64::min)
    }
    fn median(&self) -> Option<f64> {
        median(&self.walls())
    }
    /// Median file-system input and output, MiB.
    fn fs_io_mib(&self) -> (Option<f64>, Option<f64>) {
        let m = |f: fn(&Sample) -> u64| {
            median(
                &self
                    .samples
                    .iter()
                    .map(|s| f(s) as f64 * 512.0 / MIB as f64)
                    .collect::<Vec<_>>(),
            )
        };
        (m(|s| s.fs_in_blocks), m(|s| s.fs_out_blocks))
    }
    fn peak_rss_mib(&self) -> Option<f64> {
        self.samples
            .iter()
            .map(|s| s.peak_rss_kib)
            .max()
            .map(|k| k as f64 / 1024.0)
    }
}

#[derive(Debug)]
struct CaseResult {
    name: &'static str,
    about: &'static str,
    tools: Vec<ToolResult>,
    /// `Ok(description)` or `Err(what is wrong)`; `None` when a tool failed and nothing could
    /// be compared.
    check: Option<Res<String>>,
}

fn run_case(cfg: &Config, case: &Case, dir: &Path) -> Res<CaseResult> {
    let case_dir = dir.join(case.name);
    fs::create_dir_all(&case_dir)
        .map_err(|e| format!("cannot create {}: {e}", case_dir.display()))?;
    eprintln!("[{}] preparing: {}", case.name, case.about);
    let prep = (case.prepare)(cfg, &case_dir)?;
    let time_file = case_dir.join("time.out");
    let mut tools: Vec<ToolResult> = prep
        .contenders
        .iter()
        .map(|c| ToolResult {
            tool: c.tool,
            samples: vec![],
            error: None,
            output_size: None,
        })
        .collect();
    // Round 0 warms the page cache and is discarded; later rounds alternate the order.
    for round in 0..=cfg.runs {
        let mut order: Vec<usize> = (0..prep.contenders.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (Some(c), Some(r)) = (prep.contenders.get(i), tools.get_mut(i)) else {
                continue;
            };
            if r.error.is_some() {
                continue;
            }
            match time_once(c, &time_file, cfg.cold) {
                Ok(s) if round > 0 => r.samples.push(s),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("[{}] {}: {e}", case.name, c.tool.name());
                    r.error = Some(e);
                }
            }
        }
        eprintln!("[{}] round {round}/{} done", case.name, cfg.runs);
    }
    for (c, r) in prep.contenders.iter().zip(tools.iter_mut()) {
        if let (Some(out), None) = (&c.output, &r.error) {
            if let Ok(m) = fs::metadata(out) {
                r.output_size = Some((m.len(), m.blocks() * 512));
            }
        }
    }
    let check = if tools.iter().any(|t| t.error.is_some()) {
        None
    } else {
        Some(check_outputs(&prep.check, &prep.contenders, &tools))
    };
    Ok(CaseResult {
        name: case.name,
        about: case.about,
        tools,
        check,
    })
}

fn check_outputs(check: &Check, cs: &[Contender], rs: &[ToolResult]) -> Res<String> {
    match check {
        Check::ShareDone { dir, into, parents } => {
            let vhdkit = cs
                .first()
                .and_then(|c| c.argv.first())
                .ok_or_else(|| "no vhdkit".to_string())?;
            let out = Command::new(vhdkit)
                .arg("share")
                .arg(dir)
                .arg("--into")
                .arg(into)
                .args(["--dry-run", "--json"])
                .output()
                .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("share --dry-run --json: {e}"))?;
            if v["nothing_to_do"] != json!(true) {
                return Err("a dry run after share still finds work".into());
            }
            let n = fs::read_dir(into)
                .map_err(|e| format!("{}: {e}", into.display()))?
                .count();
            if n != *parents {
                return Err(format!(
                    "{n} files in {}, expected {parents}",
                    into.display()
                ));
            }
            let _ = rs;
            Ok(format!(
                "nothing left to do; {parents} shared parents, copies deleted"
            ))
        }
        Check::SameSparseRaw => {
            let outs: Vec<&Path> = cs.iter().filter_map(|c| c.output.as_deref()).collect();
            let (first, rest) = outs
                .split_first()
                .ok_or_else(|| "no outputs to compare".to_string())?;
            for other in rest {
                if let Some(off) = first_difference(first, other)? {
                    return Err(format!(
                        "{} and {} differ (first at byte {off})",
                        first.display(),
                        other.display()
                    ));
                }
            }
            let vhdkit = rs
                .iter()
                .find(|r| r.tool == Tool::Vhdkit)
                .and_then(|r| r.output_size)
                .ok_or_else(|| "no vhdkit output".to_string())?;
            let (len, alloc) = vhdkit;
            if alloc >= len {
                return Err(format!(
                    "outputs identical, but vhdkit's raw is not sparse ({alloc} bytes allocated for {len})"
                ));
            }
            Ok(format!(
                "identical; vhdkit raw sparse ({} of {} MiB allocated)",
                alloc / MIB,
                len / MIB
            ))
        }
        Check::SameImage { fmt, qemu_img, raw } => {
            let mut sizes = Vec::new();
            for (c, r) in cs.iter().zip(rs) {
                let Some(out) = c.output.as_deref() else {
                    continue;
                };
                if *fmt == "vhdx" {
                    run_quiet(
                        Command::new(qemu_img)
                            .args(["check", "-q", "-f", fmt])
                            .arg(out),
                    )
                    .map_err(|e| format!("{}: {e}", c.tool.name()))?;
                }
                run_quiet(
                    Command::new(qemu_img)
                        .args(["compare", "-q", "-f", "raw", "-F", fmt])
                        .arg(raw)
                        .arg(out),
                )
                .map_err(|e| format!("{} output differs from the input: {e}", c.tool.name()))?;
                if let Some((len, _)) = r.output_size {
                    sizes.push(format!("{} {} MiB", r.tool.name(), len / MIB));
                }
            }
            Ok(format!(
                "both hold the input{}; file sizes {}",
                if *fmt == "vhdx" {
                    ", qemu-img check clean"
                } else {
                    ""
                },
                sizes.join(", ")
            ))
        }
        Check::AllClean => Ok("every tool exited 0 (image clean)".to_string()),
    }
}

/// Streaming comparison; `Some(offset)` of the first differing byte (or the shorter length).
fn first_difference(a: &Path, b: &Path) -> Res<Option<u64>> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("cannot open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut pos = 0u64;
    loop {
        let na =
            read_full(&mut fa, &mut ba).map_err(|e| format!("reading {}: {e}", a.display()))?;
        let nb =
            read_full(&mut fb, &mut bb).map_err(|e| format!("reading {}: {e}", b.display()))?;
        let (sa, sb) = (ba.get(..na).unwrap_or(&[]), bb.get(..nb).unwrap_or(&[]));
        if sa != sb {
            let i = sa.iter().zip(sb).position(|(x, y)| x != y);
            return Ok(Some(pos + i.unwrap_or(na.min(nb)) as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        pos += na as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(buf.get_mut(n..).unwrap_or(&mut [])) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// vhdkit's median over the other contender's (qemu-img, or vhdkit's own baseline).
fn ratio(r: &CaseResult) -> Option<f64> {
    let m = |f: &dyn Fn(Tool) -> bool| {
        r.tools
            .iter()
            .find(|x| f(x.tool))
            .and_then(ToolResult::median)
    };
    Some(m(&|t| t == Tool::Vhdkit)? / m(&|t| t != Tool::Vhdkit)?)
}

fn markdown(cfg: &Config, results: &[CaseResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vhdkit: `{}`, qemu-img: `{}`, {} timed runs per tool after 1 warm-up, interleaved, {} cache\n",
        cfg.vhdkit.display(),
        cfg.qemu_img.display(),
        cfg.runs,
        if cfg.cold { "cold" } else { "warm" }
    );
    s.push_str(
        "| case | tool | min s | median s | vhdkit/other | peak RSS MiB | fs in/out MiB | output check |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---|\n");
    for r in results {
        let check = match &r.check {
            Some(Ok(d)) => format!("OK: {d}"),
            Some(Err(e)) => format!("FAILED: {e}"),
            None => "not compared (a tool failed)".to_string(),
        };
        for (i, t) in r.tools.iter().enumerate() {
            let (min, med) = match &t.error {
                Some(_) => ("error".to_string(), "error".to_string()),
                None => (fmt_opt(t.min(), 3), fmt_opt(t.median(), 3)),
            };
            let first = i == 0;
            let _ = writeln!(
                s,
                "| {} | {} | {min} | {med} | {} | {} | {} | {} |",
                if first { r.name } else { "" },
                t.tool.name(),
                if first {
                    fmt_opt(ratio(r), 2)
                } else {
                    String::new()
                },
                fmt_opt(t.peak_rss_mib(), 1),
                {
                    let (i, o) = t.fs_io_mib();
                    format!("{}/{}", fmt_opt(i, 1), fmt_opt(o, 1))
                },
                if first { check.as_str() } else { "" },
            );
        }
    }
    let errors: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.tools.iter().filter_map(move |t| {
                t.error
                    .as_ref()
                    .map(|e| format!("- {} / {}: {e}", r.name, t.tool.name()))
            })
        })
        .collect();
    if !errors.is_empty() {
        s.push_str("\nErrors:\n");
        for e in errors {
            s.push_str(&e);
            s.push('\n');
        }
    }
    s
}

fn to_json(cfg: &Config, results: &[CaseResult]) -> Value {
    let cases: Vec<Value> = results
        .iter()
        .map(|r| {
            let tools: Vec<Value> = r
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "tool": t.tool.name(),
                        "wall_s": t.walls(),
                        "min_s": t.min(),
                        "median_s": t.median(),
                        "peak_rss_kib": t.samples.iter().map(|s| s.peak_rss_kib).max(),
                        "fs_in_mib_median": t.fs_io_mib().0,
                        "fs_out_mib_median": t.fs_io_mib().1,
                        "output_bytes": t.output_size.map(|o| o.0),
                        "output_allocated_bytes": t.output_size.map(|o| o.1),
                        "error": t.error,
                    })
                })
                .collect();
            let (ok, detail) = match &r.check {
                Some(Ok(d)) => (Some(true), Some(d.clone())),
                Some(Err(e)) => (Some(false), Some(e.clone())),
                None => (None, None),
            };
            json!({
                "case": r.name,
                "about": r.about,
                "tools": tools,
                "ratio_median_vhdkit_over_qemu_img": ratio(r),
                "check_ok": ok,
                "check": detail,
            })
        })
        .collect();
    json!({
        "vhdkit": cfg.vhdkit.display().to_string(),
        "qemu_img": cfg.qemu_img.display().to_string(),
        "runs": cfg.runs,
        "warmup_runs": 1,
        "cache": if cfg.cold { "cold" } else { "warm" },
        "cases": cases,
    })
}

fn run() -> Res<bool> {
    let Some(cfg) = parse_args(std::env::args_os().skip(1))? else {
        return Ok(true);
    };
    let all = cases();
    if cfg.list {
        for c in &all {
            println!("{:28} {}", c.name, c.about);
        }
        return Ok(true);
    }
    for name in &cfg.cases {
        if !all.iter().any(|c| c.name == name) {
            return Err(format!("unknown case {name:?}; --list shows the cases"));
        }
    }
    if !Path::new("/usr/bin/time").is_file() {
        return Err("/usr/bin/time is needed for peak RSS (Debian: apt-get install time)".into());
    }
    if !cfg.vhdkit.is_file() {
        eprintln!(
            "error: vhdkit binary {} not found (build it: cargo build --release, or pass --vhdkit PATH); \
             its side of each case will fail",
            cfg.vhdkit.display()
        );
    }
    let (dir, temp) = match &cfg.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("vhdkit-bench-{}", std::process::id())),
            true,
        ),
    };
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let mut results = vec![];
    let mut outcome = Ok(());
    for case in all
        .iter()
        .filter(|c| cfg.cases.is_empty() || cfg.cases.iter().any(|n| n == c.name))
    {
        let result = run_case(&cfg, case, &dir);
        if temp {
            // A full run's cases need up to 16 GiB each; keeping them all would need the sum.
            remove_case_dir(&dir.join(case.name));
        }
        match result {
            Ok(r) => results.push(r),
            Err(e) => {
                outcome = Err(format!("case {}: {e}", case.name));
                break;
            }
        }
    }
    if temp {
        let _ = fs::remove_dir_all(&dir);
    }
    if cfg.json {
        let v = to_json(&cfg, &results);
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", markdown(&cfg, &results));
    }
    outcome?;
    Ok(results
        .iter()
        .all(|r| matches!(r.check, Some(Ok(_))) && r.tools.iter().all(|t| t.error.is_none())))
}

/// Removes a finished case's folder, unmounting its loop file first (else the loop device
/// would keep the file's space until the watchdog unmounts it when the bench exits).
fn remove_case_dir(case_dir: &Path) {
    for fs_name in clone_case::LOOP_FILE_SYSTEMS {
        let mnt = case_dir.join(fs_name);
        if mnt.is_dir() {
            let _ = Command::new("umount")
                .arg(&mnt)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let _ = fs::remove_dir_all(case_dir);
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_time_output() {
        assert_eq!(parse_time_output("0.52 10240\n"), Some((0.52, 10240)));
        assert_eq!(
            parse_time_output("Command exited with non-zero status 1\n0.00 2048\n"),
            Some((0.0, 2048))
        );
        assert_eq!(parse_time_output(""), None);
    }

    #[test]
    fn median_odd_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(v.iter().map(OsString::from));
        let c = a(&["--runs", "3", "--json", "--case", "x"])
            .unwrap()
            .unwrap();
        assert_eq!(c.runs, 3);
        assert!(c.json);
        assert_eq!(c.cases, vec!["x".to_string()]);
        assert!(!c.cold);
        assert!(a(&["--cold"]).unwrap().unwrap().cold);
        assert!(a(&["--runs", "0"]).is_err());
        assert!(a(&["--bogus"]).is_err());
        assert!(a(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn case_names_unique() {
        let cs = cases();
        for (i, c) in cs.iter().enumerate() {
            assert!(cs.iter().skip(i + 1).all(|d| d.name != c.name));
        }
    }
}
