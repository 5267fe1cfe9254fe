//! `reactor-fabric tenant | user | token`: who may use the fabric (REQUIREMENTS §12).

use std::io::{BufRead, IsTerminal};

use fabric_core::api::{
    CreateTenantRequest, CreateTokenRequest, CreateUserRequest, SetPasswordRequest,
    UpdateTenantRequest, UpdateUserRequest, UserView,
};
use fabric_core::{Role, Scope, Tenant, TenantId};

use crate::commands::Ctx;
use crate::commands::task::parse_duration;
use crate::error::CliError;
use crate::outln;
use crate::output::{print_json, short_time, table, write_text};

#[derive(Debug, clap::Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (admins)
    Create {
        #[arg(value_name = "NAME")]
        name: TenantId,
    },
    /// List tenants (an admin sees every tenant, anyone else their own)
    #[command(visible_alias = "ls")]
    List,
    /// Disable a tenant: its users cannot log in and their tokens are revoked
    Disable {
        #[arg(value_name = "NAME")]
        name: TenantId,
    },
    /// Enable a disabled tenant
    Enable {
        #[arg(value_name = "NAME")]
        name: TenantId,
    },
    /// Delete a tenant that has no users left
    #[command(visible_alias = "delete")]
    Rm {
        #[arg(value_name = "NAME")]
        name: TenantId,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user; prints a generated one-time password unless --password-stdin
    Create(CreateUserArgs),
    /// List the users of your tenant (an admin: of every tenant)
    #[command(visible_alias = "ls")]
    List {
        /// Only this tenant's users
        #[arg(long, value_name = "TENANT")]
        tenant: Option<TenantId>,
    },
    /// Change your own password (asks for the current one), or reset a user's as its admin
    Passwd(PasswdArgs),
    /// Change a user's role (revokes its tokens)
    SetRole {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "ROLE", value_parser = parse_role)]
        role: Role,
    },
    /// Set a user's own rate limits (0: back to the server's --rate-limit-rps / --llm-tokens-per-minute)
    SetLimits {
        #[arg(value_name = "NAME")]
        name: String,
        /// API requests per second
        #[arg(long, value_name = "N")]
        rps: Option<u32>,
        /// LLM tokens per minute
        #[arg(long, value_name = "N")]
        llm_tokens_per_minute: Option<u64>,
    },
    /// Disable a user: it cannot log in and its tokens are revoked
    Disable {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Enable a disabled user
    Enable {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Delete a user and its tokens
    #[command(visible_alias = "delete")]
    Rm {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateUserArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The user's tenant [default: yours]
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<TenantId>,
    /// admin (every tenant), tenant-admin, operator or viewer
    #[arg(long, value_name = "ROLE", value_parser = parse_role)]
    pub role: Role,
    /// Read the password from the first line of stdin instead of generating one
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, clap::Args)]
pub struct PasswdArgs {
    /// The user [default: you]
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Read the new password from stdin (your own: the current password on
    /// the first line, the new one on the second); else prompted, or, for
    /// another user, generated and printed once
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token for scripts; the secret is shown once
    Create(CreateTokenArgs),
    /// List your tokens (never their secrets)
    #[command(visible_alias = "ls")]
    List {
        /// Another user's tokens (one you manage)
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
    /// Revoke a token by its id or its name; takes effect on the next request
    #[command(visible_alias = "rm")]
    Revoke {
        #[arg(value_name = "ID_OR_NAME")]
        token: String,
        /// A token of another user (one you manage)
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateTokenArgs {
    /// A name to find it by in `token list` and to revoke it by
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// What it may do (repeatable) [default: everything you may]
    #[arg(long = "scope", value_name = "SCOPE", value_parser = parse_scope)]
    pub scopes: Vec<Scope>,
    /// How long it lives: e.g. 30d, 12h, up to 365d [default: 30d]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires: Option<std::time::Duration>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

fn parse_scope(text: &str) -> Result<Scope, String> {
    text.parse()
}

pub async fn run_tenant(ctx: &Ctx, cmd: TenantCommand) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let (tenant, done) = match cmd {
        TenantCommand::List => {
            let list = client.list_tenants().await?;
            if ctx.output.is_json() {
                return print_json(&list);
            }
            return print_tenants(&list.tenants);
        }
        TenantCommand::Create { name } => (
            client.create_tenant(&CreateTenantRequest { name }).await?,
            "created",
        ),
        TenantCommand::Disable { name } => (
            client
                .update_tenant(
                    &name,
                    &UpdateTenantRequest {
                        disabled: Some(true),
                    },
                )
                .await?,
            "disabled",
        ),
        TenantCommand::Enable { name } => (
            client
                .update_tenant(
                    &name,
                    &UpdateTenantRequest {
                        disabled: Some(false),
                    },
                )
                .await?,
            "enabled",
        ),
        TenantCommand::Rm { name } => {
            client.delete_tenant(&name).await?;
            return if ctx.output.is_json() {
                print_json(&serde_json::json!({ "name": name, "deleted": true }))
            } else {
                outln!("deleted tenant {name}")
            };
        }
    };
    if ctx.output.is_json() {
        print_json(&tenant)
    } else {
        outln!("{done} tenant {}", tenant.name)
    }
}

fn print_tenants(tenants: &[Tenant]) -> Result<(), CliError> {
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.name.to_string(),
                status(t.disabled).to_owned(),
                short_time(t.created_at),
            ]
        })
        .collect();
    write_text(&table(&["NAME", "STATUS", "CREATED"], &rows))
}

fn status(disabled: bool) -> &'static str {
    if disabled { "disabled" } else { "active" }
}

pub async fn run_user(ctx: &Ctx, cmd: UserCommand) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let (user, done) = match cmd {
        UserCommand::Create(args) => {
            let password = if args.password_stdin {
                Some(read_stdin_lines(1)?.remove(0))
            } else {
                None
            };
            let created = client
                .create_user(&CreateUserRequest {
                    name: args.name,
                    tenant: args.tenant,
                    role: args.role,
                    password,
                })
                .await?;
            if ctx.output.is_json() {
                return print_json(&created);
            }
            let u = &created.user;
            outln!(
                "created user {} (tenant {}, role {})",
                u.name,
                u.tenant,
                u.role
            )?;
            if let Some(password) = &created.password {
                outln!("password: {password}")?;
                eprintln!(
                    "note: this password is shown only now; the user can change it with 'reactor-fabric user passwd'"
                );
            }
            return Ok(());
        }
        UserCommand::List { tenant } => {
            let list = client.list_users(tenant.as_ref()).await?;
            if ctx.output.is_json() {
                return print_json(&list);
            }
            return print_users(&list.users);
        }
        UserCommand::Passwd(args) => return passwd(ctx, args).await,
        UserCommand::SetRole { name, role } => (
            client
                .update_user(
                    &name,
                    &UpdateUserRequest {
                        role: Some(role),
                        ..UpdateUserRequest::default()
                    },
                )
                .await?,
            "changed the role of",
        ),
        UserCommand::SetLimits {
            name,
            rps,
            llm_tokens_per_minute,
        } => {
            if rps.is_none() && llm_tokens_per_minute.is_none() {
                return Err(CliError::Usage(
                    "nothing to set: pass --rps and/or --llm-tokens-per-minute".to_owned(),
                ));
            }
            let user = client
                .update_user(
                    &name,
                    &UpdateUserRequest {
                        rate_limit_rps: rps,
                        llm_tokens_per_minute,
                        ..UpdateUserRequest::default()
                    },
                )
                .await?;
            if ctx.output.is_json() {
                return print_json(&user);
            }
            let show = |v: Option<String>| v.unwrap_or_else(|| "server default".to_owned());
            return outln!(
                "limits of {}: {} requests/s, {} LLM tokens/min",
                user.name,
                show(user.rate_limit_rps.map(|v| v.to_string())),
                show(user.llm_tokens_per_minute.map(|v| v.to_string()))
            );
        }
        UserCommand::Disable { name } => (
            client
                .update_user(
                    &name,
                    &UpdateUserRequest {
                        disabled: Some(true),
                        ..UpdateUserRequest::default()
                    },
                )
                .await?,
            "disabled",
        ),
        UserCommand::Enable { name } => (
            client
                .update_user(
                    &name,
                    &UpdateUserRequest {
                        disabled: Some(false),
                        ..UpdateUserRequest::default()
                    },
                )
                .await?,
            "enabled",
        ),
        UserCommand::Rm { name } => {
            client.delete_user(&name).await?;
            return if ctx.output.is_json() {
                print_json(&serde_json::json!({ "name": name, "deleted": true }))
            } else {
                outln!("deleted user {name} and its tokens")
            };
        }
    };
    if ctx.output.is_json() {
        print_json(&user)
    } else {
        outln!("{done} user {} (role {})", user.name, user.role)
    }
}

fn print_users(users: &[UserView]) -> Result<(), CliError> {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.tenant.to_string(),
                u.role.to_string(),
                status(u.disabled).to_owned(),
                short_time(u.created_at),
            ]
        })
        .collect();
    write_text(&table(
        &["NAME", "TENANT", "ROLE", "STATUS", "CREATED"],
        &rows,
    ))
}

async fn passwd(ctx: &Ctx, args: PasswdArgs) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let me = client.whoami().await?.user;
    let name = args.name.unwrap_or_else(|| me.clone());
    let req = if name == me {
        let (current, new) = if args.password_stdin {
            let mut lines = read_stdin_lines(2)?;
            let new = lines.remove(1);
            (lines.remove(0), new)
        } else {
            (prompt("Current password: ")?, prompt_new_password()?)
        };
        SetPasswordRequest {
            password: Some(new),
            current_password: Some(current),
        }
    } else {
        SetPasswordRequest {
            password: if args.password_stdin {
                Some(read_stdin_lines(1)?.remove(0))
            } else {
                None
            },
            current_password: None,
        }
    };
    let changed = client.set_password(&name, &req).await?;
    if ctx.output.is_json() {
        return print_json(&changed);
    }
    outln!("changed the password of {name}; its other tokens are revoked")?;
    if let Some(password) = changed.password {
        outln!("password: {password}")?;
        eprintln!("note: this password is shown only now");
    }
    Ok(())
}

/// `n` lines of piped stdin (without their line ends).
fn read_stdin_lines(n: usize) -> Result<Vec<String>, CliError> {
    let stdin = std::io::stdin();
    let mut lines = Vec::with_capacity(n);
    for _ in 0..n {
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line).map_err(|e| {
            CliError::Other(anyhow::anyhow!("cannot read the password from stdin: {e}"))
        })?;
        if read == 0 {
            return Err(CliError::Usage(format!(
                "--password-stdin expects {n} line(s) on stdin and got {}",
                lines.len()
            )));
        }
        let trimmed = line.strip_suffix('\n').unwrap_or(&line);
        lines.push(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned());
    }
    Ok(lines)
}

fn prompt(label: &str) -> Result<String, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "stdin is not a terminal: pass the passwords with --password-stdin".to_owned(),
        ));
    }
    rpassword::prompt_password(label).map_err(|e| {
        CliError::Other(anyhow::anyhow!(
            "cannot read the password from the terminal: {e}"
        ))
    })
}

fn prompt_new_password() -> Result<String, CliError> {
    let first = prompt("New password: ")?;
    if prompt("New password again: ")? != first {
        return Err(CliError::Usage(
            "the two new passwords differ; nothing was changed".to_owned(),
        ));
    }
    Ok(first)
}

pub async fn run_token(ctx: &Ctx, cmd: TokenCommand) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    match cmd {
        TokenCommand::Create(args) => {
            let issued = client
                .create_token(&CreateTokenRequest {
                    name: Some(args.name),
                    scopes: (!args.scopes.is_empty()).then_some(args.scopes),
                    ttl_seconds: args.expires.map(|d| d.as_secs().max(1)),
                    agent: None,
                })
                .await?;
            if ctx.output.is_json() {
                return print_json(&issued);
            }
            let scopes: Vec<&str> = issued.scopes.iter().map(|s| s.as_str()).collect();
            outln!("{}", issued.token)?;
            eprintln!(
                "token {} (id {}, scopes {}, expires {}); this is the only time it is shown",
                issued.name.as_deref().unwrap_or("-"),
                issued.id,
                scopes.join(","),
                issued.expires_at.map_or("never".to_owned(), short_time),
            );
            Ok(())
        }
        TokenCommand::List { user } => {
            let list = client.list_tokens(user.as_deref()).await?;
            if ctx.output.is_json() {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .tokens
                .iter()
                .map(|t| {
                    let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                    vec![
                        t.id.clone(),
                        t.name.clone().unwrap_or_else(|| "-".to_owned()),
                        t.kind.as_str().to_owned(),
                        scopes.join(","),
                        t.expires_at.map_or("never".to_owned(), short_time),
                        t.last_used_at.map_or("never".to_owned(), short_time),
                    ]
                })
                .collect();
            write_text(&table(
                &["ID", "NAME", "KIND", "SCOPES", "EXPIRES", "LAST USED"],
                &rows,
            ))
        }
        TokenCommand::Revoke { token, user } => {
            let revoked = client.revoke_token(&token, user.as_deref()).await?;
            if ctx.output.is_json() {
                return print_json(&revoked);
            }
            outln!(
                "revoked token {} (id {})",
                revoked.name.as_deref().unwrap_or("-"),
                revoked.id
            )
        }
    }
}
