//! JSON bodies as peers send them to the CA and the bastion (bastions, agents, enroll
//! tools, browsers, the CLI). The first byte picks the type; whatever parses must
//! serialize and parse again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proto::bastion::{
    BastionEventsRequest, HeartbeatRequest, ServiceEnrollRequest, SessionCloseRequest, SessionOpenRequest,
};
use portcullis_proto::console::{ConsoleControl, ConsoleOpenRequest, TicketRequest};
use portcullis_proto::discovery::{DiscoveryClaimRequest, DiscoveryReportRequest};
use portcullis_proto::enroll::{EnrollAbortRequest, EnrollRequest};
use portcullis_proto::oidc::DevicePollRequest;
use portcullis_proto::{NodeUpdate, RevokeRequest, SetGroupsRequest, UserAddRequest, UserCertRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned>(body: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(body) {
        let again = serde_json::to_vec(&value).expect("a parsed body serializes");
        serde_json::from_slice::<T>(&again).expect("a serialized body parses");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    match pick % 16 {
        0 => round_trip::<SessionOpenRequest>(body),
        1 => round_trip::<HeartbeatRequest>(body),
        2 => round_trip::<SessionCloseRequest>(body),
        3 => round_trip::<BastionEventsRequest>(body),
        4 => round_trip::<ServiceEnrollRequest>(body),
        5 => round_trip::<ConsoleControl>(body),
        6 => round_trip::<ConsoleOpenRequest>(body),
        7 => round_trip::<TicketRequest>(body),
        8 => round_trip::<DiscoveryClaimRequest>(body),
        9 => round_trip::<DiscoveryReportRequest>(body),
        10 => round_trip::<EnrollRequest>(body),
        11 => round_trip::<EnrollAbortRequest>(body),
        12 => round_trip::<DevicePollRequest>(body),
        13 => round_trip::<UserCertRequest>(body),
        14 => round_trip::<(UserAddRequest, SetGroupsRequest)>(body),
        _ => round_trip::<(NodeUpdate, RevokeRequest)>(body),
    }
});
