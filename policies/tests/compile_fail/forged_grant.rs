#![allow(unreachable_code)]
// Only the policy engine makes a grant.
use portcullis_policies::{Grant, Permission, proof};

fn main() {
    let all = Permission::ALL.iter().copied().collect();
    // Whatever it would say about where the grant holds.
    let everywhere = unimplemented!();
    let _grant: Grant<proof::CertsRevoke> = Grant::new("mallory", Permission::CertsRevoke, all, everywhere);
}
