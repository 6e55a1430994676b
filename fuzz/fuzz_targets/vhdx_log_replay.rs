//! Structure-aware fuzzing of VHDX log replay.
//!
//! A valid small dynamic VHDX (built once by the testkit's independent writer) gets a non-zero
//! LogGuid in both headers; the input becomes the start of its 1 MiB log region (the rest of the
//! region keeps the template's bytes, so seeds can leave off a clean ring's trailing zeros).
//! Before opening, every 4 KiB slot of the input that starts with `loge` gets the header's
//! LogGuid and a correct CRC-32C over the length it claims (wrapping round the ring), so the
//! fuzzer spends its time on descriptors, data sectors, sequence numbers, tails and targets
//! rather than on guessing a GUID and a checksum. Opening replays the log in memory; then
//! samples of every block of the 4 MiB view are read twice and must agree.
//!
//! The template is never copied: the file is a read-only overlay of the input's slots on it,
//! kept in one buffer reused from run to run.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::io;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use vhdkit::{Disk, Source};
use vhdkit_testkit::vhdx::{Kind, VhdxBuilder};

const LOG_GUID: u128 = 0x10c0_ffee_0000_4000_8000_0000_0000_0001;

struct Template {
    bytes: Vec<u8>,
    log_offset: usize,
    log_length: usize,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let mut b = VhdxBuilder::new(Kind::Dynamic, 4 << 20, 1 << 20, 512);
        b.write(0, &[0x5a; 8192]);
        b.write(3 << 20, &[0xa5; 4096]);
        let mut built = b.build();
        built.set_log_guid(uuid::Uuid::from_u128(LOG_GUID));
        Template {
            log_offset: built.layout.log_offset as usize,
            log_length: built.layout.log_length as usize,
            bytes: built.bytes,
        }
    })
}

/// The input's slots of the log ring, fixed up: one buffer for every run, since a fresh one of
/// up to 256 KiB per input is an mmap, page faults and an munmap under ASan.
static RING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The template with `RING` laid over its log region from the region's start.
#[derive(Debug)]
struct Overlay {
    base: &'static [u8],
    at: usize,
}

impl Source for Overlay {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&e| e <= self.base.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self.base[start..end]);
        let ring = RING.lock().unwrap_or_else(|e| e.into_inner());
        let (s, e) = (start.max(self.at), end.min(self.at + ring.len()));
        if s < e {
            buf[s - start..e - start].copy_from_slice(&ring[s - self.at..e - self.at]);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.base.len() as u64)
    }
}

/// CRC-32C of ring bytes `from..to`, where the ring is `ring` followed by `rest` (the template's
/// log bytes past the input).
fn crc_append(crc: u32, ring: &[u8], rest: &[u8], from: usize, to: usize) -> u32 {
    let n = ring.len();
    let crc = crc32c::crc32c_append(crc, &ring[from.min(n)..to.min(n)]);
    crc32c::crc32c_append(crc, &rest[from.max(n) - n..to.max(n) - n])
}

/// Give every `loge` slot of `ring` (the first `ring.len()` bytes of a ring of `ring.len() +
/// rest.len()`, whose remainder is `rest`) the template's LogGuid and a correct checksum.
fn fix_entries(ring: &mut [u8], rest: &[u8]) {
    let n = ring.len();
    let len = n + rest.len();
    let guid = uuid::Uuid::from_u128(LOG_GUID).to_bytes_le();
    for pos in (0..n).step_by(4096) {
        if pos + 64 > n || ring[pos..pos + 4] != *b"loge" {
            continue;
        }
        ring[pos + 32..pos + 48].copy_from_slice(&guid);
        let claimed =
            u32::from_le_bytes([ring[pos + 8], ring[pos + 9], ring[pos + 10], ring[pos + 11]])
                as usize;
        if claimed < 64 || claimed > len {
            continue;
        }
        ring[pos + 4..pos + 8].fill(0);
        let first = (len - pos).min(claimed);
        let mut crc = crc_append(0, ring, rest, pos, pos + first);
        if first < claimed {
            crc = crc_append(crc, ring, rest, 0, claimed - first);
        }
        ring[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Bytes read from each MiB block of the view (its start and its end), twice.
const SAMPLE: usize = 8 << 10;

fuzz_target!(|data: &[u8]| {
    let t = template();
    let log = &t.bytes[t.log_offset..t.log_offset + t.log_length];
    // The input's slots, whole: a `loge` header near its end is fixed up in place.
    let n = data
        .len()
        .min(t.log_length)
        .next_multiple_of(4096)
        .min(t.log_length);
    {
        let mut ring = RING.lock().unwrap_or_else(|e| e.into_inner());
        ring.clear();
        ring.extend_from_slice(&log[..n]);
        let given = data.len().min(n);
        ring[..given].copy_from_slice(&data[..given]);
        fix_entries(&mut ring, &log[n..]);
    }
    let file = Overlay {
        base: &t.bytes,
        at: t.log_offset,
    };
    let Ok(disk) = Disk::from_source(Box::new(file), &common::tight_options()) else {
        return;
    };
    let _ = format!("{:?}", disk.info());
    let view = disk.view();
    let size = view.virtual_size();
    let (mut a, mut b) = ([0u8; SAMPLE], [0u8; SAMPLE]);
    let mut at = 0u64;
    while at < size {
        for off in [at, (at + (1 << 20)).min(size).saturating_sub(SAMPLE as u64)] {
            if view.read_exact_at(&mut a, off).is_ok() {
                view.read_exact_at(&mut b, off)
                    .expect("a second read of the same range failed");
                assert!(a == b, "two reads of the replayed view at {off:#x} differ");
            }
        }
        at += 1 << 20;
    }
});
