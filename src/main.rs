//! The `imrouter` command. Parses flags into a `Config`, starts the router,
//! and waits for SIGINT or SIGTERM; everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use imrouter::config::{Cli, Command, Config};
use imrouter::{log, Router};

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = Config::from_args(&args)?;
            // Block the stop signals before any thread starts, so that every
            // shard thread inherits the mask and only `sigwait` below sees
            // them.
            let signals = StopSignals::block()?;
            let router = Router::start(config)?;
            log!(
                "ready: listening on {}, {} shards on cpus {:?}",
                router.local_addr(),
                router.shard_count(),
                router.cpus()
            );
            let signal = loop {
                match signals.wait()? {
                    "SIGUSR1" => {
                        for (shard, metrics) in router.shard_metrics().iter().enumerate() {
                            log!("shard {shard}: {metrics}");
                        }
                    }
                    stop => break stop,
                }
            };
            log!("{signal} received, shutting down");
            let totals = router.metrics();
            router.shutdown();
            log!("stopped: {totals}");
            Ok(())
        }
    }
}

/// SIGINT and SIGTERM (stop) and SIGUSR1 (print each shard's counters),
/// blocked and then waited for synchronously.
struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    fn block() -> std::io::Result<Self> {
        // SAFETY: plain libc calls on a sigset we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            let result = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if result != 0 {
                return Err(std::io::Error::from_raw_os_error(result));
            }
            Ok(StopSignals { set })
        }
    }

    fn wait(&self) -> std::io::Result<&'static str> {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` was initialised in `block`.
        let result = unsafe { libc::sigwait(&self.set, &mut signal) };
        if result != 0 {
            return Err(std::io::Error::from_raw_os_error(result));
        }
        Ok(match signal {
            libc::SIGINT => "SIGINT",
            libc::SIGUSR1 => "SIGUSR1",
            _ => "SIGTERM",
        })
    }
}
