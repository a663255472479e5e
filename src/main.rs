//! The `imrouter` command. Parses flags into a `Config`, starts the router,
//! and waits for SIGINT or SIGTERM; everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use imrouter::client::blocking::{fresh_incarnation, Connection};
use imrouter::client::NodeConfig;
use imrouter::config::{Cli, Command, Config, LocateArgs};
use imrouter::{log, Router};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Locate(args) = &cli.command {
        return match locate(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                log!("error: {error}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Nodes(args) = &cli.command {
        return match nodes(args) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                log!("error: {error}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Cluster(args) = &cli.command {
        return match cluster(args) {
            Ok(text) => {
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                log!("error: {error}");
                ExitCode::from(2)
            }
        };
    }
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `imrouter cluster ...`: what to print.
#[cfg(feature = "cluster")]
fn cluster(args: &imrouter::config::ClusterArgs) -> Result<String, String> {
    imrouter::cluster::control::admin(&args.etcd, &args.cluster, &args.action)
}

#[cfg(not(feature = "cluster"))]
fn cluster(_: &imrouter::config::ClusterArgs) -> Result<String, String> {
    Err(
        "this imrouter was built without cluster support: build it with `--features cluster`"
            .into(),
    )
}

/// `imrouter nodes`: the admin port's /nodez, as a table or JSON.
fn nodes(args: &imrouter::config::NodesArgs) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    let addr = args
        .router
        .to_socket_addrs()
        .map_err(|error| format!("--router {}: {error}", args.router))?
        .next()
        .ok_or_else(|| format!("--router {}: no address", args.router))?;
    let path = if args.json {
        "/nodez"
    } else {
        "/nodez?format=text"
    };
    let timeout = std::time::Duration::from_millis(args.timeout_ms.max(1));
    match imrouter::admin::fetch(addr, path, timeout)? {
        (200, body) => Ok(body),
        (status, body) => Err(format!("{addr}{path}: HTTP {status}: {}", body.trim())),
    }
}

/// `imrouter locate`: prints the user's sessions; returns whether it has any.
fn locate(args: &LocateArgs) -> Result<bool, Box<dyn std::error::Error>> {
    let router = args.router_addr()?;
    let token = args.auth_token()?;
    let name = format!("imrouter-locate-{}", std::process::id());
    let timeout = std::time::Duration::from_millis(args.timeout_ms.max(1));
    let mut config = NodeConfig::new(name, fresh_incarnation());
    config.auth_token = token;
    let mut client = Connection::connect(router, config, timeout)
        .map_err(|error| format!("{router}: {error}"))?;
    let sessions = client.locate(&args.user)?;
    client.goodbye("done")?;
    if sessions.is_empty() {
        eprintln!("{} has no session", args.user);
    }
    for session in &sessions {
        println!("{}\t{}\t{}", session.node, session.device, session.platform);
    }
    Ok(!sessions.is_empty())
}

fn try_main(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::from_args(&args)?;
            // Block the stop signals before any thread starts, so that every
            // shard thread inherits the mask and only `sigwait` below sees
            // them.
            let signals = StopSignals::block()?;
            let router = Router::start(config)?;
            log!(
                "ready: listening on {}, {} shards on cpus {:?}, admin port {}",
                router.local_addr(),
                router.shard_count(),
                router.cpus(),
                router
                    .admin_addr()
                    .map_or("off".to_string(), |addr| addr.to_string())
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
        Command::Locate(_) | Command::Cluster(_) | Command::Nodes(_) => {
            unreachable!("handled in main")
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
