//! Each event's stable name, stored in its own column.

use super::AuditEvent;

impl AuditEvent {
    /// The stable event name stored in its own column (and in the JSON's `event` field).
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::LoginSucceeded { .. } => "login_succeeded",
            AuditEvent::LoginFailed { .. } => "login_failed",
            AuditEvent::Logout { .. } => "logout",
            AuditEvent::SessionRefused { .. } => "session_refused",
            AuditEvent::CertIssued { .. } => "cert_issued",
            AuditEvent::CertDenied { .. } => "cert_denied",
            AuditEvent::Revoked { .. } => "revoked",
            AuditEvent::CaKeyGenerated { .. } => "ca_key_generated",
            AuditEvent::CaKeyRotated { .. } => "ca_key_rotated",
            AuditEvent::CaKeyRetired { .. } => "ca_key_retired",
            AuditEvent::PolicyLoaded { .. } => "policy_loaded",
            AuditEvent::PolicyChanged { .. } => "policy_changed",
            AuditEvent::PolicyRejected { .. } => "policy_rejected",
            AuditEvent::UserChanged { .. } => "user_changed",
            AuditEvent::NodeRegistered { .. } => "node_registered",
            AuditEvent::EnrollTokenCreated { .. } => "enroll_token_created",
            AuditEvent::EnrollTokenRevoked { .. } => "enroll_token_revoked",
            AuditEvent::NodeEnrollAborted { .. } => "node_enroll_aborted",
            AuditEvent::NodeUpdated { .. } => "node_updated",
            AuditEvent::NodeRemoved { .. } => "node_removed",
            AuditEvent::NodeEnrolled { .. } => "node_enrolled",
            AuditEvent::EnrollRefused { .. } => "enroll_refused",
            AuditEvent::NodeRefreshed { .. } => "node_refreshed",
            AuditEvent::NodeDeregistered { .. } => "node_deregistered",
            AuditEvent::NodeProofRefused { .. } => "node_proof_refused",
            AuditEvent::ServiceEnrolled { .. } => "service_enrolled",
            AuditEvent::ServiceEnrollRefused { .. } => "service_enroll_refused",
            AuditEvent::ServiceCertIssued { .. } => "service_cert_issued",
            AuditEvent::SessionOpened { .. } => "session_opened",
            AuditEvent::SessionDenied { .. } => "session_denied",
            AuditEvent::SessionClosed { .. } => "session_closed",
            AuditEvent::SessionKillRequested { .. } => "session_kill_requested",
            AuditEvent::RecordingPlayed { .. } => "recording_played",
            AuditEvent::RecordingTruncated { .. } => "recording_truncated",
            AuditEvent::RecordingRefused { .. } => "recording_refused",
            AuditEvent::RecordingsExpired { .. } => "recordings_expired",
            AuditEvent::BastionAuthRefused { .. } => "bastion_auth_refused",
            AuditEvent::BrokerConnected { .. } => "broker_connected",
            AuditEvent::BrokerFailed { .. } => "broker_failed",
            AuditEvent::HostKeyPinned { .. } => "host_key_pinned",
            AuditEvent::HostKeyPinRefused { .. } => "host_key_pin_refused",
            AuditEvent::AgentConnected { .. } => "agent_connected",
            AuditEvent::AgentDisconnected { .. } => "agent_disconnected",
            AuditEvent::ConsoleTicketRequested { .. } => "console_ticket_requested",
            AuditEvent::ConsoleTicketGranted { .. } => "console_ticket_granted",
            AuditEvent::ConsoleTicketDenied { .. } => "console_ticket_denied",
            AuditEvent::ConsoleTicketRedeemed { .. } => "console_ticket_redeemed",
            AuditEvent::ConsoleTicketExpired { .. } => "console_ticket_expired",
            AuditEvent::ConsoleTicketLapsed { .. } => "console_ticket_lapsed",
            AuditEvent::ConsoleTicketReused { .. } => "console_ticket_reused",
            AuditEvent::ConsoleTicketWrongSession { .. } => "console_ticket_wrong_session",
            AuditEvent::RefusalsSummarized { .. } => "refusals_summarized",
            AuditEvent::DiscoveryStarted { .. } => "discovery_started",
            AuditEvent::DiscoveryFailed { .. } => "discovery_failed",
            AuditEvent::InventoryDrift { .. } => "inventory_drift",
            AuditEvent::SecretAdded { .. } => "secret_added",
            AuditEvent::SecretRotated { .. } => "secret_rotated",
            AuditEvent::SecretRemoved { .. } => "secret_removed",
            AuditEvent::PveCollectionStarted { .. } => "pve_collection_started",
            AuditEvent::PveCollectionFailed { .. } => "pve_collection_failed",
            AuditEvent::PveInventoryDrift { .. } => "pve_inventory_drift",
            AuditEvent::PveCollectionWarnings { .. } => "pve_collection_warnings",
            AuditEvent::PveCandidateMarked { .. } => "pve_candidate_marked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_name_matches_serde_tag() {
        let e = AuditEvent::Logout { username: "a".into() };
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&e).unwrap_or_default()).unwrap_or_default();
        assert_eq!(v["event"], e.name());
    }
}
