//! `weir-agent`: the file-system agent alone, a small binary for file
//! servers (the same as `weir agent`, without the host's runtime).

use clap::Parser;

/// `weir-agent [FLAGS] [status]`: see `weir agent --help`.
#[derive(Parser)]
#[command(
    name = "weir-agent",
    version,
    about = "Syncs directories into weir serve (or fustor-fusion) over the Fustor wire protocol"
)]
struct Cli {
    #[command(flatten)]
    args: weir_agent::AgentArgs,
}

fn main() {
    let cli = Cli::parse();
    let code =
        match weir_agent::cli::command(&cli.args, &mut std::io::stdout(), &mut std::io::stderr()) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
    std::process::exit(code);
}
