//! A node for `portcullis-enroll --root`: a directory laid out like `/` (optionally
//! Proxmox-VE-shaped) whose `etc/ssh/sshd_config` is a complete throwaway config, and a
//! real `sshd` started from it on a free loopback port, with an ordinary authorized key
//! whose login must keep working whatever enrollment does.

use crate::sshd::SSHD;
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NODE: &str = "pve-test1";

/// Runs a `portcullis-enroll` command with `--json`: its exit code, its one JSON result,
/// and its output.
pub fn run(mut cmd: Command) -> (i32, serde_json::Value, Output) {
    let out = cmd.arg("--json").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("not one JSON result: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), json, out)
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    /// Where sshd listens: `ip:port`.
    pub ip: String,
    pub port: u16,
    /// The ordinary (pre-existing) root key.
    pub user_key: PathBuf,
    child: Child,
}

fn keygen(path: &Path, kind: &str) -> String {
    let st = Command::new("ssh-keygen").args(["-q", "-t", kind, "-N", "", "-C", "", "-f"]).arg(path).status().unwrap();
    assert!(st.success());
    std::fs::read_to_string(format!("{}.pub", path.display())).unwrap()
}

fn write(path: &Path, text: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

impl Node {
    /// `pve`: lay out `/etc/pve` with the cluster's authorized keys and known hosts, and
    /// `/root/.ssh/authorized_keys` as a symlink into it (as Proxmox VE does).
    pub fn start(pve: bool) -> Node {
        Node::start_with(pve, |_| {})
    }

    /// `tweak` runs on the root before sshd starts (e.g. to add a conflicting drop-in).
    pub fn start_with(pve: bool, tweak: impl FnOnce(&Path)) -> Node {
        Node::start_on(pve, "127.0.0.1", tweak)
    }

    /// [`Node::start_with`] with sshd listening only on `ip` (a loopback address other
    /// than 127.0.0.1 stands in for a management address).
    pub fn start_on(pve: bool, ip: &str, tweak: impl FnOnce(&Path)) -> Node {
        assert!(Path::new(SSHD).exists(), "{SSHD} missing: run ./scripts/test.sh, which installs openssh-server");
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::Builder::new().prefix("enroll-node-").tempdir().unwrap();
        let root = dir.path().join("root");
        let r = |p: &str| root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(r("/etc/ssh/sshd_config.d")).unwrap();
        keygen(&r("/etc/ssh/ssh_host_ed25519_key"), "ed25519");
        keygen(&r("/etc/ssh/ssh_host_ecdsa_key"), "ecdsa");
        let user_key = dir.path().join("id_user");
        let user_pub = keygen(&user_key, "ed25519");
        write(&r("/etc/hostname"), format!("{NODE}\n"));
        write(&r("/etc/os-release"), std::fs::read("/etc/os-release").unwrap_or_default());
        write(
            &r("/etc/ssh/sshd_config.d/10-local.conf"),
            "# a local setting enrollment must leave alone\nClientAliveInterval 120\n",
        );
        std::fs::create_dir_all(r("/root/.ssh")).unwrap();
        if pve {
            write(&r("/etc/pve/priv/authorized_keys"), format!("# cluster keys\n{user_pub}"));
            write(
                &r(&format!("/etc/pve/nodes/{NODE}/ssh_known_hosts")),
                format!("{NODE} {}", std::fs::read_to_string(r("/etc/ssh/ssh_host_ed25519_key.pub")).unwrap()),
            );
            write(&r("/etc/pve/corosync.conf"), "totem {\n  cluster_name: testcluster\n}\n");
            std::os::unix::fs::symlink(r("/etc/pve/priv/authorized_keys"), r("/root/.ssh/authorized_keys")).unwrap();
        } else {
            write(&r("/root/.ssh/authorized_keys"), user_pub);
        }
        let port = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        // The node's own /root is its sessions' home, not the machine's (see `Sshd`).
        let config = format!(
            "# throwaway node config (portcullis tests)\nInclude {root}/etc/ssh/sshd_config.d/*.conf\n\
             Port {port}\nListenAddress {ip}\nHostKey {root}/etc/ssh/ssh_host_ed25519_key\n\
             HostKey {root}/etc/ssh/ssh_host_ecdsa_key\nPidFile none\nStrictModes no\nUsePAM no\n\
             SetEnv HOME={root}/root\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             AuthorizedKeysFile {root}/root/.ssh/authorized_keys\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
            root = root.display()
        );
        write(&r("/etc/ssh/sshd_config"), config);
        tweak(&root);
        let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(r("/etc/ssh/sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let node = Node { dir, root, ip: ip.to_owned(), port, user_key, child };
        node.wait_listening();
        node
    }

    /// Waits until sshd accepts connections, and has come back from every SIGHUP its log
    /// shows (a reload re-executes it: its old listener still accepts for a moment, and
    /// a login that reaches it is dropped).
    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            let restarted = log.matches("Server listening on").count() > log.matches("Received SIGHUP").count();
            if restarted && TcpStream::connect((self.ip.as_str(), self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "sshd is not listening; log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reloads sshd as `reload_cmd` does (the machine's own restart, in a test) and waits
    /// until it listens again with the files as they are now.
    pub fn reload_and_wait(&self) {
        let listened = || self.log().matches("Server listening on").count();
        let before = listened();
        assert!(Command::new("sh").args(["-c", &self.reload_cmd()]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while listened() <= before {
            assert!(Instant::now() < deadline, "sshd did not come back from its reload; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_listening();
    }

    pub fn path(&self, logical: &str) -> PathBuf {
        self.root.join(logical.trim_start_matches('/'))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// `--reload-cmd` for this node's sshd: SIGHUP, as `systemctl reload ssh` sends.
    pub fn reload_cmd(&self) -> String {
        format!("kill -HUP {}", self.child.id())
    }

    /// `portcullis-enroll --root … --reload-cmd …` (add the subcommand and its flags).
    pub fn enroll_cmd(&self) -> Command {
        let mut cmd = Command::new(crate::bin("portcullis-enroll"));
        cmd.arg("--root").arg(&self.root).arg("--reload-cmd").arg(self.reload_cmd());
        cmd.env_remove("PORTCULLIS_ENROLL_FAILPOINT").stdin(Stdio::null());
        cmd
    }

    fn ssh(&self, login: &str, args: &[String]) -> Output {
        // Right after a reload sshd may still be re-executing itself.
        self.wait_listening();
        Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
            .args(args)
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{login}@{}", self.ip))
            .arg("echo portcullis-ok")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(out: &Output) -> bool {
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "portcullis-ok"
    }

    /// The original way in: root with the pre-existing authorized key.
    pub fn ordinary_login_works(&self) -> bool {
        Node::ok(&self.ssh("root", &["-i".into(), self.user_key.display().to_string()]))
    }

    pub fn cert_login_works(&self, login: &str, key: &Path, cert: &Path) -> bool {
        Node::ok(&self.ssh(
            login,
            &["-i".into(), key.display().to_string(), "-o".into(), format!("CertificateFile={}", cert.display())],
        ))
    }

    /// Every entry under the root: path → kind, bytes (hex of SHA-256 would hide diffs
    /// in messages; files are small) and mode.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        snapshot(&self.root)
    }
}

pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let value = if meta.file_type().is_symlink() {
                format!("symlink -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {}", String::from_utf8_lossy(&std::fs::read(&path).unwrap()))
            };
            out.insert(rel, value);
        }
    }
    out
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- node sshd log ---\n{}", self.log());
        }
    }
}

/// The common assertion of every failure case.
pub fn assert_untouched(node: &Node, before: &BTreeMap<String, String>, what: &str) {
    let after = node.snapshot();
    if &after != before {
        let changed: Vec<_> = before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
        panic!("{what}: the node changed: {changed:?}");
    }
    assert!(node.ordinary_login_works(), "{what}: the ordinary key login no longer works");
}
