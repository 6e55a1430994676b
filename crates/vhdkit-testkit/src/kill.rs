//! Process kills at chosen system calls (strace fault injection), with proof that each kill
//! happened: a crash test whose crash never happened tests nothing.
//!
//! Protocol: [`count_syscalls`] counts the calls of one clean run; then, for every call name and
//! every `k` in `1..=count`, [`run_killed_at`] must kill the run (the test checks the state
//! after it), and [`run_past_last`] with `k = count + 1` must complete with exit 0, which proves
//! the loop covered every point the command reaches.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

const SIGKILL: i32 = 9;

/// The system calls of one clean run of `program args` among `traced` (comma-separated),
/// counted per name; asserts the run succeeds.
pub fn count_syscalls<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    traced: &str,
    log: &Path,
) -> BTreeMap<String, usize> {
    let o = Command::new("strace")
        .args(["-f", "-qq", "-e", &format!("trace={traced}"), "-o"])
        .arg(log)
        .arg(program)
        .args(args)
        .output()
        .expect("spawn strace");
    assert!(o.status.success(), "counting run failed: {o:?}");
    let text = std::fs::read_to_string(log).expect("read strace log");
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        // `-f` lines start with the pid: `1234 pwrite64(3, ...) = 512`.
        let name = line
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.split('(').next())
            .unwrap_or_default();
        if traced.split(',').any(|t| t == name) {
            *counts.entry(name.to_string()).or_default() += 1;
        }
    }
    counts
}

/// Run `program args` with SIGKILL injected at the `k`th call of `syscall`.
pub fn run_with_kill<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    syscall: &str,
    k: usize,
) -> Output {
    Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=KILL:when={k}"))
        .arg(program)
        .args(args)
        .output()
        .expect("spawn strace")
}

/// True when strace reports that its tracee died of SIGKILL: strace re-raises the signal (no
/// exit code) or, in some versions, exits with 128 + 9.
pub fn died_of_sigkill(o: &Output) -> bool {
    o.status.signal() == Some(SIGKILL) || o.status.code() == Some(128 + SIGKILL)
}

/// Run with a kill at the `k`th `syscall` and assert the process really died of it.
pub fn run_killed_at<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    syscall: &str,
    k: usize,
) -> Output {
    let o = run_with_kill(program, args, syscall, k);
    assert!(
        died_of_sigkill(&o),
        "{syscall}#{k}: expected a SIGKILL, got {}: stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Run with the injection one past the last counted `syscall` and assert the command completed
/// normally (exit 0): the counted points were all the points there are.
pub fn run_past_last<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    syscall: &str,
    count: usize,
) -> Output {
    let o = run_with_kill(program, args, syscall, count + 1);
    assert!(
        o.status.success(),
        "{syscall}#{}: the run past the last counted call should complete, got {}: stderr {}",
        count + 1,
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Run `program args` with `errno` (e.g. `EIO`) returned by the `k`th call of `syscall` instead
/// of the call, and prove it happened: strace's own log (`log`, with the file each descriptor
/// names, `-y`) shows the injected call. `also` (comma-separated, may be empty) is traced too,
/// for the caller's reading of the log. The caller asserts what the command made of the error.
pub fn run_with_error<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    (syscall, also): (&str, &str),
    k: usize,
    errno: &str,
    log: &Path,
) -> Output {
    let traced = if also.is_empty() {
        syscall.to_string()
    } else {
        format!("{syscall},{also}")
    };
    let o = Command::new("strace")
        .args(["-f", "-qq", "-y", "-o"])
        .arg(log)
        .arg("-e")
        .arg(format!("trace={traced}"))
        .arg("-e")
        .arg(format!("inject={syscall}:error={errno}:when={k}"))
        .arg(program)
        .args(args)
        .output()
        .expect("spawn strace");
    let text = std::fs::read_to_string(log).expect("read strace log");
    assert!(
        text.contains(&format!("{errno} (")) && text.contains("(INJECTED)"),
        "{syscall}#{k}: strace injected no {errno}:\n{text}"
    );
    o
}

/// The whole kill protocol over `counts` (from [`count_syscalls`]): for every call name and
/// every `k` in `points(n)` (all of `1..=n`, or a sample), `fresh()` restores the files, the
/// run is killed at the `k`th call ([`run_killed_at`] proves it) and `after_kill(name, k)`
/// checks the state; then, per name, one run past the last point must complete
/// ([`run_past_last`]) and `after_done(name)` checks the result. Returns the number of kills.
pub fn every_point<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    counts: &BTreeMap<String, usize>,
    points: impl Fn(usize) -> Vec<usize>,
    mut fresh: impl FnMut(),
    mut after_kill: impl FnMut(&str, usize),
    mut after_done: impl FnMut(&str),
) -> usize {
    let mut runs = 0;
    for (name, &n) in counts {
        for k in points(n) {
            fresh();
            run_killed_at(program, args, name, k);
            runs += 1;
            after_kill(name, k);
        }
        fresh();
        run_past_last(program, args, name, n);
        after_done(name);
    }
    runs
}

/// The error protocol over `counts` (from [`count_syscalls`]): for every call name and every
/// `k` in `points(n)`, `fresh()` restores the files and `errno` is returned by the `k`th call
/// ([`run_with_error`] proves it, tracing `also` beside it into `log`). The command must fail
/// with exactly one line on stderr: an injected error is reported, never swallowed, and never
/// ends in exit 0 (every sync a writer makes is the one that proves its writes durable). Then
/// `after_error(name, k)` checks the state. Returns the number of runs.
pub fn every_error_point<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    counts: &BTreeMap<String, usize>,
    points: impl Fn(usize) -> Vec<usize>,
    (also, errno, log): (&str, &str, &Path),
    mut fresh: impl FnMut(),
    mut after_error: impl FnMut(&str, usize),
) -> usize {
    let mut runs = 0;
    for (name, &n) in counts {
        for k in points(n) {
            fresh();
            let o = run_with_error(program, args, (name, also), k, errno, log);
            runs += 1;
            assert!(
                !o.status.success(),
                "{errno} at {name}#{k}: exit 0 after an injected error:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{errno} at {name}#{k}: one error line: {stderr}"
            );
            after_error(name, k);
        }
    }
    runs
}
