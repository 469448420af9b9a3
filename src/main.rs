//! The `tern` binary: parses the command line and hands over to the library.

use clap::Parser;
use tern::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => {
            println!(
                "tern {}: an MQTT broker for instant messaging",
                env!("CARGO_PKG_VERSION")
            );
            println!(
                "usage: tern serve [--config FILE] [--listen ADDR:PORT] [--data-dir DIR] [--log-level LEVEL]"
            );
            println!("       tern --help for every command");
            std::process::ExitCode::SUCCESS
        }
        Some(Command::Serve(args)) => tern::serve_command(&args),
    }
}
