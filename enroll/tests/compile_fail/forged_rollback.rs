// Only `Txn::rollback` proves that a run's changes were all undone.
use portcullis_enroll::txn::RolledBack;

fn main() {
    let _done = RolledBack { cause: "trust me".into() };
}
