//! `portcullis`: the user and admin command line. Parses arguments and dispatches; the
//! work is in the modules.

mod admin;
mod api;
mod args;
mod login;
mod pve;
mod recordings;
mod shared;
mod sso;
mod state;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            args::Command::Login(a) => login::login(a).await,
            args::Command::Status => login::status().await,
            args::Command::Logout => login::logout().await,
            args::Command::SshConfig(a) => login::ssh_config(a).await,
            args::Command::Admin(a) => admin::run(a.command, a.json).await,
            // Rendered into memory first: clap_complete panics on a write error (a closed
            // pipe), and a closed pipe is an error to report, not a crash.
            args::Command::Completions { shell } => {
                let mut command = <args::Cli as clap::CommandFactory>::command();
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut command, "portcullis", &mut script);
                std::io::Write::write_all(&mut std::io::stdout(), &script).map_err(anyhow::Error::from)
            }
            args::Command::Man => {
                let mut page = Vec::new();
                clap_mangen::Man::new(<args::Cli as clap::CommandFactory>::command()).render(&mut page)?;
                std::io::Write::write_all(&mut std::io::stdout(), &page).map_err(anyhow::Error::from)
            }
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
