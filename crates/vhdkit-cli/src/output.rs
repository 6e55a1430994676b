//! Rendering: human text and JSON, errors on one line.

use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use vhdkit::ErrorKind;

use crate::cli::Command;

/// The global `--quiet` / `--no-progress` flags, set once by `main`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Verbosity {
    /// `--quiet`: no text on stdout, no progress bar.
    pub quiet: bool,
    /// `--no-progress`.
    pub no_progress: bool,
}

static VERBOSITY: OnceLock<Verbosity> = OnceLock::new();

/// Record the global flags (the first call wins).
pub fn set_verbosity(v: Verbosity) {
    let _ = VERBOSITY.set(v);
}

fn verbosity() -> Verbosity {
    VERBOSITY.get().copied().unwrap_or_default()
}

/// True when text reports may be printed on stdout (not `--quiet`).
pub fn text_wanted() -> bool {
    !verbosity().quiet
}

/// True when a progress bar may be shown: stderr is a terminal, the output is not JSON, and
/// neither `--quiet` nor `--no-progress` was given.
pub fn progress_shown(json: bool) -> bool {
    let v = verbosity();
    !json && !v.quiet && !v.no_progress && std::io::stderr().is_terminal()
}

/// A command failure: a library error, or a problem of the command line itself.
#[derive(Debug)]
pub enum CliError {
    /// From the library.
    Lib(vhdkit::Error),
    /// Writing the output failed.
    Output(std::io::Error),
}

impl CliError {
    /// Exit status: a refusal (to overwrite, of a change whose safety check failed, of a
    /// locked file) or a bad argument is a refusal (1); everything else, including a damaged
    /// disk and a vhdkit bug, is an error (2).
    pub fn exit_code(&self) -> u8 {
        let CliError::Lib(e) = self else {
            return 2;
        };
        match e.kind() {
            ErrorKind::InvalidArgument { .. }
            | ErrorKind::AlreadyExists { .. }
            | ErrorKind::ParentMismatch { .. }
            | ErrorKind::Locked { .. }
            | ErrorKind::Refused { .. } => 1,
            _ => 2,
        }
    }

    /// The error's kind, snake_case (`kind` of the `--json` error object).
    pub fn kind_name(&self) -> &'static str {
        match self {
            CliError::Lib(e) => e.kind().name(),
            CliError::Output(_) => "io",
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Lib(e) => write!(
                f,
                "{}{}",
                cli_words(&e.to_string()),
                hint(e).unwrap_or_default()
            ),
            CliError::Output(e) => write!(f, "writing output: {e}"),
        }
    }
}

/// What the command line asked for, as far as the hints of [`hint`] need it.
#[derive(Debug, Clone, Copy, Default)]
struct HintContext {
    /// The subcommand (`create`, `convert`...).
    command: &'static str,
    /// `create --parent` was given.
    with_parent: bool,
}

static HINTS: OnceLock<HintContext> = OnceLock::new();

/// Record the command being run, for the hints added to its errors (the first call wins).
pub fn set_command(c: &Command) {
    let (command, with_parent) = match c {
        Command::Create(a) => ("create", a.parent.is_some()),
        Command::Convert(_) => ("convert", false),
        Command::Reparent(_) => ("reparent", false),
        _ => ("", false),
    };
    let _ = HINTS.set(HintContext {
        command,
        with_parent,
    });
}

/// The library names no flags: the flag that would get past an error is added here, for the
/// kinds of error a flag of the running command answers.
fn hint(e: &vhdkit::Error) -> Option<&'static str> {
    let ctx = HINTS.get().copied().unwrap_or_default();
    let h = match (ctx.command, e.kind()) {
        ("convert", ErrorKind::AlreadyExists { .. }) => " (use --force to replace it)",
        ("reparent", ErrorKind::ParentMismatch { .. }) => {
            "; if it really holds the same data, use --verify-content OLDPARENT or \
             --ignore-id-mismatch"
        }
        (_, ErrorKind::InvalidArgument { option: Some(o) }) => match o {
            "format" => "; give --format",
            "fixed" => " (give either --fixed or --parent)",
            "size" if ctx.with_parent => " (leave --size out)",
            "size" => " (give --size)",
            "block_size" => " (--block-size)",
            "into" => " (--into)",
            _ => return None,
        },
        _ => return None,
    };
    Some(h)
}

impl From<vhdkit::Error> for CliError {
    fn from(e: vhdkit::Error) -> Self {
        CliError::Lib(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Output(e)
    }
}

/// Print an error: one line on stderr; with `--json`, also a JSON object on stdout so scripts
/// reading stdout always get JSON.
pub fn print_error(e: &CliError, json: bool) {
    if matches!(e, CliError::Output(io) if io.kind() == std::io::ErrorKind::BrokenPipe) {
        return;
    }
    let line = e.to_string().replace('\n', " ");
    eprintln!("vhdkit: error: {line}");
    if json {
        let mut v = serde_json::json!({
            "error": line,
            "exit_code": e.exit_code(),
            "kind": e.kind_name(),
        });
        if let Some(code) = match e {
            CliError::Lib(e) => e.code(),
            CliError::Output(_) => None,
        } {
            v["code"] = code.into();
        }
        println!("{v}");
    }
}

/// Print a usage error: one line on stderr; with `--json`, the same JSON object as other errors
/// (of kind `invalid_argument`).
pub fn print_usage_error(line: &str, exit_code: u8, json: bool) {
    eprintln!("vhdkit: error: {line}");
    if json {
        let v = serde_json::json!({
            "error": line,
            "exit_code": exit_code,
            "kind": "invalid_argument",
        });
        println!("{v}");
    }
}

/// The first error writing stdout (see the `println!` of `main.rs`).
static STDOUT_FAILED: std::sync::OnceLock<std::io::Error> = std::sync::OnceLock::new();

/// Write `args` (and a newline) to stdout; after a failed write, nothing more is written.
pub fn out(args: std::fmt::Arguments<'_>, newline: bool) {
    if STDOUT_FAILED.get().is_some() {
        return;
    }
    let text = cli_words(&args.to_string());
    let mut o = std::io::stdout().lock();
    let r =
        o.write_all(text.as_bytes())
            .and_then(|()| if newline { o.write_all(b"\n") } else { Ok(()) });
    if let Err(e) = r {
        let _ = STDOUT_FAILED.set(e);
    }
}

/// The error to report when stdout could not be written (flushed here, so a failure of the
/// last buffered bytes counts too).
pub fn stdout_failure() -> Option<CliError> {
    if STDOUT_FAILED.get().is_none() {
        if let Err(e) = std::io::stdout().lock().flush() {
            let _ = STDOUT_FAILED.set(e);
        }
    }
    STDOUT_FAILED
        .get()
        .map(|e| CliError::Output(std::io::Error::new(e.kind(), e.to_string())))
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(v: &T) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    let r = serde_json::to_string_pretty(v)
        .map_err(std::io::Error::from)
        .and_then(|s| writeln!(o, "{}", cli_words_json(&s)));
    if let Err(e) = r {
        let _ = STDOUT_FAILED.set(e);
    }
    Ok(())
}

/// The library names no flags: it speaks of its own options (`delete_copies`, the confining
/// folders, a path map). Where its words stand for a flag of this command line, the flag is
/// named instead, so the CLI reads as it always has. Each pair: the library's words, the CLI's.
/// No CLI text contains the library words it replaces, so applying this twice changes nothing.
const FLAG_WORDS: &[(&str, &str)] = &[
    (
        "outside the confining folders",
        "outside the --confine folders",
    ),
    (
        "map it with a path map 'PREFIX=LOCAL_FOLDER' (e.g. 'C:\\Lab=/srv/lab')",
        "map it with --map 'PREFIX=LOCAL_FOLDER' (e.g. --map 'C:\\Lab=/srv/lab')",
    ),
    ("delete_copies is off", "no --delete-copies"),
    (
        "the content check against the old parent (verify_content) also found",
        "--verify-content also found",
    ),
    (
        "give a Windows path (windows_path) or a path map PREFIX=DIR to record",
        "give --windows-path or --map PREFIX=DIR to record",
    ),
    (
        "(no Windows path given, no path map containing it)",
        "(no --windows-path, no --map containing it)",
    ),
    ("the given Windows path \"", "--windows-path \""),
    ("given as the Windows path", "given with --windows-path"),
    ("from the path map '", "from --map '"),
    (
        "(a given Windows path is a drive or UNC path",
        "(--windows-path gives a drive or UNC path",
    ),
    (
        "absolute only: the absolute path is written",
        "--absolute-only: the absolute path is written",
    ),
    (
        "and only the absolute path is wanted",
        "and --absolute-only was given",
    ),
    (
        "relative only: the path relative",
        "--relative-only: the path relative",
    ),
];

/// `text` with the library's words for this command line's flags replaced (see `FLAG_WORDS`).
pub fn cli_words(text: &str) -> String {
    replace_all(text, FLAG_WORDS.iter().map(|&(l, c)| (l.into(), c.into())))
}

/// The same for JSON text: the pairs as they appear inside JSON strings.
fn cli_words_json(json: &str) -> String {
    let esc = |s: &str| {
        let q = serde_json::Value::from(s).to_string();
        q.get(1..q.len().saturating_sub(1))
            .unwrap_or_default()
            .to_string()
    };
    replace_all(json, FLAG_WORDS.iter().map(|&(l, c)| (esc(l), esc(c))))
}

fn replace_all(text: &str, pairs: impl Iterator<Item = (String, String)>) -> String {
    let mut out = text.to_string();
    for (lib, cli) in pairs {
        if out.contains(&lib) {
            out = out.replace(&lib, &cli);
        }
    }
    out
}

/// Human size: exact bytes plus a binary-unit rendering.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    let text = if v.fract() == 0.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.2} {unit}")
    };
    format!("{text} ({bytes} bytes)")
}

/// Render a JSON value as indented `key: value` lines (for the format-specific part of `info`).
pub fn render_value(out: &mut String, key: &str, v: &serde_json::Value, indent: usize) {
    use serde_json::Value;
    let pad = "  ".repeat(indent);
    match v {
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str(&format!("{pad}{key}: (none)\n"));
                return;
            }
            out.push_str(&format!("{pad}{key}:\n"));
            for (k, v) in map {
                render_value(out, k, v, indent + 1);
            }
        }
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str(&format!("{pad}{key}: (none)\n"));
                return;
            }
            if items.iter().all(|i| !i.is_object() && !i.is_array()) {
                let parts: Vec<String> = items.iter().map(scalar).collect();
                out.push_str(&format!("{pad}{key}: {}\n", parts.join(", ")));
                return;
            }
            out.push_str(&format!("{pad}{key}:\n"));
            for (i, item) in items.iter().enumerate() {
                render_value(out, &format!("[{i}]"), item, indent + 1);
            }
        }
        Value::Number(n) if is_hex_key(key) && n.is_u64() => {
            out.push_str(&format!("{pad}{key}: {:#x}\n", n.as_u64().unwrap_or(0)));
        }
        other => out.push_str(&format!("{pad}{key}: {}\n", scalar(other))),
    }
}

/// Checksums and offsets read better in hex, as the specs and hex dumps show them.
fn is_hex_key(key: &str) -> bool {
    matches!(key, "stored" | "computed" | "checksum" | "crc")
        || key.ends_with("_offset")
        || key == "offset"
        || key.ends_with("_hex")
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(4 << 20), "4 MiB (4194304 bytes)");
        assert_eq!(size(1536), "1.50 KiB (1536 bytes)");
    }

    #[test]
    fn library_words_become_flags_once() {
        use vhdkit::AttemptOutcome;
        let confined = AttemptOutcome::Confined.to_string();
        assert_eq!(
            cli_words(&confined),
            "refused by confinement: outside the --confine folders"
        );
        let unmapped = AttemptOutcome::UnmappedWindowsPath.to_string();
        let want = "skipped: an absolute Windows path has no local meaning here; map it with \
                    --map 'PREFIX=LOCAL_FOLDER' (e.g. --map 'C:\\Lab=/srv/lab')";
        assert_eq!(cli_words(&unmapped), want);
        assert_eq!(cli_words(&cli_words(&unmapped)), want);
        let json = serde_json::json!({ "outcome": unmapped }).to_string();
        let cli_json = serde_json::json!({ "outcome": want }).to_string();
        assert_eq!(cli_words_json(&json), cli_json);
        for (lib, cli) in FLAG_WORDS {
            assert!(!lib.contains("--"), "{lib}");
            assert!(!cli.contains(lib), "{cli}");
        }
    }
}
