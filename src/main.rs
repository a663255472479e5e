//! The `imrouter` command. Reads the settings (file, environment, flags)
//! into a `Config`, starts the router, and waits for signals: SIGINT or
//! SIGTERM stop it, SIGHUP reloads the settings, SIGUSR1 prints the
//! counters. Everything else is in the library.

use std::ffi::OsString;
use std::process::ExitCode;

use imrouter::client::blocking::{fresh_incarnation, Connection};
use imrouter::client::NodeConfig;
use imrouter::config::{Cli, Command, Config, LocateArgs};
use imrouter::Router;

/// An error of a command: to the log once it is installed (`serve`),
/// else a plain line on standard error.
macro_rules! fail {
    ($($arg:tt)*) => {
        if imrouter::logging::is_installed() {
            tracing::error!($($arg)*)
        } else {
            eprintln!("imrouter: {}", format_args!($($arg)*))
        }
    };
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match imrouter::config::file::parse(&argv) {
        Ok(cli) => cli,
        Err(Ok(clap_answer)) => clap_answer.exit(),
        Err(Err(error)) => {
            fail!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::CheckConfig(args) = &cli.command {
        return match Config::from_args(args) {
            Ok(config) => {
                println!("{config:#?}");
                println!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(error) => {
                fail!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Locate(args) = &cli.command {
        return match locate(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(error) => {
                fail!("error: {error}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Drain(args) = &cli.command {
        return printed(drain(args));
    }
    if let Command::Nodes(args) = &cli.command {
        return printed(nodes(args));
    }
    if let Command::Cluster(args) = &cli.command {
        return printed(cluster(args));
    }
    match try_main(cli, &argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            fail!("error: {error}");
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

/// A command's answer on standard output (ending with a newline), or its
/// error: exit status 0, or 2.
fn printed(answer: Result<String, String>) -> ExitCode {
    match answer {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            fail!("error: {error}");
            ExitCode::from(2)
        }
    }
}

/// `imrouter drain`: `POST /drain` on the router's admin port.
fn drain(args: &imrouter::config::DrainArgs) -> Result<String, String> {
    let addr = admin_addr(&args.router)?;
    let timeout = std::time::Duration::from_millis(args.timeout_ms.max(1));
    match imrouter::admin::request(addr, "POST", "/drain", timeout)? {
        (202, body) => Ok(body),
        (status, body) => Err(format!("{addr}/drain: HTTP {status}: {}", body.trim())),
    }
}

fn admin_addr(router: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    router
        .to_socket_addrs()
        .map_err(|error| format!("--router {router}: {error}"))?
        .next()
        .ok_or_else(|| format!("--router {router}: no address"))
}

/// `imrouter nodes`: the admin port's /nodez, as a table or JSON.
fn nodes(args: &imrouter::config::NodesArgs) -> Result<String, String> {
    let addr = admin_addr(&args.router)?;
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
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("imrouter-locate-{}", std::process::id()));
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

fn try_main(cli: Cli, argv: &[OsString]) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::from_args(&args)?;
            imrouter::logging::init(&config.log_level, config.log_format)?;
            // Block the stop signals before any thread starts, so that every
            // shard thread inherits the mask and only `sigwait` below sees
            // them.
            let signals = StopSignals::block()?;
            let mut router = Router::start(config)?;
            tracing::info!(
                "ready: listening on {}, {} shards on cpus {:?}, admin port {}",
                router.local_addr(),
                router.shard_count(),
                router.cpus(),
                router
                    .admin_addr()
                    .map_or("off".to_string(), |addr| addr.to_string())
            );
            // SIGTERM, SIGINT, SIGUSR2 and `imrouter drain` drain first; a
            // second SIGTERM or SIGINT during the drain stops at once.
            let mut drain: Option<imrouter::server::Drain> = None;
            loop {
                let signal = signals.wait(DRAIN_POLL)?;
                match signal {
                    Some("SIGUSR1") => {
                        for (shard, metrics) in router.shard_metrics().iter().enumerate() {
                            tracing::info!("shard {shard}: {metrics}");
                        }
                    }
                    Some("SIGHUP") => reload(&mut router, argv),
                    Some(stop @ ("SIGTERM" | "SIGINT")) if drain.is_some() => {
                        tracing::warn!("{stop} received while draining: stopping now");
                        break;
                    }
                    Some(signal) if drain.is_some() => {
                        tracing::info!("{signal} received: already draining");
                    }
                    Some(signal) => {
                        tracing::info!("{signal} received: draining, then stopping");
                        drain = Some(begin_drain(&mut router));
                    }
                    None if drain.is_none() && router.drain_requested() => {
                        tracing::info!(
                            "drain asked for on the admin port: draining, then stopping"
                        );
                        drain = Some(begin_drain(&mut router));
                    }
                    None => {}
                }
                if let Some(drain) = &mut drain {
                    if router.drain_step(drain) {
                        break;
                    }
                }
            }
            let totals = router.metrics();
            router.shutdown();
            tracing::info!("stopped: {totals}");
            Ok(())
        }
        Command::Locate(_)
        | Command::Cluster(_)
        | Command::Nodes(_)
        | Command::Drain(_)
        | Command::CheckConfig(_) => {
            unreachable!("handled in main")
        }
    }
}

/// How often the signal loop looks at a drain's progress.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

fn begin_drain(router: &mut imrouter::RunningRouter) -> imrouter::server::Drain {
    let (window, timeout) = (
        router.config().drain_window,
        router.config().shutdown_timeout,
    );
    router.begin_drain(window, timeout)
}

/// SIGHUP: reads the settings again (file, environment, the same flags)
/// and applies what may change while running; a bad file changes nothing.
fn reload(router: &mut imrouter::RunningRouter, argv: &[OsString]) {
    let config = match imrouter::config::file::parse(argv) {
        Ok(Cli {
            command: Command::Serve(args),
        }) => Config::from_args(&args).map_err(|error| error.to_string()),
        Ok(_) => Err("not `serve`".to_string()),
        Err(Ok(error)) => Err(error.to_string()),
        Err(Err(error)) => Err(error.to_string()),
    };
    match config {
        Err(error) => tracing::warn!(
            "SIGHUP: the settings were not reloaded, the ones in force stay: {}",
            error.trim()
        ),
        Ok(config) => {
            let reload = router.reconfigure(&config);
            tracing::info!(
                applied = reload.applied.join(","),
                "SIGHUP: settings reloaded{}",
                if reload.applied.is_empty() {
                    " (nothing that can change while running changed)".to_string()
                } else {
                    format!(": {} now in force", reload.applied.join(", "))
                }
            );
            if !reload.restart_needed.is_empty() {
                tracing::warn!(
                    "SIGHUP: restart needed for: {} (the old values stay in force)",
                    reload.restart_needed.join(", ")
                );
            }
        }
    }
}

/// SIGINT, SIGTERM and SIGUSR2 (drain and stop), SIGUSR1 (print each
/// shard's counters) and SIGHUP (reload), blocked and then waited for
/// synchronously.
struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    fn block() -> std::io::Result<Self> {
        // SAFETY: plain libc calls on a sigset we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGHUP,
            ] {
                libc::sigaddset(&mut set, signal);
            }
            let result = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if result != 0 {
                return Err(std::io::Error::from_raw_os_error(result));
            }
            Ok(StopSignals { set })
        }
    }

    /// The next signal, or `None` after `timeout` without one.
    fn wait(&self, timeout: std::time::Duration) -> std::io::Result<Option<&'static str>> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `set` was initialised in `block`; a null info is allowed.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
        if signal < 0 {
            let error = std::io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(error),
            };
        }
        Ok(Some(match signal {
            libc::SIGINT => "SIGINT",
            libc::SIGUSR1 => "SIGUSR1",
            libc::SIGUSR2 => "SIGUSR2",
            libc::SIGHUP => "SIGHUP",
            _ => "SIGTERM",
        }))
    }
}
