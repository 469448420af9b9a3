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
            println!("usage: tern serve [--config FILE] [--listen ADDR:PORT] [--data-dir DIR]");
            std::process::ExitCode::SUCCESS
        }
        Some(Command::Serve(args)) => {
            let listen = args
                .listen
                .map_or("127.0.0.1:1883".to_string(), |a| a.to_string());
            let data = args
                .data_dir
                .map_or("./tern-data".into(), |d| d.display().to_string());
            println!("tern serve (planned): MQTT 3.1.1/5.0 on {listen}, data in {data}");
            println!("The broker core is not built yet: the codec (tern-codec) is in place.");
            std::process::ExitCode::SUCCESS
        }
    }
}
