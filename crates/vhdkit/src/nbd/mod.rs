//! An NBD (network block device) export of a chain's virtual disk: any NBD client (`nbdinfo`,
//! `nbdcopy`, `qemu-img`, the Linux kernel's `nbd-client`) reads the full contents of a
//! differencing chain through it.
//!
//! [`Export`] serves one connection per call of [`Export::serve`] over any `Read + Write`
//! stream (a Unix or TCP socket); the caller accepts connections and runs each in a thread of
//! its own (a read-only export is shared by any number of them). The protocol is the fixed
//! newstyle handshake with `NBD_OPT_GO`, `INFO`, `LIST`, `ABORT`, `EXPORT_NAME`,
//! `STRUCTURED_REPLY` and `SET`/`LIST_META_CONTEXT` (`base:allocation`: holes and zeros;
//! `qemu:allocation-depth`: 0 = no layer holds the range, N = the Nth disk from the top), then
//! `READ`, `FLUSH`, `DISC` and `BLOCK_STATUS`, plus `WRITE`, `WRITE_ZEROES` and `TRIM` (a no-op,
//! as the protocol allows) on a writable export.
//!
//! A client is untrusted: a bad magic, a request before the handshake or a client that goes
//! away closes its connection; a bad length, offset or command gets the protocol's error reply.
//! No request makes the server allocate more than the 32 MiB payload cap.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crate::chain::ChainOptions;
use crate::error::{Error, Result};
use crate::view::ChainView;
use crate::write::WritableDisk;

pub(crate) mod proto;
mod session;

/// A virtual disk served over NBD: read-only through a [`ChainView`], or writable through a
/// [`WritableDisk`] (writes go into the top disk only).
#[derive(Debug)]
pub struct Export {
    name: String,
    size: u64,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    ReadOnly(ChainView),
    Writable(Mutex<WritableDisk>),
}

impl Export {
    /// A read-only export of `view` named `name` (clients asking for the empty name get it
    /// too, as most do by default).
    pub fn read_only(view: ChainView, name: impl Into<String>) -> Export {
        Export {
            name: name.into(),
            size: view.virtual_size(),
            backend: Backend::ReadOnly(view),
        }
    }

    /// A writable export of the disk at `path` (its parents are found with `opts` and only
    /// read). Refused ([`Error::Refused`]) when a disk in `path`'s folder or in a search folder
    /// of `opts` has it as its parent: writing would change what that child reads and, for a
    /// VHDX, break its link. Also refused when one of those folders cannot be fully inspected.
    pub fn writable(
        path: impl AsRef<Path>,
        opts: &ChainOptions,
        name: impl Into<String>,
    ) -> Result<Export> {
        let path = path.as_ref();
        refuse_children(path, opts)?;
        let disk = WritableDisk::open(path, opts)?;
        Ok(Export {
            name: name.into(),
            size: disk.virtual_size(),
            backend: Backend::Writable(Mutex::new(disk)),
        })
    }

    /// Serve one client on `stream` until it disconnects. A client that breaks the protocol
    /// is disconnected (`Ok`); `Err` only for an I/O error of the connection.
    pub fn serve<S: Read + Write>(&self, stream: S) -> Result<()> {
        session::run(self, stream)
    }

    /// Make every write durable (a no-op for a read-only export).
    pub fn flush(&self) -> Result<()> {
        match &self.backend {
            Backend::ReadOnly(_) => Ok(()),
            Backend::Writable(m) => lock(m)?.flush(),
        }
    }

    fn is_writable(&self) -> bool {
        matches!(self.backend, Backend::Writable(_))
    }

    /// Whether a client's export name selects this export.
    fn answers_to(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match &self.backend {
            Backend::ReadOnly(v) => v.read_exact_at(buf, offset),
            Backend::Writable(m) => lock(m)?.read_exact_at(buf, offset),
        }
    }

    fn write(&self, data: &[u8], offset: u64) -> Result<()> {
        match &self.backend {
            Backend::ReadOnly(_) => Err(Error::ReadOnly { path: None }),
            Backend::Writable(m) => lock(m)?.write_at(offset, data),
        }
    }
}

fn lock(m: &Mutex<WritableDisk>) -> Result<MutexGuard<'_, WritableDisk>> {
    m.lock()
        .map_err(|_| Error::internal("NBD export: a client thread panicked holding the disk"))
}

/// Refuse `path` when a disk vhdkit can see (in its folder and the search folders) is its
/// child, by resolved parent or by the identity it records.
fn refuse_children(path: &Path, opts: &ChainOptions) -> Result<()> {
    let me = crate::disk::Disk::open_with(path, &opts.open)?;
    let meta = std::fs::metadata(path).map_err(|e| Error::io("reading the metadata", e))?;
    let key = crate::share::scan::file_key(path, &meta);
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut roots = vec![folder.to_path_buf()];
    roots.extend(opts.search_dirs.iter().cloned());
    let limits = crate::tree::WalkLimits::default();
    let sc = crate::share::scan(&roots, opts, &limits, &mut |_| {})?;
    let refused = |reason: String| Error::Refused {
        path: Some(path.to_path_buf()),
        reason,
    };
    if let Some(u) = sc.uninspected.first() {
        return Err(refused(format!(
            "{} could not be inspected and may hold a child of this disk; a write would \
             change what a child reads",
            u.path.display()
        )));
    }
    let child = sc.disks.iter().find(|d| {
        d.parent.as_ref().is_some_and(|p| {
            p.resolved_key.as_ref() == Some(&key)
                || p.expected_id == me.identity()
                || p.alternate_id == Some(me.identity())
        })
    });
    match child {
        Some(c) => Err(refused(format!(
            "{} is a differencing disk over it; writing would change what that child reads",
            c.path.display()
        ))),
        None => Ok(()),
    }
}
