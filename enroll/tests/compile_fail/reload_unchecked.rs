// The daemon is reloaded only through the proof that `sshd -t` read what was written.
use portcullis_enroll::sshd::SshdCtl;
use portcullis_enroll::txn::Txn;

fn activate(txn: &mut Txn, sshd: &SshdCtl) -> portcullis_enroll::Result<()> {
    txn.reload(sshd)
}

fn main() {
    let _ = activate;
}
