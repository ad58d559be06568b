// Listing certificates takes `certs.revoke`: a `nodes.manage` grant does not do.
use portcullis_policies::{Grant, Identity, Policy, proof};

fn certificates(_grant: &Grant<proof::CertsRevoke>) {}

fn main() {
    let who = Identity { username: "olga".into(), groups: Default::default(), source: "local".into() };
    if let Ok(grant) = Policy::empty().authorize::<proof::NodesManage>(&who) {
        certificates(&grant);
    }
}
