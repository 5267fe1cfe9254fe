//! `reactor-fabric version`: no server needed.

use crate::error::CliError;
use crate::outln;
use crate::output::{OutputFormat, print_json};

pub fn run(output: OutputFormat) -> Result<(), CliError> {
    if output.is_json() {
        print_json(&serde_json::json!({ "version": fabric_core::VERSION }))
    } else {
        outln!("reactor-fabric {}", fabric_core::VERSION)
    }
}
