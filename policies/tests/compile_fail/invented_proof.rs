// Proof types are sealed: nobody outside the crate names a new one.
use portcullis_policies::Permission;
use portcullis_policies::proof::Proof;

enum Everything {}

impl Proof for Everything {
    const ANY_OF: &'static [Permission] = &[Permission::CaManage];
}

fn main() {}
