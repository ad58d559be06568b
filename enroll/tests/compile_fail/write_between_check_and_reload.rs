// A file written after `sshd -t` checked the configuration would reach the daemon
// unchecked at the reload: the check holds the transaction until the reload.
use portcullis_enroll::sshd::SshdCtl;
use portcullis_enroll::txn::Txn;
use std::path::Path;

fn activate(txn: &mut Txn, sshd: &SshdCtl) -> portcullis_enroll::Result<()> {
    let checked = txn.check(sshd)?;
    txn.write(Path::new("/etc/ssh/sshd_config.d/60-portcullis.conf"), b"PermitRootLogin yes\n", 0o644)?;
    checked.reload(sshd)
}

fn main() {
    let _ = activate;
}
