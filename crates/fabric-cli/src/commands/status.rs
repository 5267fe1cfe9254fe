//! `reactor-fabric status`: is the server up (`GET /healthz`, no auth)? Exit 6 when it cannot be reached.

use crate::commands::Ctx;
use crate::error::CliError;
use crate::outln;
use crate::output::print_json;

pub async fn run(ctx: &Ctx) -> Result<(), CliError> {
    let health = ctx.client()?.health().await?;
    if ctx.output.is_json() {
        print_json(&health)
    } else {
        outln!("{} {}", health.status, health.version)
    }
}
