//! `portcullis-enroll`: parses arguments and calls the library.

use clap::Parser;
use portcullis_enroll::args::{Cli, Command};
use portcullis_enroll::commands::{self, EnrollArgs, Global};
use portcullis_enroll::report::Report;
use portcullis_enroll::root::Root;
use portcullis_enroll::secret::Token;
use portcullis_enroll::sshd::SshdCtl;
use portcullis_enroll::{Error, preflight};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let root = Root::new(&cli.root);
    let sshd = SshdCtl {
        service: preflight::service_name(&root),
        root: root.clone(),
        sshd: cli.sshd,
        reload_cmd: cli.reload_cmd,
    };
    let g = Global { root, check: cli.check, sshd, lock_wait: std::time::Duration::from_secs(cli.lock_wait) };
    let name = match &cli.command {
        Command::Enroll(_) => "enroll",
        Command::Refresh => "refresh",
        Command::Remove => "remove",
        Command::Status => "status",
    };
    let mut report = Report::new(name, cli.json);
    let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Err(e) => Err(Error::Failed(format!("cannot start: {e}"))),
        Ok(rt) => rt.block_on(async {
            match cli.command {
                Command::Enroll(a) => {
                    let args = EnrollArgs {
                        ca: a.ca,
                        token: Token::from(a.token),
                        ca_fingerprint: a.ca_fingerprint,
                        name: a.name,
                        sshd_port: a.sshd_port,
                        addresses: a.addresses,
                        discovery: a.discovery,
                    };
                    commands::enroll(&g, args, &mut report).await
                }
                Command::Refresh => commands::refresh(&g, &mut report).await,
                Command::Remove => commands::remove(&g, &mut report).await,
                Command::Status => commands::status(&g, &mut report),
            }
        }),
    };
    std::process::exit(report.finish(&result));
}
