//! The `tern` binary: parses the command line and hands over to the library.

use clap::Parser;

/// jemalloc rather than glibc's malloc: see the workspace Cargo.toml for the measurements.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    tern::run(tern::cli::Cli::parse())
}
