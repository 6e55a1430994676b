//! Check every disk under the given files or folders (read-only) and print the findings as one
//! JSON array on stdout. Exit 1 when any error or warning was found.
//!
//! Writes go through `write_all` and stop quietly on a closed pipe, so
//! `check_folder_json DIR | head` ends cleanly instead of panicking like `println!` would.
//!
//! ```sh
//! cargo run -p vhdkit --features serde --example check_folder_json -- testdata/lab
//! ```

use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use vhdkit::check::{check_tree, CheckOptions, FileReport};

fn main() -> ExitCode {
    let paths: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if paths.is_empty() {
        eprintln!("usage: check_folder_json PATH...");
        return ExitCode::from(2);
    }
    match run(&paths) {
        Ok(reports) => {
            let problems = reports.iter().any(FileReport::has_problems);
            match print_json(&reports) {
                Ok(()) => {}
                // The reader went away (`| head`): not an error of ours.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
                Err(e) => {
                    eprintln!("check_folder_json: writing stdout: {e}");
                    return ExitCode::from(2);
                }
            }
            ExitCode::from(u8::from(problems))
        }
        Err(e) => {
            eprintln!("check_folder_json: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(paths: &[PathBuf]) -> Result<Vec<FileReport>, vhdkit::Error> {
    // Folders are searched recursively for files with a VHD or VHDX signature; a path in them
    // that cannot be inspected comes back as a report of its own.
    // No progress shown (`()`); a `vhdkit::Progress` would see one "check" phase, one unit per
    // disk, and could stop it between disks.
    let opts = CheckOptions::default().chain(true);
    let (mut reports, uninspected) = check_tree(paths, &opts, ())?;
    reports.extend(uninspected);
    Ok(reports)
}

fn print_json(reports: &[FileReport]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, reports)?;
    out.write_all(b"\n")?;
    out.flush()
}
