//! Budgets that bound what a hostile file can make vhdkit allocate or do.
//!
//! Every count or length read from a file is checked against the file's own size first (a table
//! cannot be larger than the file that holds it) and then against these limits, which cap memory
//! use for legal but huge files. Raise them for trusted files that need more.

/// Caller-tunable limits. `Limits::default()` suits any disk Hyper-V can make.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest block allocation table held in memory, in bytes. 64 MiB covers a 2 TiB VHD
    /// with 2 MiB blocks (4 MiB) and a 64 TiB VHDX with 4 MiB or larger blocks (16 MiB at 32 MiB).
    pub max_bat_bytes: u64,
    /// Deepest differencing chain followed (the child counts as 1). Hyper-V checkpoint trees
    /// rarely pass 50; a deeper chain is far more likely a loop or an attack.
    pub max_chain_depth: usize,
    /// Largest parent locator payload decoded, in bytes. A Windows path is at most 32 767
    /// UTF-16 code units (64 KiB); VHDX locator items hold several of them.
    pub max_locator_bytes: u32,
    /// Largest VHDX metadata item read, in bytes (the spec's own maximum is 1 MiB).
    pub max_metadata_item_bytes: u32,
    /// Largest VHDX log, and largest amount of data its active sequence may replay, in bytes.
    /// The log is streamed and its sectors read where they lie, so memory does not grow with
    /// it. The log region Windows creates is 1 MiB.
    pub max_log_replay_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bat_bytes: 64 << 20,
            max_chain_depth: 128,
            max_locator_bytes: 256 << 10,
            max_metadata_item_bytes: 1 << 20,
            max_log_replay_bytes: 256 << 20,
        }
    }
}

impl Limits {
    /// Limits with everything set to its default; spelled out for builder-style use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The one table-size rule for new disks (create, convert): a block allocation table of
    /// `bytes` that readers with these limits would refuse is refused before any file is made.
    pub fn check_new_table(&self, bytes: u64) -> crate::Result<()> {
        if bytes <= self.max_bat_bytes {
            return Ok(());
        }
        Err(crate::Error::InvalidOption {
            option: "block_size",
            detail: format!(
                "the block allocation table would be {bytes} bytes, more than the {} bytes any \
                 reader (vhdkit's included) is allowed to load; use a larger block size",
                self.max_bat_bytes
            ),
        })
    }

    /// The one table-size rule for existing disks: a block allocation table of `bytes` at
    /// `offset` in `structure` larger than `max_bat_bytes` is not loaded (`what` names the
    /// figure in the error).
    pub(crate) fn check_bat_bytes(
        &self,
        structure: &'static str,
        offset: u64,
        what: &'static str,
        bytes: u64,
    ) -> crate::Result<()> {
        if bytes > self.max_bat_bytes {
            return Err(crate::Error::limit(
                structure,
                offset,
                what,
                bytes,
                self.max_bat_bytes,
            ));
        }
        Ok(())
    }
}

/// Writes `len` bytes of `byte` at `at` through a bounded buffer (a large table is never held
/// in memory whole).
pub(crate) fn write_fill<S: crate::txn::Sink + ?Sized>(
    sink: &S,
    at: u64,
    len: u64,
    byte: u8,
) -> std::io::Result<()> {
    let buf = vec![byte; usize::try_from(len.min(FILL_CHUNK)).unwrap_or(0)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(FILL_CHUNK);
        let part = buf
            .get(..usize::try_from(n).unwrap_or(0))
            .unwrap_or_default();
        sink.write_all_at(part, at.saturating_add(done))?;
        done += n;
    }
    Ok(())
}

/// Chunk in which new tables are written (1 MiB).
pub(crate) const FILL_CHUNK: u64 = 1 << 20;

/// The fuzzing profile: each limit small enough that no input can make one run do more than a
/// few MiB of work, yet large enough for the structures of the seed images (a 10 GiB VHDX with
/// 1 MiB blocks: an 80 KiB BAT; Windows' 1 MiB log; locators of a full-length Windows path).
/// Every entry of a table is visited on open or check, so its size is what bounds a run: a
/// 127 GiB VHD (a 254 KiB BAT of 65,024 entries) is refused here.
#[cfg(feature = "test-support")]
impl Limits {
    /// Limits for fuzz targets and other runs over hostile bytes that must stay cheap per input.
    #[doc(hidden)]
    pub fn fuzzing() -> Self {
        Limits {
            max_bat_bytes: 96 << 10,
            max_chain_depth: 4,
            max_locator_bytes: 64 << 10,
            max_metadata_item_bytes: 64 << 10,
            max_log_replay_bytes: 1 << 20,
        }
    }
}

#[cfg(all(test, feature = "test-support"))]
mod fuzzing_tests {
    use super::Limits;

    #[test]
    fn fuzzing_limits_are_tighter_than_the_defaults_and_fit_the_seeds() {
        let (f, d) = (Limits::fuzzing(), Limits::default());
        assert!(f.max_bat_bytes < d.max_bat_bytes);
        assert!(f.max_chain_depth < d.max_chain_depth);
        assert!(f.max_locator_bytes < d.max_locator_bytes);
        assert!(f.max_metadata_item_bytes < d.max_metadata_item_bytes);
        assert!(f.max_log_replay_bytes < d.max_log_replay_bytes);
        // A 10 GiB VHDX with 1 MiB blocks (10,240 payload and 3 bitmap entries of 8 bytes)
        // opens; a 127 GiB VHD with 2 MiB blocks (65,024 entries of 4 bytes) does not.
        assert!(f.check_new_table(10_243 * 8).is_ok());
        assert!(f.check_new_table(65_024 * 4).is_err());
        assert_eq!(f.max_log_replay_bytes, 1 << 20);
    }
}
