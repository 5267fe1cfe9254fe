//! `reactor-fabric auth login | logout | whoami`.

use std::io::{BufRead, IsTerminal};

use fabric_core::api::LoginRequest;
use serde_json::json;

use crate::client::{ClientError, FabricClient};
use crate::commands::Ctx;
use crate::config::{ENV_TOKEN, Login, TokenSource};
use crate::error::CliError;
use crate::outln;
use crate::output::print_json;

#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Log in and store the token in the config file (mode 0600)
    Login(LoginArgs),
    /// Revoke the stored token and forget it
    Logout,
    /// Show the user, tenant and scopes of the current token
    Whoami,
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The user to log in as (the first admin is `admin`)
    #[arg(short, long)]
    pub username: String,
    /// Password; else read from stdin when it is not a terminal, else prompted for
    #[arg(long)]
    pub password: Option<String>,
}

pub async fn run(ctx: &Ctx, cmd: AuthCommand) -> Result<(), CliError> {
    match cmd {
        AuthCommand::Login(args) => login(ctx, args).await,
        AuthCommand::Logout => logout(ctx).await,
        AuthCommand::Whoami => whoami(ctx).await,
    }
}

async fn login(ctx: &Ctx, args: LoginArgs) -> Result<(), CliError> {
    let password = read_password(&args.username, args.password)?;
    let client = FabricClient::new(&ctx.settings.url, None)?;
    let issued = client
        .login(&LoginRequest {
            username: args.username,
            password,
        })
        .await?;

    let file = ctx.settings.file_with_login(Login {
        url: Some(ctx.settings.url.clone()),
        token: Some(issued.token.clone()),
        user: Some(issued.user.clone()),
        instance: None,
    });
    file.save(&ctx.settings.config_path)?;

    if matches!(ctx.settings.token, TokenSource::Env(_)) {
        eprintln!("note: {ENV_TOKEN} is set and takes precedence over this login");
    }
    if ctx.output.is_json() {
        // The token stays in the config file; it is not echoed to stdout.
        print_json(&json!({
            "url": ctx.settings.url,
            "user": issued.user,
            "tenant": issued.tenant,
            "scopes": issued.scopes,
            "expires_at": issued.expires_at,
        }))
    } else {
        outln!("logged in as {}", issued.user)
    }
}

/// `--password`, else one line of stdin when it is piped, else an interactive prompt.
fn read_password(username: &str, flag: Option<String>) -> Result<String, CliError> {
    if let Some(password) = flag {
        return Ok(password);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return rpassword::prompt_password(format!("Password for {username}: ")).map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "cannot read the password from the terminal: {e}"
            ))
        });
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line).map_err(|e| {
        CliError::Other(anyhow::anyhow!("cannot read the password from stdin: {e}"))
    })?;
    if read == 0 {
        return Err(CliError::Usage(
            "no password given: pass --password, pipe it on stdin, or run in a terminal to be prompted".into(),
        ));
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned())
}

async fn logout(ctx: &Ctx) -> Result<(), CliError> {
    let settings = &ctx.settings;
    let Some(token) = settings.stored_token() else {
        let note = match &settings.token {
            TokenSource::Missing {
                stored_for: Some(other),
            } => {
                format!(
                    "not logged in to {} (the stored login is for {other})",
                    settings.url
                )
            }
            _ => "not logged in".to_owned(),
        };
        return if ctx.output.is_json() {
            print_json(&json!({ "url": settings.url, "logged_out": true, "revoked": false }))
        } else {
            outln!("{note}")
        };
    };

    let revoked = match FabricClient::new(&settings.url, Some(token.to_owned()))?
        .logout()
        .await
    {
        Ok(()) => true,
        // Already expired or revoked: the goal is reached.
        Err(ClientError::Api { status: 401, .. }) => false,
        // Forget it locally anyway (that is what was asked), but say the server may still honour it.
        Err(e) => {
            eprintln!(
                "warning: the token could not be revoked on the server and stays valid until it expires: {e}"
            );
            false
        }
    };

    let file = settings.file_with_login(Login {
        token: None,
        user: None,
        ..settings.login.clone()
    });
    file.save(&settings.config_path)?;

    if ctx.output.is_json() {
        print_json(&json!({ "url": settings.url, "logged_out": true, "revoked": revoked }))
    } else {
        outln!("logged out")
    }
}

async fn whoami(ctx: &Ctx) -> Result<(), CliError> {
    let me = ctx.authed_client()?.whoami().await?;
    if ctx.output.is_json() {
        return print_json(&me);
    }
    let scopes: Vec<&str> = me.scopes.iter().map(|s| s.as_str()).collect();
    outln!("user={}", me.user)?;
    outln!("tenant={}", me.tenant)?;
    outln!("kind={}", me.kind.as_str())?;
    if let Some(agent) = &me.agent {
        outln!("agent={agent}")?;
    }
    outln!("scopes={}", scopes.join(","))
}
