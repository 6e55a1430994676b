//! Sequential write benchmark: create a new dynamic VHD of SIZE bytes and fill it through
//! `WritableDisk` with non-zero data in CHUNK-byte writes, then flush.
//!
//! `cargo run --release --example seqwrite -- OUT.vhd 1GiB 1MiB` (used by `bench/write-vhd.sh`).

use std::io::Write;
use std::time::Instant;

use vhdkit::{ChainOptions, CreateParams, WritableDisk};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(out), Some(size), chunk) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: seqwrite OUT.vhd SIZE [CHUNK]".into());
    };
    let size = vhdkit::create::parse_size(size)?;
    let chunk = vhdkit::create::parse_size(chunk.map_or("1MiB", String::as_str))?;
    let chunk = usize::try_from(chunk)?;
    let start = Instant::now();
    vhdkit::create(std::path::Path::new(out), &CreateParams::dynamic(size))?;
    let mut w = WritableDisk::open(out, &ChainOptions::default())?;
    // Non-zero, not trivially compressible data: a counter pattern per chunk.
    let mut buf = vec![0u8; chunk];
    let mut done = 0u64;
    let mut n = 0u64;
    while done < size {
        let len = usize::try_from((size - done).min(chunk as u64))?;
        for (i, b) in buf[..len].iter_mut().enumerate() {
            *b = (i as u64 ^ n).wrapping_mul(0x9E37_79B9) as u8 | 1;
        }
        w.write_all(&buf[..len])?;
        done += len as u64;
        n += 1;
    }
    w.close()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "seqwrite {out}: {size} bytes in {chunk}-byte writes: {secs:.3} s ({:.0} MiB/s)",
        size as f64 / secs / (1 << 20) as f64
    );
    Ok(())
}
