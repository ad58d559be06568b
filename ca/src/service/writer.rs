//! Group commit for certificate issuance.
//!
//! Signing is parallel, but every issued certificate must be stored with its audit
//! record before the caller sees it. One writer task takes whatever issuances are
//! waiting (up to [`MAX_BATCH`]) and stores them in one transaction, moving the audit
//! chain's head once; each caller is answered only after that commit. Under load this
//! turns ~6 database round trips per certificate into ~2, and on SQLite removes the
//! hand-off of the write lock between requests. Alone, a request is written at once.
//!
//! The revoked-key check happens here too, in the batch's transaction (one statement for
//! the batch instead of one read per request): a job whose key is revoked gets no row,
//! its `refused` audit record instead, and [`Stored::KeyRevoked`].
//!
//! A batch whose transaction fails — at any statement or at COMMIT — answers every
//! caller in it with an error and no certificate (a 503 when the database is full or
//! unreachable): a COMMIT whose outcome is unknown (PostgreSQL connection lost during
//! COMMIT) is not acknowledged either. Such a certificate may be in the store without
//! ever reaching its owner, which is harmless; the opposite is what this prevents.

use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::store::{self, CertRow, Store, Unavailable};
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 64;
const QUEUE: usize = 1024;

struct Job {
    row: CertRow,
    event: AuditEvent,
    /// Recorded instead of `event` when the key turns out to be revoked.
    refused: AuditEvent,
    /// `Err(Some(_))`: the database's state; `Err(None)`: anything else.
    done: oneshot::Sender<Result<Stored, Option<Unavailable>>>,
}

/// What became of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    /// Stored with its audit record: it may be handed out.
    Issued,
    /// Its key is revoked: nothing stored, the refusal audited.
    KeyRevoked,
}

#[derive(Clone)]
pub(super) struct IssuanceWriter {
    tx: mpsc::Sender<Job>,
}

impl IssuanceWriter {
    pub fn spawn(store: Store) -> IssuanceWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, rx));
        IssuanceWriter { tx }
    }

    /// Stores one issued certificate with its audit record, unless its key is revoked
    /// (then `refused` is recorded instead); returns after the commit.
    pub async fn write(&self, row: CertRow, event: AuditEvent, refused: AuditEvent) -> Result<Stored, CaError> {
        let (done, wait) = oneshot::channel();
        let gone = || CaError::Internal("issuance writer stopped".into());
        self.tx.send(Job { row, event, refused, done }).await.map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?.map_err(|failure| match failure {
            Some(why) => CaError::StoreUnavailable(why),
            None => CaError::Internal("storing the issued certificate failed".into()),
        })
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        match write_batch(&store, &jobs).await {
            Ok(outcomes) => {
                for (job, outcome) in jobs.drain(..).zip(outcomes) {
                    let _ = job.done.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = jobs.len(), "storing issued certificates failed; none acknowledged");
                let why = e.unavailable();
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(why));
                }
            }
        }
    }
}

async fn write_batch(store: &Store, jobs: &[Job]) -> Result<Vec<Stored>, store::StoreError> {
    let mut tx = store.begin().await?;
    let fingerprints: Vec<&str> = jobs.iter().map(|j| j.row.key_fingerprint.as_str()).collect();
    let revoked = store::revoked_among(tx.conn(), &fingerprints).await?;
    let outcomes: Vec<Stored> = jobs
        .iter()
        .map(|j| if revoked.contains(&j.row.key_fingerprint) { Stored::KeyRevoked } else { Stored::Issued })
        .collect();
    let rows: Vec<&CertRow> =
        jobs.iter().zip(&outcomes).filter(|(_, o)| **o == Stored::Issued).map(|(j, _)| &j.row).collect();
    store::insert_certs(tx.conn(), &rows).await?;
    let events: Vec<(u64, &AuditEvent)> = jobs
        .iter()
        .zip(&outcomes)
        .map(|(j, o)| (j.row.issued_at, if *o == Stored::Issued { &j.event } else { &j.refused }))
        .collect();
    audit::record_many(tx.conn(), &events).await?;
    tx.commit().await?;
    Ok(outcomes)
}
