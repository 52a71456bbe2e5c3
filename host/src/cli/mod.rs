//! The `weir` command line: `serve` and `config check` (`serve.rs`: wiring,
//! signals, logs), `consume` (the client in [`crate::consume`]), and the
//! plugin author's and operator's `plugins inspect | validate | test`
//! (`plugins.rs`). [`run`] takes the arguments and the output streams so
//! that tests drive it in-process.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod plugins;
mod serve;

use plugins::{PluginsCommand, inspect, test, validate};
pub use serve::shutdown_signal;
use serve::{ServeArgs, config_check, serve};

/// Weir: a WebAssembly-pluggable event processing host.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host daemon.
    Serve(Box<ServeArgs>),
    /// Inspect, validate and try plugin components.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Subscribe to a key of a running host and print its events.
    Consume(crate::consume::ConsumeArgs),
    /// Sync a directory into a host (or fustor-fusion) over the Fustor wire
    /// protocol: snapshot, then realtime changes.
    Agent(crate::agent::AgentArgs),
    /// Check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Measure this machine: snapshot ingest to READY, the full tree,
    /// stats and memory per file of a `weir serve` it starts (and of
    /// fustor-fusion, with `--against-fustor`).
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a `weir.toml` (and the environment variables it names);
    /// exit 0 with a summary, or 1 with what is wrong.
    Check {
        /// The file.
        #[arg(long, env = "WEIR_CONFIG")]
        config: PathBuf,
    },
}

/// Runs the command line `args` (including the program name), writing to
/// `out` and `err`; returns the exit code.
pub fn run(
    args: impl IntoIterator<Item = String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = if e.use_stderr() {
                write!(err, "{e}")
            } else {
                write!(out, "{e}")
            };
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Plugins(PluginsCommand::Inspect { file, json }) => inspect(&file, json, out),
        Command::Plugins(PluginsCommand::Validate { file }) => validate(&file, out),
        Command::Plugins(PluginsCommand::Test(args)) => test(&args, out),
        Command::Consume(args) => crate::consume::consume(&args, out, err),
        Command::Agent(args) => crate::agent::cli::command(&args, out, err),
        Command::Config(ConfigCommand::Check { config }) => config_check(&config, out),
        Command::Bench(args) => std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|weir| crate::bench::bench(&args, &weir, out)),
    };
    match result {
        Ok(code) => code,
        // A closed pipe (`weir plugins test ... | head`) is a normal end.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            0
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e:#}");
            1
        }
    }
}
