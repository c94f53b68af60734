//! The `hub` binary: parse arguments, run. Everything else lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    hub::run(hub::Cli::parse())
}
