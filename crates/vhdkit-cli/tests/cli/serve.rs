//! `vhdkit serve`: real NBD clients (nbdinfo, nbdcopy, qemu-img, qemu-io) read every test chain
//! byte-exact, see the same map as `vhdkit map`, write through `--writable`; hostile clients get
//! error replies or a closed connection and the server keeps serving the others.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::map::build_chain;
use crate::util::*;

/// A running `vhdkit serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
}

impl Server {
    pub(crate) fn start(disk: &Path, socket: &Path, extra: &[&str]) -> Server {
        let child = vhdkit()
            .arg("serve")
            .args(extra)
            .arg("--socket")
            .arg(socket)
            .arg(disk)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !socket.exists() {
            assert!(start.elapsed() < Duration::from_secs(20), "no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            socket: socket.to_path_buf(),
        }
    }

    pub(crate) fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// SIGTERM and wait: the exit status.
    pub(crate) fn stop(&mut self) -> i32 {
        run_ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tools() -> bool {
    ["nbdinfo", "nbdcopy", "qemu-img", "qemu-io"]
        .iter()
        .all(|t| {
            have_tool(
                t,
                "NBD clients against vhdkit serve (Debian libnbd-bin, qemu-utils)",
            )
        })
}

/// Runs of `nbdinfo --map[=CTX]`: (offset, length, type), adjacent equal types merged.
fn nbdinfo_map(uri: &str, ctx: &str) -> Vec<(u64, u64, u64)> {
    let arg = if ctx.is_empty() {
        "--map".to_string()
    } else {
        format!("--map={ctx}")
    };
    let out = Command::new("nbdinfo").arg(arg).arg(uri).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .take(3)
                .map(|x| x.parse().unwrap())
                .collect();
            (f[0], f[1], f[2])
        })
        .collect();
    merged(runs)
}

pub(crate) fn merged(runs: Vec<(u64, u64, u64)>) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for r in runs {
        match out.last_mut() {
            Some(l) if l.2 == r.2 && l.0 + l.1 == r.0 => l.1 += r.1,
            _ => out.push(r),
        }
    }
    out
}

/// `vhdkit map --json` as nbdinfo types: base:allocation (0 data, 3 hole+zero) or
/// qemu:allocation-depth (0 absent, N = depth + 1).
pub(crate) fn vhdkit_map(disk: &Path, depth_ctx: bool) -> Vec<(u64, u64, u64)> {
    let r = run_success(["map".as_ref(), "--json".as_ref(), disk.as_os_str()]);
    let runs = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let t = if depth_ctx {
                if e["present"].as_bool().unwrap() {
                    e["depth"].as_u64().unwrap() + 1
                } else {
                    0
                }
            } else if e["data"].as_bool().unwrap() {
                0
            } else {
                3
            };
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                t,
            )
        })
        .collect();
    merged(runs)
}

fn serve_chain(ext: &str, depth: usize) {
    let d = tmp();
    let paths = build_chain(d.path(), ext, depth);
    let top = paths.last().unwrap();
    let want = p(d.path(), "want.raw");
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        top.as_os_str(),
        want.as_os_str(),
    ]);
    let want = std::fs::read(&want).unwrap();
    let mut srv = Server::start(top, &p(d.path(), "s.sock"), &[]);
    let uri = srv.uri();
    let copied = p(d.path(), "nbdcopy.raw");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&copied));
    assert!(
        std::fs::read(&copied).unwrap() == want,
        "{ext} depth {depth}: nbdcopy differs"
    );
    let q = p(d.path(), "qemu.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&q),
    );
    assert!(
        std::fs::read(&q).unwrap() == want,
        "{ext} depth {depth}: qemu-img differs"
    );
    // qemu-io: the top layer's own write, a write of the layer below partly shadowed, a hole.
    let own = crate::map::layer_writes(depth - 1)[0].clone();
    let mut reads = vec![
        format!("read -P {} {} {}", own.1[0], own.0, own.1.len()),
        "read -P 0 60M 1M".to_string(),
    ];
    if depth > 1 {
        // The top layer's 1 KiB over the start of the layer below's own write, then the rest.
        let over = &crate::map::layer_writes(depth - 1)[1];
        let below = &crate::map::layer_writes(depth - 2)[0];
        assert_eq!(over.0, below.0);
        reads.push(format!("read -P {} {} 1024", over.1[0], over.0));
        reads.push(format!("read -P {} {} 512", below.1[0], below.0 + 1024));
    }
    for r in &reads {
        run_ok(Command::new("qemu-io").args(["-r", "-f", "raw", "-c", r, &uri]));
    }
    assert_eq!(
        nbdinfo_map(&uri, ""),
        vhdkit_map(top, false),
        "{ext} {depth} base:allocation"
    );
    assert_eq!(
        nbdinfo_map(&uri, "qemu:allocation-depth"),
        vhdkit_map(top, true),
        "{ext} {depth} qemu:allocation-depth"
    );
    assert_eq!(srv.stop(), 0);
    assert!(!srv.socket.exists(), "the socket is removed at shutdown");
}

#[test]
fn nbd_clients_read_vhdx_chains_byte_exact() {
    if !tools() {
        return;
    }
    for depth in 1..=5 {
        serve_chain("vhdx", depth);
    }
}

#[test]
fn nbd_clients_read_vhd_chains_byte_exact() {
    if !tools() {
        return;
    }
    for depth in 1..=5 {
        serve_chain("vhd", depth);
    }
}

/// `nbdinfo -- [ vhdkit serve DISK ]` and nbdcopy: socket activation (LISTEN_FDS, fd 3).
#[test]
fn socket_activation() {
    if !tools() {
        return;
    }
    let d = tmp();
    let paths = build_chain(d.path(), "vhdx", 2);
    let bin = env!("CARGO_BIN_EXE_vhdkit");
    let out = Command::new("nbdinfo")
        .args(["--size", "--", "[", bin, "serve"])
        .arg(&paths[1])
        .arg("]")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (64u64 << 20).to_string()
    );
    let copied = p(d.path(), "out.raw");
    run_ok(
        Command::new("nbdcopy")
            .args(["--", "[", bin, "serve"])
            .arg(&paths[1])
            .arg("]")
            .arg(&copied),
    );
    let want = p(d.path(), "want.raw");
    run_success([
        "convert".as_ref(),
        "--to".as_ref(),
        "raw".as_ref(),
        paths[1].as_os_str(),
        want.as_os_str(),
    ]);
    assert!(std::fs::read(&copied).unwrap() == std::fs::read(&want).unwrap());
}

#[test]
fn writable_writes_read_back_and_parents_are_refused() {
    if !tools() {
        return;
    }
    let d = tmp();
    let paths = build_chain(d.path(), "vhdx", 2);
    let before = vhdkit_testkit::through::read_chain(&paths[1]);
    let mut srv = Server::start(&paths[1], &p(d.path(), "w.sock"), &["--writable"]);
    let uri = srv.uri();
    run_ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 1048064 70000",
        "-c",
        "write -z 8M 1M",
        &uri,
    ]));
    assert_eq!(srv.stop(), 0, "clean shutdown with a final flush");
    let after = vhdkit_testkit::through::read_chain(&paths[1]);
    let mut model = before;
    model[1048064..1048064 + 70000].fill(0x5a);
    model[8 << 20..9 << 20].fill(0);
    assert!(after == model, "the writes read back through vhdkit");
    // And through libvhdi, an independent chain reader.
    if let Some((sha, size)) = vhdkit_testkit::oracle::pyvhdi_chain_sha256(&[&paths[1], &paths[0]])
    {
        assert_eq!(size, model.len() as u64);
        assert_eq!(
            sha,
            vhdkit_testkit::sha256_reader(&model[..]),
            "the writes read back through libvhdi"
        );
    }
    // The base is untouched: it still opens as the parent (identity unchanged).
    run_success(["chain".as_ref(), paths[1].as_os_str()]);
}

/// `--writable` on a disk with a child beside it, or in a `--search` folder: refused before
/// anything is served, every file byte-identical with its modification time unchanged.
#[test]
fn writable_refuses_a_parent_and_changes_nothing() {
    for ext in ["vhdx", "vhd"] {
        let d = tmp();
        let paths = build_chain(d.path(), ext, 3);
        let before = vhdkit_testkit::snapshot::Snapshot::tree(d.path());
        for parent in &paths[..2] {
            let r = run([
                "serve".as_ref(),
                "--writable".as_ref(),
                "--socket".as_ref(),
                p(d.path(), "never.sock").as_os_str(),
                parent.as_os_str(),
            ]);
            assert_eq!(r.code, 1, "{r:?}");
            assert!(
                r.stderr.contains("differencing disk over it"),
                "{}",
                r.stderr
            );
            before.assert_unchanged(&format!("{ext}: refused serve --writable"));
        }
        // The child in another folder, found through --search only (by the identity it records:
        // its relative locator no longer resolves).
        let other = d.path().join("vm");
        std::fs::create_dir(&other).unwrap();
        let moved = other.join(paths[2].file_name().unwrap());
        std::fs::rename(&paths[2], &moved).unwrap();
        let before = vhdkit_testkit::snapshot::Snapshot::tree(d.path());
        let r = run([
            "serve".as_ref(),
            "--writable".as_ref(),
            "--search".as_ref(),
            other.as_os_str(),
            paths[1].as_os_str(),
        ]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(
            r.stderr
                .contains(moved.file_name().unwrap().to_str().unwrap()),
            "{}",
            r.stderr
        );
        before.assert_unchanged(&format!("{ext}: refused with --search"));
    }
}

/// A raw client: handshake with fixed newstyle and NBD_OPT_GO, simple replies.
pub(crate) fn handshake(sock: &Path) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    // An unknown option first: refused, the haggling goes on.
    send_option(&mut s, 99, &[]);
    assert_eq!(option_reply(&mut s).0, (1 << 31) | 1);
    let mut go = 0u32.to_be_bytes().to_vec();
    go.extend_from_slice(&0u16.to_be_bytes());
    send_option(&mut s, 7, &go);
    loop {
        let (kind, _) = option_reply(&mut s);
        if kind == 1 {
            return s;
        }
        assert_eq!(kind, 3, "NBD_REP_INFO");
    }
}

pub(crate) fn send_option(s: &mut UnixStream, opt: u32, data: &[u8]) {
    let mut v = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    s.write_all(&v).unwrap();
}

pub(crate) fn option_reply(s: &mut UnixStream) -> (u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).unwrap();
    (kind, data)
}

pub(crate) fn request(s: &mut UnixStream, kind: u16, cookie: u64, offset: u64, len: u32) {
    let mut v = 0x2560_9513u32.to_be_bytes().to_vec();
    v.extend_from_slice(&0u16.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    s.write_all(&v).unwrap();
}

/// A simple reply: (error, cookie).
pub(crate) fn simple_reply(s: &mut UnixStream) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    (
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        u64::from_be_bytes(h[8..16].try_into().unwrap()),
    )
}

/// The connection is closed by the server (EOF, or a reset).
pub(crate) fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

#[test]
fn hostile_clients_get_errors_and_others_are_served() {
    let d = tmp();
    let paths = build_chain(d.path(), "vhdx", 2);
    let want = vhdkit_testkit::through::read_chain(&paths[1]);
    let srv = Server::start(&paths[1], &p(d.path(), "h.sock"), &[]);
    let size = want.len() as u64;

    let mut s = handshake(&srv.socket);
    // Too long, past the end, overflowing, zero length, unknown: error replies, in order.
    for (kind, cookie, off, len, err) in [
        (0u16, 1u64, 0u64, 64u32 << 20, 75u32),
        (0, 2, size - 512, 1024, 22),
        (0, 3, u64::MAX - 10, 512, 22),
        (0, 4, 0, 0, 22),
        (99, 5, 0, 512, 22),
        (7, 6, 0, 512, 22), // block status without structured replies
        (4, 7, 0, 512, 1),  // trim on a read-only export
    ] {
        request(&mut s, kind, cookie, off, len);
        assert_eq!(simple_reply(&mut s), (err, cookie), "request {cookie}");
    }
    // A write on a read-only export: its payload is skipped, the stream stays in step.
    request(&mut s, 1, 8, 0, 4096);
    s.write_all(&[0xee; 4096]).unwrap();
    assert_eq!(simple_reply(&mut s), (1, 8));
    request(&mut s, 0, 9, 1 << 20, 4096);
    assert_eq!(simple_reply(&mut s), (0, 9));
    let mut data = vec![0u8; 4096];
    s.read_exact(&mut data).unwrap();
    assert!(data[..] == want[1 << 20..(1 << 20) + 4096]);
    // A bad magic closes that connection only.
    s.write_all(&[0u8; 28]).unwrap();
    assert!(closed(&mut s));

    // A request before the handshake: closed.
    let mut early = UnixStream::connect(&srv.socket).unwrap();
    early
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut g = [0u8; 18];
    early.read_exact(&mut g).unwrap();
    request(&mut early, 0, 1, 0, 512);
    assert!(closed(&mut early));
    // Gone mid-request (half a header; half a write payload): no effect on others.
    let mut half = handshake(&srv.socket);
    half.write_all(&0x2560_9513u32.to_be_bytes()).unwrap();
    drop(half);
    let mut half = handshake(&srv.socket);
    request(&mut half, 0, 1, 0, 1 << 20);
    drop(half); // never reads its 1 MiB reply
                // A huge option length: refused without holding it (the client sends it all).
    let mut s = UnixStream::connect(&srv.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.read_exact(&mut g).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    send_option(&mut s, 3, &vec![0u8; 1 << 20]);
    assert_eq!(option_reply(&mut s).0, (1 << 31) | 9);

    // Everyone else is still served, whole disk byte-exact.
    let mut ok = handshake(&srv.socket);
    let mut got = Vec::new();
    for (i, off) in (0..size).step_by(8 << 20).enumerate() {
        request(&mut ok, 0, i as u64, off, 8 << 20);
        assert_eq!(simple_reply(&mut ok), (0, i as u64));
        let mut b = vec![0u8; 8 << 20];
        ok.read_exact(&mut b).unwrap();
        got.extend_from_slice(&b);
    }
    assert!(got == want);
    request(&mut ok, 2, 0, 0, 0); // NBD_CMD_DISC
    assert!(closed(&mut ok));
}
