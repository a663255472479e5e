//! Where `imrouter serve` takes its settings from: a TOML file
//! (`--config`), the environment (`IMROUTER_*`) and flags, in rising
//! precedence.
//!
//! Every flag of `serve` is a key of the file (its long name, with `-` or
//! `_`) and an environment variable (`IMROUTER_` and the name in capitals
//! with `_`): `--max-frame-bytes 65536`, `max-frame-bytes = 65536`,
//! `IMROUTER_MAX_FRAME_BYTES=65536`. The file's values become the flags'
//! defaults and the variables are read by clap itself, so clap's own
//! precedence (flag, then variable, then default) gives file < environment
//! < flags, and its messages name what is wrong. A key the router does
//! not know is an error, not a silent no-op.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, FromArgMatches};

use super::{Cli, ConfigError};

/// The subcommands that take `serve`'s settings.
const SERVE_LIKE: [&str; 2] = ["serve", "check-config"];

/// Flags that are not settings (never read from a file or variable).
const NOT_SETTINGS: [&str; 3] = ["config", "help", "version"];

/// The environment variable of a flag: `max-frame-bytes` ->
/// `IMROUTER_MAX_FRAME_BYTES`.
pub fn env_name(long: &str) -> String {
    format!("IMROUTER_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// A TOML file's settings: flag name -> value as a flag would give it
/// (arrays joined with commas).
pub fn load(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::new(format!("--config {}: {error}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|error| ConfigError::new(format!("--config {}: {error}", path.display())))?;
    let mut settings = BTreeMap::new();
    for (key, value) in table {
        let text = match value_text(&value) {
            Some(text) => text,
            None => {
                return Err(ConfigError::new(format!(
                    "--config {}: {key}: a string, number, boolean or list of them",
                    path.display()
                )))
            }
        };
        settings.insert(key.replace('_', "-"), text);
    }
    Ok(settings)
}

fn value_text(value: &toml::Value) -> Option<String> {
    Some(match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => number.to_string(),
        toml::Value::Boolean(flag) => flag.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(value_text)
            .collect::<Option<Vec<_>>>()?
            .join(","),
        _ => return None,
    })
}

/// The config file named by `argv` (`--config PATH` or `--config=PATH`
/// after `serve` or `check-config`) or by `IMROUTER_CONFIG`.
pub fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let args: Vec<&std::ffi::OsStr> = argv.iter().map(OsString::as_os_str).collect();
    let after = args
        .iter()
        .position(|arg| SERVE_LIKE.iter().any(|name| *arg == *name))?;
    let mut rest = args[after + 1..].iter();
    while let Some(arg) = rest.next() {
        if *arg == "--" {
            break;
        }
        if *arg == "--config" {
            return rest.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|arg| arg.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("IMROUTER_CONFIG").map(PathBuf::from)
}

/// Parses the command line with the file's settings as defaults and the
/// `IMROUTER_*` variables, for `serve` and `check-config`. `Err(Ok)`:
/// clap's own answer (help, version, a bad flag), to print and exit with.
pub fn parse(argv: &[OsString]) -> Result<Cli, Result<clap::Error, ConfigError>> {
    let settings = match config_path(argv) {
        Some(path) => load(&path).map_err(Err)?,
        None => BTreeMap::new(),
    };
    let command = command_with(&settings).map_err(Err)?;
    let matches = command.try_get_matches_from(argv).map_err(Ok)?;
    Cli::from_arg_matches(&matches).map_err(Ok)
}

/// `Cli`'s command with every `serve`-like setting's variable and the
/// file's values as defaults; an unknown key is an error.
fn command_with(settings: &BTreeMap<String, String>) -> Result<clap::Command, ConfigError> {
    let mut command = Cli::command();
    let known: Vec<String> = command
        .find_subcommand("serve")
        .expect("a serve command")
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !NOT_SETTINGS.contains(long))
        .map(str::to_string)
        .collect();
    if let Some(unknown) = settings.keys().find(|key| !known.contains(key)) {
        return Err(ConfigError::new(format!(
            "--config: no setting {unknown:?}; the settings are the flags of `imrouter serve`: {}",
            known.join(", ")
        )));
    }
    for name in SERVE_LIKE {
        command = command.mut_subcommand(name, |sub| {
            sub.mut_args(|arg| {
                let Some(long) = arg.get_long().map(str::to_string) else {
                    return arg;
                };
                if NOT_SETTINGS.contains(&long.as_str()) {
                    return arg;
                }
                let arg = arg.env(env_name(&long));
                match settings.get(&long) {
                    Some(value) => arg.default_value(value.clone()),
                    None => arg,
                }
            })
        });
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn serve_args(cli: Cli) -> crate::config::ServeArgs {
        match cli.command {
            Command::Serve(args) | Command::CheckConfig(args) => *args,
            _ => panic!("not serve"),
        }
    }

    #[test]
    fn the_file_gives_defaults_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("imrouter-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.toml");
        std::fs::write(
            &path,
            "max-frame-bytes = 65536\nheartbeat_ms = 2000\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let path_arg = path.to_str().unwrap();
        let args = serve_args(
            parse(&argv(&[
                "imrouter",
                "serve",
                "--config",
                path_arg,
                "--heartbeat-ms",
                "3000",
            ]))
            .unwrap(),
        );
        assert_eq!(args.max_frame_bytes, 65536);
        assert_eq!(args.heartbeat_ms, 3000);
        assert_eq!(args.listen, "127.0.0.1:9000");
        assert_eq!(
            config_path(&argv(&[
                "imrouter",
                "check-config",
                &format!("--config={path_arg}")
            ])),
            Some(path.clone())
        );

        std::fs::write(&path, "max-frame-byte = 1\n").unwrap();
        let error = parse(&argv(&["imrouter", "serve", "--config", path_arg])).unwrap_err();
        assert!(error.unwrap_err().to_string().contains("max-frame-byte"));
        std::fs::write(&path, "listen = [\n").unwrap();
        assert!(parse(&argv(&["imrouter", "serve", "--config", path_arg])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_setting_has_a_variable() {
        assert_eq!(env_name("max-frame-bytes"), "IMROUTER_MAX_FRAME_BYTES");
        let command = command_with(&BTreeMap::new()).unwrap();
        let serve = command.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_SETTINGS.contains(&long) {
                continue;
            }
            assert_eq!(
                arg.get_env().and_then(|env| env.to_str()),
                Some(env_name(long).as_str()),
                "{long}"
            );
        }
    }
}
