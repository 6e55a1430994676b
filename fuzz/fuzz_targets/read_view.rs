//! Random reads of an opened disk's view.
//!
//! Input layout: byte 0 = number of reads `n` (low 3 bits), then `n` records of 12 bytes
//! (`u64` LE offset, `u32` LE length), then the image (VHD or VHDX: the file, or a sparse
//! description of it, `vhdkitSP`, see `common::Sparse`). Offsets with the top bit clear are taken
//! modulo `virtual_size + 4096` so most land inside the disk and some just past its end; with the
//! top bit set they are used raw. Lengths are taken modulo 256 KiB + 1 (reads that long cross
//! every boundary a block or sector bitmap has; longer ones only cost time), into buffers
//! allocated once per process.
//!
//! Checks, for each read: a range past the end must be an error; a read that succeeds fills
//! the whole buffer (two reads into buffers pre-filled with different bytes agree, so every
//! byte was written) and agrees with the same range read through `Seek + Read`.
//!
//! Seeds: `fuzz/seed.sh` prepends a few records to each image.
//! Run: `fuzz/run-ci.sh` (flags), or `cargo fuzz run read_view`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom};

use libfuzzer_sys::{fuzz_target, Corpus};
use vhdkit::{ChainView, Disk};

const RECORD: usize = 12;
const MAX_READ: u32 = 256 << 10;

thread_local! {
    /// Three read buffers of `MAX_READ` bytes, reused by every input.
    static BUFS: RefCell<[Vec<u8>; 3]> = RefCell::new(std::array::from_fn(|_| vec![0; MAX_READ as usize]));
}

fuzz_target!(|data: &[u8]| -> Corpus {
    let Some((&head, rest)) = data.split_first() else {
        return Corpus::Reject;
    };
    let n = usize::from(head & 7);
    if rest.len() < n * RECORD {
        return Corpus::Reject;
    }
    let (records, image) = rest.split_at(n * RECORD);
    let image = common::Image::from_input(image, true);
    let Ok(disk) = Disk::from_source(Box::new(image), &common::tight_options()) else {
        return Corpus::Reject;
    };
    let mut view = disk.view();
    BUFS.with_borrow_mut(|[a, b, c]| {
        for rec in records.chunks_exact(RECORD) {
            read_twice(&mut view, rec, &mut a[..], &mut b[..], &mut c[..]);
        }
    });
    Corpus::Keep
});

/// One record's read: twice into differently pre-filled buffers, then through `Seek + Read`.
fn read_twice(view: &mut ChainView, rec: &[u8], a: &mut [u8], b: &mut [u8], c: &mut [u8]) {
    let size = view.virtual_size();
    let mut off = [0u8; 8];
    off.copy_from_slice(&rec[..8]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&rec[8..]);
    let raw = u64::from_le_bytes(off);
    let offset = if raw >> 63 == 1 {
        raw & !(1 << 63)
    } else {
        raw % size.saturating_add(4096)
    };
    let len = (u32::from_le_bytes(len) % (MAX_READ + 1)) as usize;

    let a = &mut a[..len];
    a.fill(0xaa);
    let ra = view.read_exact_at(a, offset);
    let past_end = offset.checked_add(len as u64).is_none_or(|e| e > size);
    if past_end {
        assert!(
            ra.is_err(),
            "read of {len} at {offset:#x} past the end of {size} bytes succeeded"
        );
        return;
    }
    let b = &mut b[..len];
    b.fill(0x55);
    let rb = view.read_exact_at(b, offset);
    match (ra, rb) {
        (Ok(()), Ok(())) => {
            assert!(a == b, "two reads of {len} at {offset:#x} differ");
            // Same range through the Read + Seek interface.
            let c = &mut c[..len];
            c.fill(0x33);
            if view.seek(SeekFrom::Start(offset)).is_ok() && view.read_exact(c).is_ok() {
                assert!(a == c, "read_exact_at and Read differ at {offset:#x}+{len}");
            }
        }
        (Err(_), Err(_)) => {}
        (ra, rb) => panic!(
            "reads of {len} at {offset:#x} disagree on success: {:?} vs {:?}",
            ra.is_ok(),
            rb.is_ok()
        ),
    }
}
