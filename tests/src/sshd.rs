//! A throwaway OpenSSH `sshd` trusting a Portcullis CA: own config, keys, principals
//! files and KRL in a temporary directory, on a free loopback port; killed on drop.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub ip: String,
    child: Child,
}

/// What the node trusts: the CA keys, and per login the principals its
/// `AuthorizedPrincipalsFile` lists (exactly what enrollment will write).
#[derive(Default)]
pub struct NodeTrust {
    pub trusted_user_ca_keys: String,
    pub principals: BTreeMap<String, Vec<String>>,
    pub krl: Option<Vec<u8>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sshd {
    pub fn start(trust: &NodeTrust) -> Sshd {
        Sshd::start_at(trust, "127.0.0.1", free_port())
    }

    /// On `ip:port`, e.g. port 22 of an otherwise unused loopback address (root only),
    /// the way a real node listens.
    pub fn start_at(trust: &NodeTrust, ip: &str, port: u16) -> Sshd {
        Sshd::start_in(trust, ip, port, None)
    }

    /// As [`Sshd::start_at`], inside network namespace `netns` when given (started with
    /// `ip netns exec`; readiness is read from sshd's own log).
    pub fn start_in(trust: &NodeTrust, ip: &str, port: u16, netns: Option<&str>) -> Sshd {
        Sshd::start_configured(trust, ip, port, netns, "")
    }

    /// As [`Sshd::start_in`], with `extra` appended to `sshd_config` (e.g. a `Match` block).
    pub fn start_configured(trust: &NodeTrust, ip: &str, port: u16, netns: Option<&str>, extra: &str) -> Sshd {
        assert!(Path::new(SSHD).exists(), "{SSHD} missing: run ./scripts/test.sh, which installs openssh-server");
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let host_key = d.join("host_ed25519");
        let status =
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&host_key).status().unwrap();
        assert!(status.success());
        std::fs::write(d.join("ca.pub"), &trust.trusted_user_ca_keys).unwrap();
        std::fs::create_dir(d.join("principals")).unwrap();
        // sshd reads a principals file as the user logging in, who need not be root
        // (hardware discovery logs in as its own account).
        for dir in [d.to_path_buf(), d.join("principals")] {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        for (login, list) in &trust.principals {
            let file = d.join("principals").join(login);
            std::fs::write(&file, list.iter().map(|p| format!("{p}\n")).collect::<String>()).unwrap();
            std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        }
        let krl_line = match &trust.krl {
            Some(krl) => {
                std::fs::write(d.join("krl"), krl).unwrap();
                format!("RevokedKeys {}\n", d.join("krl").display())
            }
            None => String::new(),
        };
        // Sessions start in an empty home: the machine's own dotfiles are not the node's.
        // (root's ~/.bashrc here runs `pyenv rehash`, which waits up to 60 s on a lock
        // that a killed session left behind, and every later session waits with it.)
        std::fs::create_dir(d.join("home")).unwrap();
        std::fs::set_permissions(d.join("home"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = format!(
            "Port {port}\nListenAddress {ip}\nHostKey {hk}\nPidFile none\nStrictModes no\nUsePAM no\n\
             SetEnv HOME={d}/home\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             AuthorizedKeysFile none\nTrustedUserCAKeys {d}/ca.pub\nAuthorizedPrincipalsFile {d}/principals/%u\n\
             {krl_line}Subsystem sftp internal-sftp\nAcceptEnv LANG LC_*\nLogLevel VERBOSE\n{extra}",
            hk = host_key.display(),
            d = d.display(),
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let check = Command::new(SSHD).arg("-t").arg("-f").arg(d.join("sshd_config")).output().unwrap();
        assert!(check.status.success(), "sshd -t: {}", String::from_utf8_lossy(&check.stderr));
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        let child = command
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listening = || match netns {
            Some(_) => std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default().contains("Server listening"),
            None => TcpStream::connect((ip, port)).is_ok(),
        };
        while !listening() {
            assert!(Instant::now() < deadline, "sshd did not start; log: {}", d.join("sshd.log").display());
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd { dir, port, ip: ip.to_owned(), child }
    }

    /// Replaces the KRL atomically; sshd reads `RevokedKeys` at every authentication.
    pub fn set_krl(&self, krl: &[u8]) {
        let tmp = self.dir.path().join("krl.new");
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(krl).unwrap();
        f.sync_all().unwrap();
        std::fs::rename(tmp, self.dir.path().join("krl")).unwrap();
    }

    /// The node's host key, as an OpenSSH public key line.
    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_ed25519.pub")).unwrap().trim().to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Runs `ssh LOGIN@node echo portcullis-ok` with exactly this key and certificate.
    pub fn ssh(&self, login: &str, key: &Path, cert: &Path) -> Output {
        let mut cmd = Command::new("ssh");
        cmd.args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
            .arg("-o")
            .arg(format!("CertificateFile={}", cert.display()))
            .arg("-i")
            .arg(key);
        self.run_ssh(cmd, login)
    }

    /// Runs the same command with whatever the ssh-agent at `socket` holds.
    pub fn ssh_with_agent(&self, login: &str, socket: &Path) -> Output {
        let mut cmd = Command::new("ssh");
        cmd.arg("-o").arg(format!("IdentityAgent={}", socket.display()));
        self.run_ssh(cmd, login)
    }

    fn run_ssh(&self, mut cmd: Command, login: &str) -> Output {
        cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{login}@127.0.0.1"))
            .arg("echo portcullis-ok")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ssh -W target` with this key and certificate: a `direct-tcpip` channel through
    /// this sshd (port forwarding), its output what `target` sent first.
    pub fn forward_stdio(&self, login: &str, key: &Path, cert: &Path, target: &str) -> Output {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10"])
            .arg("-o")
            .arg(format!("CertificateFile={}", cert.display()))
            .arg("-i")
            .arg(key)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-W")
            .arg(target)
            .arg(format!("{login}@127.0.0.1"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// True when the login worked and ran the command.
    pub fn accepts(&self, login: &str, key: &Path, cert: &Path) -> bool {
        let out = self.ssh(login, key, cert);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "portcullis-ok"
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
