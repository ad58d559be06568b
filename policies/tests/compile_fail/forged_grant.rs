#![allow(unreachable_code)]
// Only the policy engine makes a grant.
use portcullis_policies::{Grant, Permission, proof};

fn main() {
    // Whatever it would say about what the identity holds and where the grant holds.
    let all = unimplemented!();
    let everywhere = unimplemented!();
    let _grant: Grant<proof::CertsRevoke> = Grant::new("mallory", Permission::CertsRevoke, all, everywhere);
}
