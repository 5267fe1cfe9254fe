//! The `reactor-fabric` binary: parse the arguments, run the command, turn errors into exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // clap prints its own usage errors and exits 2 (SPEC §11 "2 usage").
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
