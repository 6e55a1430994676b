//! `vhdkit serve DISK`: an NBD server for the virtual disk of a chain, one thread per client,
//! until SIGINT or SIGTERM (then a final flush).

use crate::cli::ServeArgs;
use crate::output::CliError;
use crate::Outcome;

#[cfg(not(unix))]
pub fn run(_a: &ServeArgs) -> Result<Outcome, CliError> {
    Err(CliError::Lib(vhdkit::Error::InvalidArgument(
        "serve needs Unix sockets and signals (Linux, macOS, BSD)".into(),
    )))
}

#[cfg(unix)]
pub fn run(a: &ServeArgs) -> Result<Outcome, CliError> {
    unix::run(a)
}

#[cfg(unix)]
mod unix {
    use std::net::{SocketAddr, TcpListener};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::sync::Arc;

    use vhdkit::nbd::Export;
    use vhdkit::Chain;

    use super::*;
    use crate::cmd::chain_options;
    use crate::output;

    enum Listener {
        Unix(UnixListener),
        Tcp(TcpListener),
    }

    /// What to remove at shutdown: the socket made, and the folder made for it.
    #[derive(Default, Clone)]
    struct Cleanup {
        socket: Option<PathBuf>,
        dir: Option<PathBuf>,
    }

    impl Cleanup {
        fn run(&self) {
            if let Some(s) = &self.socket {
                let _ = std::fs::remove_file(s);
            }
            if let Some(d) = &self.dir {
                let _ = std::fs::remove_dir(d);
            }
        }
    }

    fn bad(msg: String) -> CliError {
        CliError::Lib(vhdkit::Error::InvalidArgument(msg))
    }

    fn io_err(what: &str, e: std::io::Error) -> CliError {
        CliError::Lib(vhdkit::Error::io(what, e))
    }

    pub fn run(a: &ServeArgs) -> Result<Outcome, CliError> {
        let opts = chain_options(&a.resolve)?;
        let export = if a.writable {
            Export::writable(&a.file, &opts, a.export_name.clone())?
        } else {
            let chain = Chain::open(&a.file, &opts)?;
            for link in &chain.report().links {
                for w in &link.warnings {
                    eprintln!("vhdkit: warning: {}: {w}", link.path.display());
                }
            }
            Export::read_only(chain.into_view(), a.export_name.clone())
        };
        let export = Arc::new(export);
        let activated = listenfd::ListenFd::from_env()
            .take_unix_listener(0)
            .map_err(|e| io_err("taking the socket passed by socket activation", e))?;
        let mut cleanup = Cleanup::default();
        let listener = match activated {
            Some(l) => Listener::Unix(l),
            None => {
                let (l, where_) = bind(a, &mut cleanup)?;
                announce(a, &where_)?;
                l
            }
        };
        on_signals(Arc::clone(&export), cleanup.clone())?;
        accept_loop(&listener, &export);
        // The loop only ends when accepting fails for good.
        cleanup.run();
        export.flush()?;
        Ok(Outcome::Ok)
    }

    /// Bind the socket asked for: a Unix socket (a new private folder when no path is given)
    /// or, with --listen, TCP. Returns the listener and the NBD URI.
    fn bind(a: &ServeArgs, cleanup: &mut Cleanup) -> Result<(Listener, String), CliError> {
        if let Some(spec) = &a.listen {
            let addr: SocketAddr = match spec.parse::<u16>() {
                Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
                Err(_) => spec
                    .parse()
                    .map_err(|_| bad(format!("--listen {spec}: not ADDR:PORT or PORT")))?,
            };
            let l = TcpListener::bind(addr).map_err(|e| io_err("binding the TCP socket", e))?;
            let addr = l.local_addr().unwrap_or(addr);
            return Ok((Listener::Tcp(l), format!("nbd://{addr}/{}", a.export_name)));
        }
        let path = match &a.socket {
            Some(p) => p.clone(),
            None => {
                let dir = std::env::temp_dir().join(format!("vhdkit-serve-{}", std::process::id()));
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| io_err("creating the socket folder", e))?;
                cleanup.dir = Some(dir.clone());
                dir.join("nbd.sock")
            }
        };
        let l = UnixListener::bind(&path).map_err(|e| {
            CliError::Lib(vhdkit::Error::io("binding the socket", e).with_path(&path))
        })?;
        cleanup.socket = Some(path.clone());
        let uri = format!("nbd+unix:///{}?socket={}", a.export_name, path.display());
        Ok((Listener::Unix(l), uri))
    }

    fn announce(a: &ServeArgs, uri: &str) -> Result<(), CliError> {
        let mode = if a.writable { "writable" } else { "read-only" };
        if a.json {
            output::print_json(&serde_json::json!({
                "file": a.file,
                "uri": uri,
                "writable": a.writable,
            }))?;
        } else if output::text_wanted() {
            println!("serving {} ({mode}) at {uri}", a.file.display());
        }
        Ok(())
    }

    /// SIGINT and SIGTERM: flush, remove the socket, exit (0, or 2 when the flush failed).
    fn on_signals(export: Arc<Export>, cleanup: Cleanup) -> Result<(), CliError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .map_err(|e| io_err("installing the signal handlers", e))?;
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                cleanup.run();
                let code = match export.flush() {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("vhdkit: error: final flush: {e}");
                        2
                    }
                };
                std::process::exit(code);
            }
        });
        Ok(())
    }

    /// One thread per client; a client's failure ends its thread only.
    fn accept_loop(listener: &Listener, export: &Arc<Export>) {
        let mut failures = 0u32;
        loop {
            let export = Arc::clone(export);
            let r = match listener {
                Listener::Unix(l) => l.accept().map(|(s, _)| {
                    std::thread::spawn(move || export.serve(s));
                }),
                Listener::Tcp(l) => l.accept().map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    std::thread::spawn(move || export.serve(s));
                }),
            };
            match r {
                Ok(()) => failures = 0,
                Err(e) => {
                    // Out of descriptors and the like pass; a listener that keeps failing ends.
                    eprintln!("vhdkit: warning: accepting a connection: {e}");
                    failures += 1;
                    if failures > 100 {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    }
}
