//! The `tresor` binary: the CLI (`cli/`) and `tresor server` (`server/`).
#![forbid(unsafe_code)]

mod cli;
mod server;

// The server allocates per request (JSON, envelopes); mimalloc measured
// faster than the system allocator on the hot paths of bench/run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
