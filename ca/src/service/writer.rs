//! Group commit for certificate issuance.
//!
//! Signing is parallel, but every issued certificate must be stored with its audit
//! record before the caller sees it. One writer task takes whatever issuances are
//! waiting (up to [`MAX_BATCH`]) and stores them in one transaction, moving the audit
//! chain's head once; each caller is answered only after that commit. Under load this
//! turns ~6 database round trips per certificate into ~2, and on SQLite removes the
//! hand-off of the write lock between requests. Alone, a request is written at once.
//!
//! Two checks happen here too, in the batch's transaction (one statement each for the
//! batch instead of reads per request): the API session the certificate was asked in
//! must not have been revoked since the request was authenticated (an administrator
//! disabling the user, a password reset, a rename at the source: each revokes the
//! account's sessions and then its certificates, and a certificate stored after that
//! would outlive the revocation), and the key must not be revoked. A job failing either
//! gets no row, a `cert_denied` record instead, and [`Stored::SessionEnded`] or
//! [`Stored::KeyRevoked`]. See [`store::live_sessions_among`] for why the order holds on
//! PostgreSQL too.
//!
//! A batch whose transaction fails — at any statement or at COMMIT — answers every
//! caller in it with an error and no certificate (a 503 when the database is full or
//! unreachable): a COMMIT whose outcome is unknown (PostgreSQL connection lost during
//! COMMIT) is not acknowledged either. Such a certificate may be in the store without
//! ever reaching its owner, which is harmless; the opposite is what this prevents.
//!
//! So is a batch that has not committed within [`BATCH_DEADLINE`]: its transaction is
//! dropped (which closes the connection) and the writer goes on with the next one. A
//! database can stall in a way none of its own timeouts ends — a PostgreSQL connection
//! a failover left half-open, a server process that stopped answering (sqlx sets no
//! socket timeout; `lock_timeout` and `idle_in_transaction_session_timeout` act on the
//! server) — and without the deadline every later issuance would queue behind that one
//! batch for good (found in review, 2026-12-06).
//!
//! A job whose caller has gone (its client hung up, or gave up and will ask again) is
//! dropped before its batch begins: its certificate was never handed out, so nothing
//! needs storing, and a queue of abandoned jobs behind a slow database would otherwise
//! take every batch while the retries wait. Waiting for a place in the queue is bounded
//! like a batch: past [`BATCH_DEADLINE`], the caller gets "unavailable" (503) rather
//! than a wait without end.

use crate::audit::{self, AuditEvent};
use crate::error::CaError;
use crate::store::{self, CertRow, Store, Unavailable};
use futures_util::future::BoxFuture;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const MAX_BATCH: usize = 64;
/// How long a batch may take, from `BEGIN` to `COMMIT`; a healthy one takes milliseconds.
const BATCH_DEADLINE: Duration = Duration::from_secs(10);
const QUEUE: usize = 1024;

struct Job {
    row: CertRow,
    event: AuditEvent,
    /// The hash of the API session the certificate was asked in.
    session: String,
    /// For the `cert_denied` record of a refusal.
    client_ip: String,
    /// `Err(Some(_))`: the database's state; `Err(None)`: anything else.
    done: oneshot::Sender<Result<Stored, Option<Unavailable>>>,
}

/// What became of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stored {
    /// Stored with its audit record: it may be handed out.
    Issued,
    /// The API session it was asked in was revoked meanwhile: nothing stored, the
    /// refusal audited.
    SessionEnded,
    /// Its key is revoked: nothing stored, the refusal audited.
    KeyRevoked,
    /// The CA key that signed it was retired or revoked (on another replica) since this
    /// replica last read its keyring: nothing stored, the refusal audited; asked again,
    /// it is signed with the key in force.
    SignerWithdrawn,
}

impl Stored {
    fn refusal(self) -> Option<&'static str> {
        match self {
            Stored::Issued => None,
            Stored::SessionEnded => Some("session_ended"),
            Stored::KeyRevoked => Some("key_revoked"),
            Stored::SignerWithdrawn => Some("ca_key_withdrawn"),
        }
    }
}

/// What the issuer hands the writer besides the certificate and its record.
pub(super) struct Requester {
    /// The hash of the caller's API session token.
    pub session: String,
    pub client_ip: String,
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

    /// Stores one issued certificate with its audit record, unless the requester's
    /// session has ended or the key is revoked (then a `cert_denied` record is stored
    /// instead); returns after the commit.
    pub async fn write(&self, row: CertRow, event: AuditEvent, requester: Requester) -> Result<Stored, CaError> {
        let (done, wait) = oneshot::channel();
        let gone = || CaError::Internal("issuance writer stopped".into());
        let Requester { session, client_ip } = requester;
        match tokio::time::timeout(BATCH_DEADLINE, self.tx.send(Job { row, event, session, client_ip, done })).await {
            Ok(sent) => sent.map_err(|_| gone())?,
            Err(_) => return Err(CaError::StoreUnavailable(Unavailable::Database)),
        }
        wait.await.map_err(|_| gone())?.map_err(|failure| match failure {
            Some(why) => CaError::StoreUnavailable(why),
            None => CaError::Internal("storing the issued certificate failed".into()),
        })
    }
}

type Written<'a> = BoxFuture<'a, Result<Vec<Stored>, store::StoreError>>;

async fn run(store: Store, rx: mpsc::Receiver<Job>) {
    serve(rx, move |jobs| {
        let store = store.clone();
        Box::pin(async move { write_batch(&store, jobs).await })
    })
    .await;
}

/// The writer's loop, with the batch's writing given (the store's, or a test's).
async fn serve(mut rx: mpsc::Receiver<Job>, mut write: impl for<'a> FnMut(&'a [Job]) -> Written<'a>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        jobs.retain(|job| !job.done.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let written = match tokio::time::timeout(BATCH_DEADLINE, write(&jobs)).await {
            Ok(Ok(outcomes)) => Ok(outcomes),
            Ok(Err(e)) => {
                tracing::error!(error = %e, batch = jobs.len(), "storing issued certificates failed; none acknowledged");
                Err(e.unavailable())
            }
            Err(_) => {
                tracing::error!(
                    batch = jobs.len(),
                    "storing issued certificates did not finish in time; none acknowledged"
                );
                Err(Some(Unavailable::Database))
            }
        };
        match written {
            Ok(outcomes) => {
                for (job, outcome) in jobs.drain(..).zip(outcomes) {
                    let _ = job.done.send(Ok(outcome));
                }
            }
            Err(why) => {
                for job in jobs.drain(..) {
                    let _ = job.done.send(Err(why));
                }
            }
        }
    }
}

async fn write_batch(store: &Store, jobs: &[Job]) -> Result<Vec<Stored>, store::StoreError> {
    let mut tx = store.begin().await?;
    let sessions: Vec<&str> = jobs.iter().map(|j| j.session.as_str()).collect();
    let live = store::live_sessions_among(&mut tx, &sessions).await?;
    let fingerprints: Vec<&str> = jobs.iter().map(|j| j.row.key_fingerprint.as_str()).collect();
    let revoked = store::revoked_among(tx.conn(), &fingerprints).await?;
    let mut signers: Vec<&str> = jobs.iter().map(|j| j.row.ca_fingerprint.as_str()).collect();
    signers.sort_unstable();
    signers.dedup();
    let in_force = store::signers_in_force(tx.conn(), &signers).await?;
    let outcomes: Vec<Stored> = jobs
        .iter()
        .map(|j| {
            if !live.contains(&j.session) {
                Stored::SessionEnded
            } else if revoked.contains(&j.row.key_fingerprint) {
                Stored::KeyRevoked
            } else if !in_force.contains(&j.row.ca_fingerprint) {
                Stored::SignerWithdrawn
            } else {
                Stored::Issued
            }
        })
        .collect();
    let rows: Vec<&CertRow> =
        jobs.iter().zip(&outcomes).filter(|(_, o)| **o == Stored::Issued).map(|(j, _)| &j.row).collect();
    store::insert_certs(tx.conn(), &rows).await?;
    let refusals: Vec<Option<AuditEvent>> = jobs
        .iter()
        .zip(&outcomes)
        .map(|(j, o)| {
            o.refusal().map(|reason| AuditEvent::CertDenied {
                username: j.row.username.clone(),
                reason,
                key_fingerprint: Some(j.row.key_fingerprint.clone()),
                client_ip: j.client_ip.clone(),
            })
        })
        .collect();
    let events: Vec<(u64, &AuditEvent)> = jobs
        .iter()
        .zip(&refusals)
        .map(|(j, refused)| (j.row.issued_at, refused.as_ref().unwrap_or(&j.event)))
        .collect();
    audit::record_many(tx.conn(), &events).await?;
    tx.commit().await?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(serial: u64) -> (Job, oneshot::Receiver<Result<Stored, Option<Unavailable>>>) {
        let row = CertRow {
            serial,
            ca_fingerprint: String::new(),
            key_fingerprint: String::new(),
            username: "alice".into(),
            key_id: String::new(),
            principals: Vec::new(),
            valid_after: 0,
            valid_before: 0,
            issued_at: 0,
            revoked_at: None,
            groups: Vec::new(),
            digest: None,
            authenticated_at: None,
            groups_unknown: false,
        };
        let (done, answer) = oneshot::channel();
        let event = AuditEvent::Logout { username: "alice".into() };
        (Job { row, event, session: String::new(), client_ip: String::new(), done }, answer)
    }

    /// A batch whose database never answers (here: a write that never finishes) is
    /// answered "unavailable" once the deadline passes — never acknowledged — and the
    /// writer then stores the next batch: one stalled connection does not stop issuance.
    #[tokio::test(start_paused = true)]
    async fn a_batch_that_never_commits_is_refused_and_the_next_one_is_written() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut calls = 0;
        tokio::spawn(serve(rx, move |jobs| {
            calls += 1;
            let stall = calls == 1;
            Box::pin(async move {
                if stall {
                    std::future::pending::<()>().await;
                }
                Ok(jobs.iter().map(|_| Stored::Issued).collect())
            })
        }));
        let (stalled, stalled_answer) = job(1);
        tx.send(stalled).await.unwrap();
        let answer = tokio::time::timeout(BATCH_DEADLINE * 3, stalled_answer).await;
        assert_eq!(answer.expect("the stalled batch was never answered").unwrap(), Err(Some(Unavailable::Database)));
        let (next, next_answer) = job(2);
        tx.send(next).await.unwrap();
        assert_eq!(next_answer.await.unwrap(), Ok(Stored::Issued));
    }

    /// Jobs whose callers have gone are not written: behind a stalled batch, a queue of
    /// them (clients that gave up) would otherwise take the next batches, and a caller
    /// still waiting would wait for all of them.
    #[tokio::test(start_paused = true)]
    async fn jobs_whose_callers_left_are_not_written() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&written);
        tokio::spawn(serve(rx, move |jobs| {
            seen.lock().unwrap().extend(jobs.iter().map(|j| j.row.serial));
            Box::pin(async move { Ok(jobs.iter().map(|_| Stored::Issued).collect()) })
        }));
        for serial in 1..=100 {
            let (left, answer) = job(serial);
            drop(answer);
            tx.send(left).await.unwrap();
        }
        let (waiting, answer) = job(101);
        tx.send(waiting).await.unwrap();
        assert_eq!(answer.await.unwrap(), Ok(Stored::Issued));
        assert_eq!(*written.lock().unwrap(), [101], "jobs nobody waits for were written");
    }

    /// A full queue is waited for no longer than a batch: the caller gets "unavailable".
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_answers_unavailable_in_time() {
        let (tx, _rx) = mpsc::channel(1);
        let writer = IssuanceWriter { tx };
        let (first, _answer) = job(1);
        writer.tx.send(first).await.unwrap();
        let requester = || Requester { session: String::new(), client_ip: String::new() };
        let (second, _) = job(2);
        let started = tokio::time::Instant::now();
        let answer = writer.write(second.row, second.event, requester()).await;
        assert!(matches!(answer, Err(CaError::StoreUnavailable(Unavailable::Database))), "{answer:?}");
        assert_eq!(started.elapsed(), BATCH_DEADLINE);
    }
}
