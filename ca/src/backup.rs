//! Backup and restore of the embedded SQLite database (`portcullisd backup` / `restore`).
//!
//! A backup is one SQLite file: every table, the audit chain, recordings (the chunks the
//! live database keeps in files beside it are put back into the copy's rows), and the
//! CA keys as the database holds them — encrypted with the CA passphrase, which is *not*
//! in it (keep the passphrase apart from the backups: together they are the CA). The copy is made with
//! SQLite's `VACUUM INTO` while the CA runs (a consistent snapshot; writers wait only for
//! the copy's read), then checked: the audit chain, the counts an operator checks.
//!
//! A backup changes nothing of the live database and keeps its schema: `portcullisd
//! backup` is what an operator runs *before* an upgrade, often with the new release's
//! binary already installed, while the old release still serves. Migrating the live
//! database then would change it under the running CA (and leave a backup only the new
//! release can restore). So the live database is opened read-only and as it is, the
//! backup keeps the live schema, and the check runs on a scratch copy brought up to
//! this release's schema (as a restore would). A database written by a newer release
//! than this binary is refused: back it up with that release.
//! PostgreSQL deployments use `pg_dump`/`pg_restore`; the same check runs on a restored
//! database at the next start (`/readyz`, `portcullis admin audit verify`).

use std::path::{Path, PathBuf};

use crate::error::CaError;
use crate::store::{self, Backend, ChunkFiles, SqliteMode, Store};
use std::sync::Arc;

/// What a backup or a restore holds, after checking it.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub path: PathBuf,
    pub audit_records: u64,
    pub users: usize,
    pub nodes: usize,
    pub ca_keys: usize,
}

impl std::fmt::Display for BackupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} audit records (hash chain verified), {} user(s), {} node(s), {} CA key(s)",
            self.path.display(),
            self.audit_records,
            self.users,
            self.nodes,
            self.ca_keys
        )
    }
}

fn sqlite_path(database_url: &str) -> Result<PathBuf, CaError> {
    if !database_url.starts_with("sqlite:") {
        return Err(CaError::Config(
            "backup and restore here are for SQLite; for PostgreSQL use pg_dump and pg_restore (the CA keys are \
             in the database, encrypted; keep the passphrase apart)"
                .into(),
        ));
    }
    store::sqlite_file(database_url)
        .ok_or_else(|| CaError::Config("an in-memory database has nothing to back up".into()))
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Opens a database file on its own, migrated to this release's schema, and checks it:
/// the audit chain, counts. The store is closed and its migration lock file (which
/// belongs to this check, not to the file checked) removed either way.
async fn check(path: &Path) -> Result<BackupReport, CaError> {
    let store = Store::open(&sqlite_url(path)).await?;
    let checked = inspect(&store, path).await;
    store.close().await;
    let _ = std::fs::remove_file(store::migration_lock_file(path));
    checked
}

/// Makes the fresh copy at `out` one file — the recording chunks the live database keeps
/// in `chunk_files` put into its rows — without changing its schema, then checks it on a
/// scratch copy.
async fn complete_and_check(out: &Path, chunk_files: Option<Arc<ChunkFiles>>) -> Result<BackupReport, CaError> {
    // A chunk is in its file before its row is committed and leaves only after its
    // recording's row is deleted, so every row of the copy finds its file — unless
    // retention deleted the recording since the copy was made, and then the backup fails
    // and can be taken again.
    if let Some(files) = chunk_files {
        let copy = Store::open_as_is(&sqlite_url(out), SqliteMode::ReadWrite).await?;
        let inlined = copy.inline_chunk_files(files).await;
        copy.close().await;
        inlined?;
    }
    let mut scratch = out.as_os_str().to_owned();
    scratch.push(".checking");
    let scratch = PathBuf::from(scratch);
    std::fs::copy(out, &scratch)
        .map_err(|e| CaError::Config(format!("cannot copy {} to check it: {e}", out.display())))?;
    let checked = check(&scratch).await;
    for leftover in ["", "-wal", "-shm"] {
        let mut path = scratch.as_os_str().to_owned();
        path.push(leftover);
        let _ = std::fs::remove_file(path);
    }
    Ok(BackupReport { path: out.to_owned(), ..checked? })
}

async fn inspect(store: &Store, path: &Path) -> Result<BackupReport, CaError> {
    let chain = store.verify_audit_chain().await?;
    if let Some(seq) = chain.first_bad_seq {
        return Err(CaError::Config(format!(
            "{}: the audit chain breaks at record {seq} ({})",
            path.display(),
            chain.problem.unwrap_or_default()
        )));
    }
    Ok(BackupReport {
        path: path.to_owned(),
        audit_records: chain.records,
        users: store.users().await?.len(),
        nodes: store.nodes().await?.len(),
        ca_keys: store.ca_keys().await?.len(),
    })
}

/// Writes a consistent copy of the live database at `database_url` to `out` (which must
/// not exist), then checks the copy.
pub async fn backup(database_url: &str, out: &Path) -> Result<BackupReport, CaError> {
    let live = sqlite_path(database_url)?;
    if !live.exists() {
        return Err(CaError::Config(format!("{} does not exist: nothing to back up", live.display())));
    }
    let target = out.to_str().ok_or_else(|| CaError::Config("the backup path is not UTF-8".into()))?;
    // Created empty here, owner-only, so the copy (password hashes, sealed CA keys, the
    // audit trail) is never readable by others, whatever the umask; `VACUUM INTO` fills
    // an empty file. `create_new`: a backup never overwrites.
    private_file(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            CaError::Config(format!("{} exists; a backup never overwrites", out.display()))
        }
        _ => CaError::Config(format!("cannot create {}: {e}", out.display())),
    })?;
    let store = match Store::open_as_is(database_url, SqliteMode::ReadOnly).await {
        Ok(store) => store,
        Err(e) => {
            // Nothing was taken: the empty file would refuse every retry ("exists").
            let _ = std::fs::remove_file(out);
            return Err(e.into());
        }
    };
    debug_assert_eq!(store.backend(), Backend::Sqlite);
    let copied = match store.schema_version().await {
        Ok(Some(version)) if version > Store::known_schema_version() => Err(CaError::Config(format!(
            "{} was written by a newer portcullisd (schema {version}; this one knows up to {}): back it up with \
             the release that runs the CA",
            live.display(),
            Store::known_schema_version()
        ))),
        Ok(_) => store.vacuum_into(target).await.map_err(CaError::from),
        Err(e) => Err(e.into()),
    };
    let chunk_files = store.chunk_files();
    store.close().await;
    let done = match copied {
        Ok(()) => complete_and_check(out, chunk_files).await,
        Err(e) => Err(e),
    };
    // On disk before it is reported taken: `VACUUM INTO` does not sync what it writes.
    match done.and_then(|report| durable(out).map(|()| report)) {
        Ok(report) => Ok(report),
        Err(e) => {
            let _ = std::fs::remove_file(out);
            Err(e)
        }
    }
}

/// Creates `path`, empty and readable by its owner only; fails if it exists.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// Syncs `path`'s contents and the directory entry naming it.
fn durable(path: &Path) -> Result<(), CaError> {
    let failed = |e: String| CaError::Config(format!("cannot sync {}: {e}", path.display()));
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| failed(e.to_string()))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    portcullis_os::fs::fsync_dir(dir).map_err(|e| failed(e.source.to_string()))
}

/// Checks the backup at `from`, then puts it in place as the database at `database_url`,
/// which must not exist yet (restore into a fresh data directory; a restore never
/// overwrites a live CA).
pub async fn restore(from: &Path, database_url: &str) -> Result<BackupReport, CaError> {
    let target = sqlite_path(database_url)?;
    if target.exists() {
        return Err(CaError::Config(format!(
            "{} exists; restore into a fresh data directory (a restore never overwrites a database)",
            target.display()
        )));
    }
    // Checked on a scratch copy, so a backup that fails the check leaves nothing behind
    // and the backup file itself is never written to (migrations would upgrade it).
    // Owner-only whatever the backup file's own mode, and on disk before it is put in
    // place: a power cut after "restored" must not leave an empty database, which the
    // next start would take for a new CA.
    let staging = target.with_extension("db.restoring");
    let _ = std::fs::remove_file(&staging);
    let copied = private_file(&staging).and_then(|mut to| {
        std::io::copy(&mut std::fs::File::open(from)?, &mut to)?;
        to.sync_all()
    });
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&staging);
        return Err(CaError::Config(format!("cannot copy {} to {}: {e}", from.display(), staging.display())));
    }
    let report = match check(&staging).await.and_then(|report| durable(&staging).map(|()| report)) {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
    };
    std::fs::rename(&staging, &target)
        .map_err(|e| CaError::Config(format!("cannot put {} in place: {e}", target.display())))?;
    durable(&target)?;
    Ok(BackupReport { path: target, ..report })
}
