//! Command-line definition (clap derive). Names and flags here are a contract with users'
//! scripts: add, never rename.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Inspect, check and repoint VHD and VHDX virtual disks and their differencing chains.
///
/// Exit status: 0 ok, 1 findings, refusal or bad arguments (a broken chain, a refused change,
/// an unknown flag), 2 error.
#[derive(Debug, Parser)]
#[command(name = "vhdkit", version, about, long_about = None)]
pub struct Cli {
    /// Print nothing on stdout but JSON asked for with --json, and no progress bar: errors
    /// (stderr) and the exit status tell the outcome.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Never show a progress bar (it is shown only when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show everything about one disk file (format, type, sizes, ids, parent, locators).
    Info(InfoArgs),
    /// Follow a differencing chain from a child to its base and verify every link.
    Chain(ChainArgs),
    /// Copy the virtual contents of a disk, through its chain, to another file.
    Convert(ConvertArgs),
    /// Repoint a differencing disk at another copy of its parent (like Set-VHD -ParentPath).
    Reparent(ReparentArgs),
    /// Make a differencing disk standalone in place: copy in what it reads from its parents,
    /// then remove its parent link (the parents are never touched).
    Flatten(FlattenArgs),
    /// Merge a differencing disk into its parent (or an ancestor with --into), like Hyper-V's
    /// Merge-VHD: its data is written into the ancestor, then the merged files are deleted.
    Merge(MergeArgs),
    /// Give back the space of all-zero blocks (with --against-parent, also of blocks equal to
    /// the parent's) and shrink the file, like Optimize-VHD, crash-safely.
    Compact(CompactArgs),
    /// Change the virtual size of a disk in place, like Hyper-V's Resize-VHD (grow, or shrink
    /// when nothing allocated lies past the new end); refused when the disk has children.
    Resize(ResizeArgs),
    /// Check every structural rule of disks (files or folders) and, with --chain, their chains.
    /// Read-only. Exit 0 clean (info only), 1 errors or warnings found, 2 could not run.
    Check(CheckArgs),
    /// Repair what is certain and loses nothing: finish an interrupted vhdkit change, restore a
    /// damaged VHD footer or VHDX header/region table from its good copy, replay a dirty VHDX
    /// log. Anything else is explained and left alone (exit 1).
    Repair(RepairArgs),
    /// Create a new disk: dynamic (default), fixed, or differencing over a parent.
    Create(CreateArgs),
    /// Keep one shared copy of every parent copied into many VM folders, and repoint every
    /// child at it (no symlinks).
    Share(ShareArgs),
    /// Repoint every child under DIR whose parent no longer resolves (after a move) at its
    /// parent found by identity.
    Relink(RelinkArgs),
    /// Show which file of the chain holds each run of the virtual disk (data, zeros or hole),
    /// like `qemu-img map`.
    Map(MapArgs),
    /// Serve the virtual disk of a chain over NBD (read-only unless --writable), on a Unix
    /// socket by default.
    Serve(ServeArgs),
    /// Print the shell completion script for bash, zsh, fish, powershell or elvish.
    Completions(crate::cmd::completions::CompletionsArgs),
    /// Print the manual page, or write one page per command into a folder with --out.
    Man(crate::cmd::man::ManArgs),
}

/// `vhdkit share`.
#[derive(Debug, Args)]
pub struct ShareArgs {
    /// The folder that keeps the one shared copy of each parent (created when missing).
    #[arg(long, value_name = "SHARED")]
    pub into: PathBuf,
    /// Print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete the other copies once every child of their group is repointed and verified
    /// (nothing is deleted while any path in the tree could not be inspected).
    #[arg(long)]
    pub delete_copies: bool,
    /// Open parents only inside this folder (links resolved); a locator leading anywhere else
    /// is refused by confinement. Repeatable. For untrusted images.
    #[arg(long = "confine", value_name = "DIR")]
    pub confine: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The tree to scan (recursively).
    pub dir: PathBuf,
}

/// `vhdkit relink`.
#[derive(Debug, Args)]
pub struct RelinkArgs {
    /// Also look for parents (by identity, recursively) in this folder. Repeatable.
    #[arg(long = "search", value_name = "FOLDER")]
    pub search: Vec<PathBuf>,
    /// Open parents only inside this folder (links resolved); a locator leading anywhere else
    /// is refused by confinement. Repeatable. For untrusted images.
    #[arg(long = "confine", value_name = "DIR")]
    pub confine: Vec<PathBuf>,
    /// Print the plan; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The tree to scan (recursively).
    pub dir: PathBuf,
}

/// `vhdkit reparent`.
#[derive(Debug, Args)]
pub struct ReparentArgs {
    /// The new parent file.
    #[arg(long = "parent", value_name = "NEWPARENT")]
    pub parent: PathBuf,
    /// Write only the relative locator (VHD W2ru, VHDX relative_path); clear the absolute one.
    #[arg(long, conflicts_with = "absolute_only")]
    pub relative_only: bool,
    /// Write only the absolute locator (VHD W2ku, VHDX absolute_win32_path); clear the relative one.
    #[arg(long)]
    pub absolute_only: bool,
    /// Print the plan (every field old -> new, the bytes to write); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Accept a new parent whose identity differs from the child's record, and rewrite the
    /// record (like Hyper-V's -IgnoreIdMismatch). Dangerous unless the data is the same.
    #[arg(long)]
    pub ignore_id_mismatch: bool,
    /// Accept a mismatching new parent only if its virtual contents equal OLDPARENT's.
    #[arg(long, value_name = "OLDPARENT")]
    pub verify_content: Option<PathBuf>,
    /// The absolute Windows path to record for the new parent (e.g. 'C:\Lab\Ref\base.vhd').
    #[arg(long, value_name = "WINPATH")]
    pub windows_path: Option<String>,
    /// Parent lookup options (also used in reverse to form the absolute Windows path).
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The differencing disk to repoint.
    pub child: PathBuf,
}

/// `vhdkit flatten`.
#[derive(Debug, Args)]
pub struct FlattenArgs {
    /// Print the plan (blocks and bytes to copy, fields to change); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options.
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The differencing disk to flatten.
    pub child: PathBuf,
}

/// `vhdkit compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Also drop blocks of a differencing disk equal to what its parent chain reads.
    #[arg(long)]
    pub against_parent: bool,
    /// Print the plan (blocks dropped and moved, file size before and after); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options.
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The dynamic or differencing disk to compact.
    pub disk: PathBuf,
}

/// `vhdkit merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The disk to merge into (a member of CHILD's chain); default: CHILD's parent.
    #[arg(long, value_name = "ANCESTOR")]
    pub into: Option<PathBuf>,
    /// Print the plan (files changed and deleted, blocks and bytes to copy); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options (the search folders are also scanned for siblings).
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The differencing disk to merge.
    pub child: PathBuf,
}

/// `vhdkit resize`.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// The new virtual size (bytes, or with a suffix: 64M, 10G, 1T).
    #[arg(long, value_name = "SIZE")]
    pub size: String,
    /// Round the size up to a multiple of this (e.g. 1M, the whole MiB Azure wants).
    #[arg(long, value_name = "N")]
    pub round_up: Option<String>,
    /// Print the plan (old and new size, what moves, fields changed); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options (the search folders are also scanned for children).
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The disk to resize.
    pub disk: PathBuf,
}

/// `vhdkit repair`.
#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Report what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Open parents only inside this folder (links resolved); a locator leading anywhere else
    /// is refused by confinement. Repeatable. For untrusted images.
    #[arg(long = "confine", value_name = "DIR")]
    pub confine: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The disk file.
    pub file: PathBuf,
}

/// `vhdkit check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also follow each disk's differencing chain and check every link.
    #[arg(long)]
    pub chain: bool,
    /// Parent lookup options (with --chain).
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// Disk files, or folders searched recursively for files with a VHD/VHDX signature.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `vhdkit info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The disk file.
    pub file: PathBuf,
}

/// How to find parents; shared by every command that follows a chain.
#[derive(Debug, Args, Clone, Default)]
pub struct ResolveArgs {
    /// Also look for parents (by file name) in this folder. Repeatable.
    #[arg(long = "search", value_name = "DIR")]
    pub search: Vec<PathBuf>,
    /// Map a Windows path prefix to a local folder, e.g. 'C:\Lab=/srv/lab' or
    /// '\\?\Volume{GUID}\=/mnt/x'. Repeatable.
    #[arg(long = "map", value_name = "PREFIX=DIR")]
    pub map: Vec<String>,
    /// Open parents only inside this folder (links resolved); a locator leading anywhere else
    /// is refused by confinement. Repeatable. For untrusted images.
    #[arg(long = "confine", value_name = "DIR")]
    pub confine: Vec<PathBuf>,
}

/// `vhdkit chain`.
#[derive(Debug, Args)]
pub struct ChainArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options.
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The child disk (any disk works; a non-differencing disk is a chain of one).
    pub file: PathBuf,
}

/// Output container formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A raw image, written sparsely.
    Raw,
    /// A VHD (dynamic unless --fixed).
    Vhd,
    /// A VHDX (dynamic unless --fixed).
    Vhdx,
}

/// Input formats that can be forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Treat the source as a raw image even if it looks like a VHD or VHDX.
    Raw,
}

/// Disk formats for `create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskFormatArg {
    /// VHD (version 1).
    Vhd,
    /// VHDX.
    Vhdx,
}

/// `vhdkit create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Virtual size: bytes, or a number with K, M, G, T (binary multiples; `B` or `iB` may
    /// follow): 64MiB, 10G, 1.5GiB. Taken from the parent when --parent is given.
    #[arg(long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Allocate the whole disk up front (a fixed disk).
    #[arg(long, conflicts_with = "parent")]
    pub fixed: bool,
    /// Create a differencing disk over this parent.
    #[arg(long, value_name = "PARENT")]
    pub parent: Option<PathBuf>,
    /// Block size (same units as --size); default VHD 2 MiB, VHDX 32 MiB dynamic and 2 MiB
    /// fixed or differencing (Hyper-V's choices).
    #[arg(long, value_name = "N")]
    pub block_size: Option<String>,
    /// VHDX logical sector size: 512 (default, "512e" with 4096-byte physical sectors) or
    /// 4096. A differencing disk takes its parent's. VHD sectors are always 512.
    #[arg(long, value_name = "BYTES", value_parser = ["512", "4096"])]
    pub logical_sector_size: Option<String>,
    /// Format; by default from OUT's extension (.vhd/.avhd: vhd, .vhdx/.avhdx: vhdx).
    #[arg(long, value_enum)]
    pub format: Option<DiskFormatArg>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options (for the parent's own chain).
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The new disk file (must not exist).
    pub out: PathBuf,
}

/// `vhdkit convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Output format.
    #[arg(long = "to", value_enum)]
    pub to: OutputFormat,
    /// Force the input format. Without it, a file that is neither VHD nor VHDX is read as raw
    /// (with a note) only when its name does not claim .vhd/.vhdx/.avhd/.avhdx.
    #[arg(long = "from", value_enum)]
    pub from: Option<InputFormat>,
    /// VHD/VHDX output: a fixed disk instead of a dynamic one.
    #[arg(long)]
    pub fixed: bool,
    /// VHD/VHDX output: block size (bytes, or with K/M/G units); default VHD 2 MiB, VHDX
    /// 32 MiB (dynamic) or 2 MiB (fixed).
    #[arg(long, value_name = "N")]
    pub block_size: Option<String>,
    /// Round the virtual size up to a multiple of N (e.g. 1M: the whole MiB Azure wants of a
    /// fixed VHD); the added range reads as zeros and stays sparse.
    #[arg(long, value_name = "N")]
    pub round_up: Option<String>,
    /// Replace DST if it exists.
    #[arg(long)]
    pub force: bool,
    /// Do not sync the output (no fsync), for scratch copies: faster, but a crash can leave
    /// DST incomplete; the rename into place still happens only at the end.
    #[arg(long)]
    pub no_sync: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options.
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// Source disk (VHD or VHDX, read through its chain), or a raw image with a neutral name.
    pub src: PathBuf,
    /// Destination file.
    pub dst: PathBuf,
}

/// `vhdkit map`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Print JSON (the shape of `qemu-img map --output=json`, plus `file`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options.
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The disk (its chain is followed).
    pub file: PathBuf,
}

/// `vhdkit serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen on this Unix socket (default: a new socket in a temporary folder, its path
    /// printed).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// Listen on TCP instead: ADDR:PORT, or PORT alone for the loopback address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Accept writes (into DISK only, never its parents); refused when DISK is the parent of a
    /// disk found in its folder or a --search folder.
    #[arg(long)]
    pub writable: bool,
    /// The export name clients ask for (any name is accepted; this one is listed).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub export_name: String,
    /// Print JSON (the socket or address served) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Parent lookup options (the --search folders are also scanned for children of DISK with
    /// --writable).
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// The disk to serve (its chain is followed).
    pub file: PathBuf,
}
