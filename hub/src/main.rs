//! The `hub` binary: parse arguments, run. Everything else lives in the library.

use clap::Parser;

/// mimalloc: per-request allocation churn (headers, bodies, log lines) cost ~9% of the proxy's
/// CPU under glibc malloc in the benchmark profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hub::run(hub::Cli::parse())
}
