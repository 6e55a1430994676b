//! One client connection: the handshake, then requests until the client leaves.

use std::io::{self, Read, Write};

use super::proto::*;
use super::Export;
use crate::aligned::Aligned;
use crate::error::{Error, Result};

/// Where a read reply's data starts in the session's buffer: a page in, room for any header.
const DATA_AT: usize = 4096;

/// What the option haggling ended with.
enum Next {
    Transmit,
    Close,
}

struct Session<'a, S> {
    export: &'a Export,
    s: S,
    structured: bool,
    /// Context ids chosen with `NBD_OPT_SET_META_CONTEXT`.
    contexts: Vec<u32>,
    /// The read replies' buffer, reused: data at a page boundary (see `aligned`).
    buf: Aligned,
}

/// A closed or reset connection ends the session quietly; other I/O errors are returned.
fn quiet(r: io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(Error::io("NBD connection", e)),
    }
}

pub(crate) fn run<S: Read + Write>(export: &Export, s: S) -> Result<()> {
    let mut sess = Session {
        export,
        s,
        structured: false,
        contexts: Vec::new(),
        buf: Aligned::default(),
    };
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&INIT_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&OPT_MAGIC.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    if !quiet(sess.send(&greeting))? {
        return Ok(());
    }
    let mut flags = [0u8; 4];
    if !quiet(sess.s.read_exact(&mut flags))? {
        return Ok(());
    }
    let flags = u32::from_be_bytes(flags);
    let known = u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    if flags & !known != 0 || flags & u32::from(FLAG_FIXED_NEWSTYLE) == 0 {
        // Unknown client flags, or an old-style client: the protocol says to close.
        return Ok(());
    }
    let no_zeroes = flags & u32::from(FLAG_NO_ZEROES) != 0;
    match sess.negotiate(no_zeroes) {
        Ok(Next::Transmit) => {}
        Ok(Next::Close) => return Ok(()),
        Err(e) => return quiet(Err(e)).map(|_| ()),
    }
    match sess.transmit() {
        Ok(()) => Ok(()),
        Err(e) => quiet(Err(e)).map(|_| ()),
    }
}

impl<S: Read + Write> Session<'_, S> {
    fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)?;
        self.s.flush()
    }

    fn reply(&mut self, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        self.send(&option_reply(option, kind, data))
    }

    /// Read and drop `n` bytes (a payload refused without holding it).
    fn discard(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.s).take(n), &mut io::sink())?;
        if got < n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn transmission_flags(&self) -> u16 {
        let base = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH;
        if self.export.is_writable() {
            base | TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES
        } else {
            base | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN
        }
    }

    fn negotiate(&mut self, no_zeroes: bool) -> io::Result<Next> {
        loop {
            let mut h = [0u8; 16];
            self.s.read_exact(&mut h)?;
            let (magic, rest) = h.split_at(8);
            let (opt, len) = rest.split_at(4);
            let magic = u64::from_be_bytes(magic.try_into().unwrap_or_default());
            let option = u32::from_be_bytes(opt.try_into().unwrap_or_default());
            let len = u32::from_be_bytes(len.try_into().unwrap_or_default());
            if magic != OPT_MAGIC {
                return Ok(Next::Close);
            }
            if len > MAX_OPTION {
                self.discard(u64::from(len))?;
                if option == OPT_EXPORT_NAME {
                    return Ok(Next::Close);
                }
                self.reply(option, REP_ERR_TOO_BIG, b"option too long")?;
                continue;
            }
            // Bounded by MAX_OPTION just above.
            let mut data = vec![0u8; len as usize];
            self.s.read_exact(&mut data)?;
            if let Some(next) = self.option(option, &data, no_zeroes)? {
                return Ok(next);
            }
        }
    }

    /// Answer one option; `Some` when the haggling is over.
    fn option(&mut self, option: u32, data: &[u8], no_zeroes: bool) -> io::Result<Option<Next>> {
        match option {
            OPT_EXPORT_NAME => {
                if !self.export.answers_to(data) {
                    return Ok(Some(Next::Close));
                }
                let mut v = self.export.size.to_be_bytes().to_vec();
                v.extend_from_slice(&self.transmission_flags().to_be_bytes());
                if !no_zeroes {
                    v.extend_from_slice(&[0u8; 124]);
                }
                self.send(&v)?;
                Ok(Some(Next::Transmit))
            }
            OPT_ABORT => {
                // The client may already be gone; the connection closes either way.
                let _ = self.reply(option, REP_ACK, &[]);
                Ok(Some(Next::Close))
            }
            OPT_LIST if !data.is_empty() => {
                self.refuse(option, REP_ERR_INVALID, "LIST takes no data")
            }
            OPT_LIST => {
                let name = self.export.name.as_bytes();
                let mut v = u32::try_from(name.len())
                    .unwrap_or(0)
                    .to_be_bytes()
                    .to_vec();
                v.extend_from_slice(name);
                self.reply(option, REP_SERVER, &v)?;
                self.reply(option, REP_ACK, &[])?;
                Ok(None)
            }
            OPT_INFO | OPT_GO => self.info(option, data),
            OPT_STRUCTURED_REPLY if !data.is_empty() => {
                self.refuse(option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
            }
            OPT_STRUCTURED_REPLY => {
                self.structured = true;
                self.reply(option, REP_ACK, &[])?;
                Ok(None)
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta(option, data),
            _ => self.refuse(option, REP_ERR_UNSUP, "option not supported"),
        }
    }

    fn refuse(&mut self, option: u32, kind: u32, msg: &str) -> io::Result<Option<Next>> {
        self.reply(option, kind, msg.as_bytes())?;
        Ok(None)
    }

    fn info(&mut self, option: u32, data: &[u8]) -> io::Result<Option<Next>> {
        let Some((name, reqs)) = parse_info(data) else {
            return self.refuse(option, REP_ERR_INVALID, "malformed INFO/GO request");
        };
        if !self.export.answers_to(name) {
            return self.refuse(option, REP_ERR_UNKNOWN, "no such export");
        }
        let mut v = INFO_EXPORT.to_be_bytes().to_vec();
        v.extend_from_slice(&self.export.size.to_be_bytes());
        v.extend_from_slice(&self.transmission_flags().to_be_bytes());
        self.reply(option, REP_INFO, &v)?;
        if reqs.contains(&INFO_BLOCK_SIZE) {
            let mut v = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            for n in [1u32, 4096, MAX_PAYLOAD] {
                v.extend_from_slice(&n.to_be_bytes());
            }
            self.reply(option, REP_INFO, &v)?;
        }
        self.reply(option, REP_ACK, &[])?;
        Ok((option == OPT_GO).then_some(Next::Transmit))
    }

    fn meta(&mut self, option: u32, data: &[u8]) -> io::Result<Option<Next>> {
        let setting = option == OPT_SET_META_CONTEXT;
        if setting && !self.structured {
            return self.refuse(option, REP_ERR_INVALID, "structured replies first");
        }
        let Some((name, queries)) = parse_meta(data) else {
            return self.refuse(option, REP_ERR_INVALID, "malformed meta context request");
        };
        if !self.export.answers_to(name) {
            return self.refuse(option, REP_ERR_UNKNOWN, "no such export");
        }
        let mut chosen: Vec<(&str, u32)> = Vec::new();
        // A writable disk changes under the client: its map is not served.
        if !self.export.is_writable() {
            if queries.is_empty() && !setting {
                chosen = vec![CTX_BASE_ALLOCATION, CTX_ALLOCATION_DEPTH];
            }
            for q in queries {
                for c in contexts_for(q, !setting) {
                    if !chosen.contains(&c) {
                        chosen.push(c);
                    }
                }
            }
        }
        for (ctx, id) in &chosen {
            let mut v = id.to_be_bytes().to_vec();
            v.extend_from_slice(ctx.as_bytes());
            self.reply(option, REP_META_CONTEXT, &v)?;
        }
        if setting {
            self.contexts = chosen.iter().map(|&(_, id)| id).collect();
        }
        self.reply(option, REP_ACK, &[])?;
        Ok(None)
    }
}

/// The NBD error number for a library error.
fn errno(e: &Error) -> u32 {
    match e {
        Error::InvalidArgument(_) => EINVAL,
        Error::ReadOnly { .. } => EPERM,
        _ => EIO,
    }
}

impl<S: Read + Write> Session<'_, S> {
    fn transmit(&mut self) -> io::Result<()> {
        loop {
            let mut h = [0u8; REQUEST_LEN];
            self.s.read_exact(&mut h)?;
            let Some(req) = parse_request(&h) else {
                return Ok(());
            };
            if req.kind == CMD_DISC {
                // Finish what was written before leaving (errors have no one to go to).
                let _ = self.export.flush();
                return Ok(());
            }
            self.request(&req)?;
        }
    }

    /// The error of a request whose range is bad, if it is.
    fn range_error(&self, req: &Request) -> Option<u32> {
        let end = req.offset.checked_add(u64::from(req.length));
        match end {
            _ if req.length == 0 => Some(EINVAL),
            Some(e) if e <= self.export.size => None,
            _ if req.kind == CMD_WRITE || req.kind == CMD_WRITE_ZEROES => Some(ENOSPC),
            _ => Some(EINVAL),
        }
    }

    fn request(&mut self, req: &Request) -> io::Result<()> {
        let writes = matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES | CMD_TRIM);
        if req.kind == CMD_WRITE && (req.length > MAX_PAYLOAD || !self.export.is_writable()) {
            // The payload follows the header whatever the answer: drop it unread.
            self.discard(u64::from(req.length))?;
            let e = if self.export.is_writable() {
                EOVERFLOW
            } else {
                EPERM
            };
            return self.error(req.cookie, e, "write refused");
        }
        if writes && !self.export.is_writable() {
            return self.error(req.cookie, EPERM, "read-only export");
        }
        match req.kind {
            CMD_READ if req.length > MAX_PAYLOAD => {
                self.error(req.cookie, EOVERFLOW, "read longer than 32 MiB")
            }
            CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS => {
                self.ranged(req)
            }
            CMD_FLUSH => match self.export.flush() {
                Ok(()) => self.done(req.cookie),
                Err(e) => self.error(req.cookie, errno(&e), &e.to_string()),
            },
            _ => self.error(req.cookie, EINVAL, "unknown command"),
        }
    }

    /// A request with an offset and a length, the length already within its cap.
    fn ranged(&mut self, req: &Request) -> io::Result<()> {
        // Bounded by MAX_PAYLOAD (checked by the caller for the commands that carry data).
        let mut payload = Vec::new();
        if req.kind == CMD_WRITE {
            payload = vec![0u8; req.length as usize];
            self.s.read_exact(&mut payload)?;
        }
        if let Some(e) = self.range_error(req) {
            return self.error(req.cookie, e, "range outside the disk");
        }
        let r = match req.kind {
            CMD_READ => return self.read(req),
            CMD_BLOCK_STATUS => return self.block_status(req),
            CMD_WRITE => self.export.write(&payload, req.offset),
            CMD_WRITE_ZEROES => self.write_zeroes(req),
            // TRIM is advisory: the ranges keep reading what they read.
            _ => Ok(()),
        };
        let r = r.and_then(|()| {
            if req.flags & CMD_FLAG_FUA != 0 {
                self.export.flush()
            } else {
                Ok(())
            }
        });
        match r {
            Ok(()) => self.done(req.cookie),
            Err(e) => self.error(req.cookie, errno(&e), &e.to_string()),
        }
    }

    fn write_zeroes(&self, req: &Request) -> Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK.min(u64::from(req.length)) as usize];
        let end = req.offset + u64::from(req.length);
        let mut pos = req.offset;
        while pos < end {
            let n = (end - pos).min(CHUNK) as usize;
            self.export.write(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn read(&mut self, req: &Request) -> io::Result<()> {
        let len = req.length as usize;
        let head = if self.structured { 28 } else { 16 };
        // The data lands at a page boundary (the kernel copies into it at twice the speed),
        // the reply's header just before it.
        let v = self.buf.window(DATA_AT + len);
        if let Err(e) = self.export.read(&mut v[DATA_AT..], req.offset) {
            return self.error(req.cookie, errno(&e), &e.to_string());
        }
        let header = if self.structured {
            let mut h = chunk_header(
                req.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                8 + req.length,
            );
            h.extend_from_slice(&req.offset.to_be_bytes());
            h
        } else {
            simple_reply(req.cookie, 0)
        };
        let start = DATA_AT - head;
        v[start..DATA_AT].copy_from_slice(&header);
        self.s.write_all(&v[start..])?;
        self.s.flush()
    }

    fn block_status(&mut self, req: &Request) -> io::Result<()> {
        let super::Backend::ReadOnly(view) = &self.export.backend else {
            return self.error(req.cookie, EINVAL, "no metadata context negotiated");
        };
        if !self.structured || self.contexts.is_empty() {
            return self.error(req.cookie, EINVAL, "no metadata context negotiated");
        }
        let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_EXTENTS
        };
        let mut runs = Vec::new();
        for e in view.extents(req.offset, u64::from(req.length)).take(max) {
            match e {
                Ok(e) => runs.push(e),
                Err(e) => return self.error(req.cookie, errno(&e), &e.to_string()),
            }
        }
        let mut out = Vec::new();
        let contexts = self.contexts.clone();
        for (i, &id) in contexts.iter().enumerate() {
            let mut body = id.to_be_bytes().to_vec();
            for e in &runs {
                // A descriptor's length is 32 bits: a longer run is cut (the client asks again).
                let len = u32::try_from(e.length).unwrap_or(u32::MAX - 511);
                let state = if id == CTX_BASE_ALLOCATION.1 {
                    if e.data {
                        0
                    } else {
                        STATE_HOLE | STATE_ZERO
                    }
                } else {
                    e.layer
                        .map_or(0, |l| u32::try_from(l + 1).unwrap_or(u32::MAX))
                };
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(&state.to_be_bytes());
                if u64::from(len) < e.length {
                    break;
                }
            }
            let flags = if i + 1 == contexts.len() {
                REPLY_FLAG_DONE
            } else {
                0
            };
            let n = u32::try_from(body.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&chunk_header(req.cookie, flags, REPLY_TYPE_BLOCK_STATUS, n));
            out.extend_from_slice(&body);
        }
        self.send(&out)
    }

    fn done(&mut self, cookie: u64) -> io::Result<()> {
        let r = if self.structured {
            chunk_header(cookie, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)
        } else {
            simple_reply(cookie, 0)
        };
        self.send(&r)
    }

    fn error(&mut self, cookie: u64, error: u32, msg: &str) -> io::Result<()> {
        let r = if self.structured {
            error_chunk(cookie, error, msg)
        } else {
            simple_reply(cookie, error)
        };
        self.send(&r)
    }
}
