//! `reactor-fabric config`: named servers (contexts) in the config file,
//! kubectl-style. A context is a server URL with its own login; the current
//! one is what commands use when no `--context` (or `FABRIC_CONTEXT`) picks
//! another, and `--url`/`FABRIC_URL` still win over its URL.

use serde::Serialize;

use crate::config::{ConfigError, FileConfig, Login, config_path, normalize_url, process_env};
use crate::error::CliError;
use crate::outln;
use crate::output::{OutputFormat, print_json, table, write_text};

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Create a context, or change its server URL (its login is kept only if the URL stays)
    SetContext(SetContextArgs),
    /// Make a context the current one
    UseContext(NameArg),
    /// List the contexts; * marks the current one
    #[command(visible_alias = "get-context")]
    GetContexts,
    /// Print the current context's name
    CurrentContext,
    /// Remove a context and its login
    DeleteContext(NameArg),
}

#[derive(Debug, clap::Args)]
pub struct SetContextArgs {
    /// The context's name, e.g. prod
    pub name: String,
    /// The fabric server it talks to
    #[arg(long, value_name = "URL")]
    pub url: String,
}

#[derive(Debug, clap::Args)]
pub struct NameArg {
    /// The context's name
    pub name: String,
}

#[derive(Debug, Serialize)]
struct ContextRow<'a> {
    name: &'a str,
    current: bool,
    url: Option<&'a str>,
    user: Option<&'a str>,
    logged_in: bool,
}

pub fn run(cmd: ConfigCommand, output: OutputFormat) -> Result<(), CliError> {
    let path = config_path(&process_env)?;
    let mut file = FileConfig::load(&path)?;
    match cmd {
        ConfigCommand::SetContext(args) => {
            check_name(&args.name)?;
            let url = normalize_url(&args.url)?;
            let old = file.contexts.get(&args.name).cloned().unwrap_or_default();
            // A login belongs to its server: a new URL starts logged out.
            let login = if old.url.as_deref() == Some(url.as_str()) {
                old
            } else {
                Login {
                    url: Some(url.clone()),
                    ..Login::default()
                }
            };
            let created = !file.contexts.contains_key(&args.name);
            file.contexts.insert(args.name.clone(), login);
            file.save(&path)?;
            let verb = if created { "created" } else { "updated" };
            outln!("{verb} context {} ({url})", args.name)
        }
        ConfigCommand::UseContext(args) => {
            if !file.contexts.contains_key(&args.name) {
                return Err(unknown(&args.name, &path, &file));
            }
            file.current_context = Some(args.name.clone());
            file.save(&path)?;
            outln!("switched to context {}", args.name)
        }
        ConfigCommand::GetContexts => {
            let rows: Vec<ContextRow<'_>> = file
                .contexts
                .iter()
                .map(|(name, login)| ContextRow {
                    name,
                    current: file.current_context.as_deref() == Some(name.as_str()),
                    url: login.url.as_deref(),
                    user: login.user.as_deref(),
                    logged_in: login.token.is_some(),
                })
                .collect();
            if output.is_json() {
                return print_json(&rows);
            }
            if rows.is_empty() {
                eprintln!(
                    "no contexts: make one with 'reactor-fabric config set-context NAME --url URL'"
                );
                return Ok(());
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.to_owned(),
                        if r.current { "*".into() } else { String::new() },
                        r.url.unwrap_or("-").to_owned(),
                        r.user.unwrap_or("-").to_owned(),
                    ]
                })
                .collect();
            write_text(&table(&["NAME", "CURRENT", "URL", "USER"], &cells))
        }
        ConfigCommand::CurrentContext => match &file.current_context {
            Some(name) => outln!("{name}"),
            None => Err(CliError::Usage(
                "no current context: pick one with 'reactor-fabric config use-context NAME' (commands use the top-level login meanwhile)".into(),
            )),
        },
        ConfigCommand::DeleteContext(args) => {
            if file.contexts.remove(&args.name).is_none() {
                return Err(unknown(&args.name, &path, &file));
            }
            if file.current_context.as_deref() == Some(args.name.as_str()) {
                file.current_context = None;
            }
            file.save(&path)?;
            outln!("deleted context {}", args.name)
        }
    }
}

fn check_name(name: &str) -> Result<(), CliError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "invalid context name {name:?}: use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn unknown(name: &str, path: &std::path::Path, file: &FileConfig) -> CliError {
    CliError::Config(ConfigError::UnknownContext {
        name: name.to_owned(),
        path: path.to_owned(),
        known: file.contexts.keys().cloned().collect(),
    })
}
