//! `portcullis`: the user and admin command line. Parses arguments and dispatches; the
//! work is in the modules.

mod admin;
mod api;
mod args;
mod login;
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
            args::Command::Admin(a) => admin::run(a).await,
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
