//! Session closes on their way to the CA, batched.
//!
//! A thousand users leaving at once (a network blip, a shutdown) used to mean a thousand
//! concurrent HTTPS calls, each on its own new connection, left idle for minutes. Here one
//! task sends the closes: whatever queued while its previous call was in flight goes in
//! the next call (up to [`MAX_CLOSES_PER_REQUEST`]), so a lone close is sent at once and
//! a burst costs a handful of calls on one connection. Each session waits for the CA's
//! answer to its own close, so a drain still ends only when the CA heard of every close.
//! A batch the CA could not take (unreachable, restarting, overloaded) is sent again a
//! few times within a lease's life: closes are idempotent at the CA, and a close it never
//! hears becomes `lease_lost` there, without the session's reason and byte counts.

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::bastion::{MAX_CLOSES_PER_REQUEST, SessionCloseRequest};
use tokio::sync::{mpsc, oneshot};

use crate::control::{ControlError, ControlPlane};

/// Named in the error when the sender task is gone.
const CLOSES_PATH: &str = "/v1/bastion/sessions/closes";
/// The waits before each retry of a batch the CA could not take: 5.5 s in all, well
/// within a lease's 15 s.
const RETRY_WAITS: [Duration; 3] =
    [Duration::from_millis(500), Duration::from_millis(1500), Duration::from_millis(3500)];

/// Whether the CA may take the same batch a moment later.
fn worth_retrying(result: &Result<(), ControlError>) -> bool {
    match result {
        Err(ControlError::Unreachable { .. }) => true,
        Err(ControlError::Refused { status, .. }) => *status == 429 || *status >= 500,
        _ => false,
    }
}

struct Pending {
    request: SessionCloseRequest,
    /// The CA's answer for this close (dropped unanswered if the sender task is gone).
    answer: Option<oneshot::Sender<Result<(), ControlError>>>,
}

/// The queue of closes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Closes {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Closes {
    /// Starts the sending task (it ends when the last `Closes` is dropped).
    pub(crate) fn start(control: Arc<ControlPlane>) -> Self {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(control, pending));
        Self { queue }
    }

    /// Sends `request` with the next batch and waits for the CA's answer.
    pub(crate) async fn close(&self, request: SessionCloseRequest) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ControlError::Unreachable { path: CLOSES_PATH, detail: "the close queue is gone".into() };
        self.queue.send(Pending { request, answer: Some(tx) }).map_err(|_| gone())?;
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Queues `request` without waiting (for a session's drop guard, which cannot wait).
    pub(crate) fn close_later(&self, request: SessionCloseRequest) {
        let _ = self.queue.send(Pending { request, answer: None });
    }
}

async fn send_batches(control: Arc<ControlPlane>, mut pending: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(64);
    while pending.recv_many(&mut batch, MAX_CLOSES_PER_REQUEST).await > 0 {
        let (requests, answers): (Vec<_>, Vec<_>) = batch.drain(..).map(|p| (p.request, p.answer)).unzip();
        let sessions = requests.len();
        let mut result = control.close_sessions(requests.clone()).await;
        for wait in RETRY_WAITS {
            if !worth_retrying(&result) {
                break;
            }
            tokio::time::sleep(wait).await;
            result = control.close_sessions(requests.clone()).await;
        }
        if let Err(e) = &result {
            tracing::warn!(sessions, error = %e, "could not report session closes to the CA");
        }
        for answer in answers.into_iter().flatten() {
            let _ = answer.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::bastion::CloseReason;
    use std::time::Duration;

    /// A CA that cannot take closes for a moment (restarting: 503 twice) still hears of
    /// every close, with its reason: the batch is sent again, and the session's close is
    /// answered when it was taken. One that refuses a batch outright (400) is not asked
    /// again.
    #[tokio::test]
    async fn a_batch_the_ca_could_not_take_is_sent_again() {
        use axum::http::StatusCode;
        use std::sync::Mutex;
        let calls = Arc::new(Mutex::new(Vec::<(StatusCode, String)>::new()));
        let seen = Arc::clone(&calls);
        let router = axum::Router::new().route(
            CLOSES_PATH,
            axum::routing::post(move |body: String| {
                let seen = Arc::clone(&seen);
                async move {
                    let mut calls = seen.lock().unwrap();
                    let status = match (calls.len(), body.contains("refuse-me")) {
                        (_, true) => StatusCode::BAD_REQUEST,
                        (0 | 1, false) => StatusCode::SERVICE_UNAVAILABLE,
                        _ => StatusCode::NO_CONTENT,
                    };
                    calls.push((status, body));
                    status
                }
            }),
        );
        let closes = Closes::start(Arc::new(crate::control::answered_by(router)));
        let request = |id: &str| SessionCloseRequest {
            session_id: id.into(),
            reason: CloseReason::ClientDisconnect,
            bytes_from_client: 0,
            bytes_to_client: 0,
            duration_ms: 0,
        };
        let answered = tokio::time::timeout(Duration::from_secs(10), closes.close(request("s1"))).await;
        assert!(answered.expect("answered within a lease's life").is_ok());
        let statuses: Vec<StatusCode> = calls.lock().unwrap().iter().map(|(status, _)| *status).collect();
        assert_eq!(
            statuses,
            [StatusCode::SERVICE_UNAVAILABLE, StatusCode::SERVICE_UNAVAILABLE, StatusCode::NO_CONTENT]
        );
        assert!(calls.lock().unwrap().iter().all(|(_, body)| body.contains("client_disconnect")));

        assert!(closes.close(request("refuse-me")).await.is_err());
        assert_eq!(calls.lock().unwrap().len(), 4, "a refusal is not sent again");
    }

    /// A CA nobody listens at: each close is answered (with the failure), none hangs.
    #[tokio::test]
    async fn every_close_is_answered_even_when_the_ca_is_unreachable() {
        let control = Arc::new(crate::control::unreachable(Duration::from_millis(200)));
        let closes = Closes::start(control);
        let request = |i: usize| SessionCloseRequest {
            session_id: format!("s{i}"),
            reason: CloseReason::ClientDisconnect,
            bytes_from_client: 0,
            bytes_to_client: 0,
            duration_ms: 0,
        };
        let mut waiting = tokio::task::JoinSet::new();
        for i in 0..50 {
            let closes = closes.clone();
            waiting.spawn(async move { closes.close(request(i)).await });
        }
        let answers =
            tokio::time::timeout(Duration::from_secs(10), waiting.join_all()).await.expect("every close is answered");
        assert_eq!(answers.len(), 50);
        assert!(answers.iter().all(Result::is_err));
    }
}
