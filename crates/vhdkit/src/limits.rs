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
    /// Largest amount of logged data held in memory while replaying a dirty VHDX log read-only,
    /// in bytes. The log region Windows creates is 1 MiB.
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
}
