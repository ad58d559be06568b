// Only the policy engine makes a grant.
use portcullis_policies::{Grant, Permission, proof};

fn main() {
    let all = Permission::ALL.iter().copied().collect();
    let _grant: Grant<proof::CertsRevoke> = Grant::new("mallory", Permission::CertsRevoke, all);
}
