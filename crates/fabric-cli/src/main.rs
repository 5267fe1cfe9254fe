//! The `reactor-fabric` binary: parse the arguments, run the command, turn errors into exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The sandbox helper runs before anything else: no argument parsing, no
    // runtime, no allocations it does not need (see fabric_runtime::sandbox).
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == fabric_cli::SANDBOX_HELPER_ARG)
    {
        fabric_runtime::sandbox::helper_main(args.collect())
    }
    // clap prints its own usage errors and exits 2 (REQUIREMENTS §11 "2 usage").
    let cli = fabric_cli::Cli::parse();
    match fabric_cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if !err.is_silent() {
                eprintln!("Error: {err}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}
