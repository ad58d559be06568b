//! A throwaway PostgreSQL server per test: its own data directory, socket directory
//! and TCP port on 127.0.0.1, trust authentication, stopped and deleted on drop.
//!
//! PostgreSQL's server binaries refuse to run as root, so as root they run as the
//! `postgres` user (created by Debian's `postgresql` package) in a directory it owns.
//! Missing binaries are an error, never a skip: a storage test that quietly did not run
//! would hide a broken CI.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

pub struct Postgres {
    port: u16,
    database: String,
    bin_dir: PathBuf,
    data_dir: PathBuf,
    as_postgres: bool,
    dir: TempDir,
}

impl Postgres {
    /// Creates a cluster, starts it on a free port and creates database `portcullis`.
    pub fn start() -> anyhow::Result<Postgres> {
        let bin_dir = find_bin_dir()?;
        let as_postgres = is_root()?;
        let dir = tempfile::Builder::new().prefix("portcullis-pg-").tempdir().context("temporary directory")?;
        if as_postgres {
            run(Command::new("chown").args(["postgres:postgres"]).arg(dir.path()))?;
        }
        let data_dir = dir.path().join("data");
        let mut pg = Postgres { port: 0, database: "portcullis".to_owned(), bin_dir, data_dir, as_postgres, dir };
        pg.server_cmd("initdb", |c| {
            c.arg("-D").arg(&pg.data_dir).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        })?;
        // The port is picked by binding :0 and released before PostgreSQL binds it, so
        // a parallel test can win the race; try a few ports before giving up.
        let mut last_error = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            match pg.pg_start() {
                Ok(_) => {
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(e.context(format!("PostgreSQL did not start; its log:\n{}", pg.log())));
        }
        // createdb is a client: it runs as any user, over TCP with trust auth.
        run(Command::new(pg.bin_dir.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres"])
            .arg(&pg.database))?;
        Ok(pg)
    }

    /// The postmaster's process id (its backends are its children), for CPU accounting.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `postgres://postgres@127.0.0.1:PORT/portcullis`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.database)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates another, empty database on this server; its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        run(Command::new(self.bin_dir.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .arg(name))?;
        Ok(format!("postgres://postgres@127.0.0.1:{}/{name}", self.port))
    }

    fn pg_start(&self) -> anyhow::Result<Output> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.server_cmd("pg_ctl", |c| {
            c.arg("-D").arg(&self.data_dir).arg("-l").arg(&log).args(["-o", &options, "-w", "-t", "60", "start"]);
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Crashes the server: SIGKILL to the postmaster (its backends notice and exit).
    pub fn kill_9(&self) -> anyhow::Result<()> {
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).context("postmaster.pid")?;
        let pid = pid_file.lines().next().context("empty postmaster.pid")?.trim().to_owned();
        run(Command::new("kill").args(["-9", &pid]))?;
        Ok(())
    }

    /// Starts the crashed server again on the same port and data (crash recovery runs);
    /// retried while backends of the killed postmaster still hold its shared memory.
    pub fn restart(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match self.pg_start() {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(e.context(format!("PostgreSQL did not restart; its log:\n{}", self.log())));
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
            }
        }
    }

    /// Runs the SQL file `script` (e.g. a `pg_dump`) in database `name` with `psql`,
    /// stopping at the first error.
    pub fn load_sql(&self, name: &str, script: &Path) -> anyhow::Result<()> {
        run(Command::new(self.bin_dir.join("psql"))
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-d", name, "-f"])
            .arg(script))?;
        Ok(())
    }

    /// Runs a server-side binary, as `postgres` when we are root.
    fn server_cmd(&self, name: &str, args: impl FnOnce(&mut Command)) -> anyhow::Result<Output> {
        let program = self.bin_dir.join(name);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        // A cwd the postgres user can enter avoids "could not change directory" noise.
        cmd.current_dir(self.dir.path());
        args(&mut cmd);
        run(&mut cmd)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.server_cmd("pg_ctl", |c| {
            c.arg("-D").arg(&self.data_dir).args(["-m", "immediate", "-w", "stop"]);
        });
    }
}

fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let preferred = Path::new("/usr/lib/postgresql/15/bin");
    if preferred.join("initdb").is_file() {
        return Ok(preferred.to_owned());
    }
    // Another major version is fine too; take the newest.
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    match found.pop() {
        Some(dir) => Ok(dir),
        None => bail!(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb). \
             Install the `postgresql` package; ./scripts/test.sh does. This test FAILS \
             instead of skipping so that a broken CI image is noticed."
        ),
    }
}

fn is_root() -> anyhow::Result<bool> {
    let out = run(Command::new("id").arg("-u"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
