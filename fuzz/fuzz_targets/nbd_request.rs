//! The NBD server's parsers (handshake, options, requests) on a hostile client's byte stream.
//!
//! Input: everything a client sends on one connection, as it would arrive (its client flags,
//! options, then requests and write payloads). The export is a small in-memory dynamic VHD with
//! one block written, made once per process, served read-only. Checks: the session never
//! panics and ends `Ok` (the input running out is a client that went away, not an error), and
//! no allocation passes libFuzzer's malloc limit (requests are capped at 32 MiB, options at
//! 64 KiB; run-ci.sh's -malloc_limit_mb=128 fails the run otherwise).
//!
//! Seeds: `fuzz/seed.sh` writes a few sessions (GO then reads; structured replies, meta
//! contexts and block status; LIST, INFO, unknown options and ABORT).
//! Run: `fuzz/run-ci.sh` (flags), or `cargo fuzz run nbd_request`.
#![no_main]

use std::io::{self, Cursor, Read, Write};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhdkit::nbd::Export;
use vhdkit::{create_into, ChainView, CreateParams, Disk, OpenOptions, WritableDisk};

/// The client's bytes in, the server's replies dropped.
struct Client<'a> {
    input: Cursor<&'a [u8]>,
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Client<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn export() -> Option<&'static Export> {
    static EXPORT: OnceLock<Option<Export>> = OnceLock::new();
    EXPORT
        .get_or_init(|| {
            let mut image = Cursor::new(Vec::new());
            create_into(&mut image, "fuzz.vhd", &CreateParams::dynamic(8 << 20)).ok()?;
            // One block written, so block status has data and holes to report.
            let view = ChainView::new(vec![written(image.into_inner())?]);
            Some(Export::read_only(view, "fuzz"))
        })
        .as_ref()
}

/// The image with 64 KiB written at 2 MiB + 512, through the writer over an in-memory file.
fn written(bytes: Vec<u8>) -> Option<Disk> {
    let dir = std::env::temp_dir().join(format!("vhdkit-fuzz-nbd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join("fuzz.vhd");
    std::fs::write(&path, &bytes).ok()?;
    let mut w = WritableDisk::open(&path, &Default::default()).ok()?;
    w.write_at((2 << 20) + 512, &[0x5a; 64 << 10]).ok()?;
    w.close().ok()?;
    let bytes = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    Disk::from_source(Box::new(bytes), &OpenOptions::default()).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(export) = export() else {
        return;
    };
    let r = export.serve(Client {
        input: Cursor::new(data),
    });
    assert!(r.is_ok(), "a session on an in-memory stream failed: {r:?}");
});
