//! `reactor-fabric completion bash|zsh|fish`: a completion script for the
//! shell, generated from the argument tree, on stdout.

use std::io::Write as _;

use clap::CommandFactory as _;

use crate::error::CliError;

#[derive(Debug, clap::Args)]
#[command(after_help = "Load it in the current shell, or install it:\n  \
    bash: source <(reactor-fabric completion bash)   (or write it to /etc/bash_completion.d/reactor-fabric)\n  \
    zsh:  reactor-fabric completion zsh > \"${fpath[1]}/_reactor-fabric\"\n  \
    fish: reactor-fabric completion fish > ~/.config/fish/completions/reactor-fabric.fish")]
pub struct CompletionArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

const MANGLED: &str = "reactor__subcmd__fabric";
const UNMANGLED: &str = "reactor__fabric";

pub fn run(args: &CompletionArgs) -> Result<(), CliError> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut super::Cli::command(),
        "reactor-fabric",
        &mut script,
    );
    if shell == clap_complete::Shell::Bash {
        // clap_complete 4.6 names the states of a hyphenated program two
        // ways: `cmd="reactor__fabric__subcmd__task"` is set, but the branch
        // that completes it is `reactor__subcmd__fabric__subcmd__task)`, so
        // nothing below the first level would complete. One spelling fixes it.
        let text = String::from_utf8_lossy(&script).replace(MANGLED, UNMANGLED);
        script = text.into_bytes();
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}
