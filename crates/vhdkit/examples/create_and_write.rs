//! Create a dynamic VHDX, write through it as a `Write + Seek` disk, then open it again
//! read-only and read the bytes back.
//!
//! ```sh
//! cargo run -p vhdkit --example create_and_write              # in a temporary folder
//! cargo run -p vhdkit --example create_and_write -- new.vhdx  # never overwrites a file
//! ```

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vhdkit::{create, ChainOptions, ChainView, CreateParams, Disk, DiskFormat, WritableDisk};

const SIZE: u64 = 64 << 20;
const OFFSET: u64 = 40 << 20;

fn main() -> ExitCode {
    let result = match std::env::args_os().nth(1) {
        Some(out) => run(&PathBuf::from(out)),
        None => tempfile::tempdir()
            .map_err(Into::into)
            .and_then(|dir| run(&dir.path().join("new.vhdx"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("create_and_write: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    // Refuses an existing file: the disk is built under a temporary name and given its name
    // only if that name is still free.
    let created = create(out, &CreateParams::dynamic(SIZE).format(DiskFormat::Vhdx))?;
    println!("created {} (id {})", out.display(), created.id);

    let message = b"hello from vhdkit";
    let mut disk = WritableDisk::open(out, &ChainOptions::default())?;
    disk.seek(SeekFrom::Start(OFFSET))?;
    disk.write_all(message)?;
    // Commits the new block's BAT entry through the VHDX log; `close` does the same and
    // reports errors that a drop could not.
    disk.close()?;

    // A `ChainView` of one layer is the `Read + Seek` view of a disk without parents.
    let mut view = ChainView::new(vec![Disk::open(out)?]);
    let mut back = vec![0u8; message.len()];
    view.seek(SeekFrom::Start(OFFSET))?;
    view.read_exact(&mut back)?;
    if back != message {
        return Err("read back different bytes".into());
    }
    let file_len = std::fs::metadata(out)?.len();
    println!(
        "wrote and read back {} bytes at {OFFSET}; the file holds {file_len} bytes for {SIZE} virtual",
        back.len()
    );
    Ok(())
}
