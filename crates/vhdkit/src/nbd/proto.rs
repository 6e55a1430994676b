//! NBD wire format (the protocol document of the NetworkBlockDevice project): constants,
//! request and option parsing, reply encoding. No I/O here, so the fuzz target and the unit
//! tests reach every parser without a socket.

/// `NBDMAGIC`, then `IHAVEOPT`: the server's greeting.
pub(crate) const INIT_MAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const OPT_MAGIC: u64 = 0x4948_4156_454f_5054;
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(crate) const FLAG_NO_ZEROES: u16 = 2;

pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_LIST: u32 = 3;
pub(crate) const OPT_INFO: u32 = 6;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;
pub(crate) const OPT_LIST_META_CONTEXT: u32 = 9;
pub(crate) const OPT_SET_META_CONTEXT: u32 = 10;

pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_SERVER: u32 = 2;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_META_CONTEXT: u32 = 4;
pub(crate) const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
pub(crate) const REP_ERR_INVALID: u32 = (1 << 31) | 3;
pub(crate) const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;
pub(crate) const REP_ERR_TOO_BIG: u32 = (1 << 31) | 9;

pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

pub(crate) const TFLAG_HAS_FLAGS: u16 = 1;
pub(crate) const TFLAG_READ_ONLY: u16 = 1 << 1;
pub(crate) const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub(crate) const TFLAG_SEND_FUA: u16 = 1 << 3;
pub(crate) const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub(crate) const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub(crate) const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;
pub(crate) const CMD_BLOCK_STATUS: u16 = 7;

pub(crate) const CMD_FLAG_FUA: u16 = 1;
pub(crate) const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

pub(crate) const REPLY_FLAG_DONE: u16 = 1;
pub(crate) const REPLY_TYPE_NONE: u16 = 0;
pub(crate) const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub(crate) const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub(crate) const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;

pub(crate) const EPERM: u32 = 1;
pub(crate) const EIO: u32 = 5;
pub(crate) const EINVAL: u32 = 22;
pub(crate) const ENOSPC: u32 = 28;
pub(crate) const EOVERFLOW: u32 = 75;

/// `base:allocation` flags.
pub(crate) const STATE_HOLE: u32 = 1;
pub(crate) const STATE_ZERO: u32 = 2;

/// The metadata contexts served, with the ids the server gives them.
pub(crate) const CTX_BASE_ALLOCATION: (&str, u32) = ("base:allocation", 1);
pub(crate) const CTX_ALLOCATION_DEPTH: (&str, u32) = ("qemu:allocation-depth", 2);

/// Largest READ or WRITE payload accepted (the block size's maximum told to clients): a
/// request over it is refused without allocating for it.
pub(crate) const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option payload read into memory; a longer one is skipped and refused.
pub(crate) const MAX_OPTION: u32 = 64 << 10;
/// Most extents in one block-status reply per context.
pub(crate) const MAX_EXTENTS: usize = 1024;
/// Size of a request header on the wire.
pub(crate) const REQUEST_LEN: usize = 28;

/// One transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(s.try_into().ok()?))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

/// A request header, or `None` when the magic is wrong (the stream cannot be resynchronised).
pub(crate) fn parse_request(b: &[u8; REQUEST_LEN]) -> Option<Request> {
    if be_u32(b, 0)? != REQUEST_MAGIC {
        return None;
    }
    Some(Request {
        flags: be_u16(b, 4)?,
        kind: be_u16(b, 6)?,
        cookie: be_u64(b, 8)?,
        offset: be_u64(b, 16)?,
        length: be_u32(b, 24)?,
    })
}

/// A length-prefixed string (u32 length, then bytes) at `at`: the string and where the next
/// field starts.
fn prefixed(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let len = usize::try_from(be_u32(b, at)?).ok()?;
    let start = at.checked_add(4)?;
    let end = start.checked_add(len)?;
    Some((b.get(start..end)?, end))
}

/// The payload of `NBD_OPT_INFO`/`NBD_OPT_GO`: the export name and the information requests.
pub(crate) fn parse_info(b: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let (name, at) = prefixed(b, 0)?;
    let n = usize::from(be_u16(b, at)?);
    let reqs_at = at.checked_add(2)?;
    if b.len() != reqs_at.checked_add(n.checked_mul(2)?)? {
        return None;
    }
    let reqs = (0..n).filter_map(|i| be_u16(b, reqs_at + 2 * i)).collect();
    Some((name, reqs))
}

/// The payload of `NBD_OPT_LIST_META_CONTEXT`/`NBD_OPT_SET_META_CONTEXT`: the export name and
/// the queries.
pub(crate) fn parse_meta(b: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let (name, mut at) = prefixed(b, 0)?;
    let n = be_u32(b, at)?;
    at = at.checked_add(4)?;
    let mut queries = Vec::new();
    for _ in 0..n {
        // Each query takes at least its 4-byte length, so `n` is bounded by the payload.
        let (q, next) = prefixed(b, at)?;
        queries.push(q);
        at = next;
    }
    (at == b.len()).then_some((name, queries))
}

/// The contexts a query selects: an exact name, or a namespace (`base:`, `qemu:`) when
/// `listing` (the list option accepts namespaces; setting wants exact names).
pub(crate) fn contexts_for(query: &[u8], listing: bool) -> Vec<(&'static str, u32)> {
    [CTX_BASE_ALLOCATION, CTX_ALLOCATION_DEPTH]
        .into_iter()
        .filter(|(name, _)| {
            query == name.as_bytes()
                || (listing && query.ends_with(b":") && name.as_bytes().starts_with(query))
        })
        .collect()
}

/// An option reply.
pub(crate) fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + data.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    // Option replies are built from the server's own small values, never near 4 GiB.
    v.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A simple reply header (the data of a successful read follows it).
pub(crate) fn simple_reply(cookie: u64, error: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v
}

/// A structured reply chunk header for a payload of `len` bytes.
pub(crate) fn chunk_header(cookie: u64, flags: u16, kind: u16, len: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// A structured error chunk (the last of its reply) with a message.
pub(crate) fn error_chunk(cookie: u64, error: u32, msg: &str) -> Vec<u8> {
    let msg = msg.as_bytes();
    let msg = msg.get(..msg.len().min(1024)).unwrap_or_default();
    let len = u16::try_from(msg.len()).unwrap_or(0);
    let mut v = chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6 + u32::from(len),
    );
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(msg);
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_bad_magic() {
        let mut b = [0u8; REQUEST_LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&7u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(
            (r.flags, r.kind, r.cookie, r.offset, r.length),
            (1, 1, 7, 4096, 512)
        );
        b[0] ^= 1;
        assert!(parse_request(&b).is_none());
    }

    #[test]
    fn info_and_meta_payloads() {
        let mut b = Vec::new();
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let (name, reqs) = parse_info(&b).unwrap();
        assert_eq!((name, reqs), (&b"abc"[..], vec![INFO_BLOCK_SIZE]));
        b.push(0);
        assert!(parse_info(&b).is_none(), "trailing byte");
        // A name length past the payload.
        assert!(parse_info(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_none());

        let mut m = Vec::new();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&2u32.to_be_bytes());
        for q in [&b"base:"[..], b"qemu:allocation-depth"] {
            m.extend_from_slice(&(q.len() as u32).to_be_bytes());
            m.extend_from_slice(q);
        }
        let (name, qs) = parse_meta(&m).unwrap();
        assert!(name.is_empty());
        assert_eq!(contexts_for(qs[0], true), vec![CTX_BASE_ALLOCATION]);
        assert!(contexts_for(qs[0], false).is_empty());
        assert_eq!(contexts_for(qs[1], false), vec![CTX_ALLOCATION_DEPTH]);
        // A count of queries the payload cannot hold.
        let mut huge = 0u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta(&huge).is_none());
    }
}
