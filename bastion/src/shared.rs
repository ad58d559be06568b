//! What every connection of a bastion shares. Its session methods (admission, reaching
//! the device, finishing) live in `broker`.

use std::sync::Arc;

use crate::agent_hub::AgentHub;
use crate::clock::Clock;
use crate::control::ControlPlane;
use crate::events::EventSink;
use crate::sessions::Registry;
use crate::trust::TrustSource;

/// What every connection shares.
pub(crate) struct Shared {
    pub trust: Arc<TrustSource>,
    pub clock: Arc<dyn Clock>,
    pub events: EventSink,
    pub max_clock_skew_secs: u64,
    pub control: Arc<ControlPlane>,
    /// Session closes on their way to the CA (batched).
    pub closes: crate::closes::Closes,
    pub agents: Arc<AgentHub>,
    pub sessions: Arc<Registry>,
    pub close_on_cert_expiry: bool,
    /// Logged-in connections per user.
    pub logged_in: Arc<crate::logged_in::LoggedIn>,
    pub counters: crate::metrics::SessionCounters,
}
