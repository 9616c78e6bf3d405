//! `crawler` binary: everything is in the library's [`crawler::cli`].

use std::process::ExitCode;

/// jemalloc: far less CPU per request than glibc malloc under many concurrent clients.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    crawler::cli::main()
}
