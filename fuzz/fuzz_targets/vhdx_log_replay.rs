//! Structure-aware fuzzing of VHDX log replay.
//!
//! A valid small dynamic VHDX (built once by the testkit's independent writer) gets a non-zero
//! LogGuid in both headers; the input becomes the contents of its 1 MiB log region. Before
//! opening, every 4 KiB slot of the input that starts with `loge` gets the header's LogGuid and
//! a correct CRC-32C over the length it claims (wrapping round the ring), so the fuzzer spends
//! its time on descriptors, data sectors, sequence numbers, tails and targets rather than on
//! guessing a GUID and a checksum. Opening replays the log in memory; then the whole 4 MiB view
//! is read twice and must agree.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhdkit::Disk;
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

fn fix_entries(ring: &mut [u8]) {
    let len = ring.len();
    let guid = uuid::Uuid::from_u128(LOG_GUID).to_bytes_le();
    for pos in (0..len).step_by(4096) {
        if ring.get(pos..pos + 4) != Some(b"loge".as_slice()) {
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
        let mut crc = 0u32;
        let first = (len - pos).min(claimed);
        crc = crc32c::crc32c_append(crc, &ring[pos..pos + first]);
        if first < claimed {
            crc = crc32c::crc32c_append(crc, &ring[..claimed - first]);
        }
        ring[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let mut file = t.bytes.clone();
    let n = data.len().min(t.log_length);
    let ring = &mut file[t.log_offset..t.log_offset + t.log_length];
    ring[..n].copy_from_slice(&data[..n]);
    fix_entries(ring);
    let Ok(disk) = Disk::from_source(Box::new(file), &common::tight_options()) else {
        return;
    };
    let _ = format!("{:?}", disk.info());
    let view = disk.view();
    let size = view.virtual_size() as usize;
    let (mut a, mut b) = (vec![0u8; size], vec![0u8; size]);
    if view.read_exact_at(&mut a, 0).is_ok() {
        view.read_exact_at(&mut b, 0)
            .expect("a second read of the same range failed");
        assert!(a == b, "two reads of the replayed view differ");
    }
});
