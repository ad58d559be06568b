//! Session closes on their way to the CA, batched.
//!
//! A thousand users leaving at once (a network blip, a shutdown) used to mean a thousand
//! concurrent HTTPS calls, each on its own new connection, left idle for minutes. Here one
//! task sends the closes: whatever queued while its previous call was in flight goes in
//! the next call (up to [`MAX_CLOSES_PER_REQUEST`]), so a lone close is sent at once and
//! a burst costs a handful of calls on one connection. Each session waits for the CA's
//! answer to its own close, so a drain still ends only when the CA heard of every close.

use std::sync::Arc;

use portcullis_proto::bastion::{MAX_CLOSES_PER_REQUEST, SessionCloseRequest};
use tokio::sync::{mpsc, oneshot};

use crate::control::{ControlError, ControlPlane};

/// Named in the error when the sender task is gone.
const CLOSES_PATH: &str = "/v1/bastion/sessions/closes";

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
        let result = control.close_sessions(requests).await;
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
