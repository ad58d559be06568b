//! A private OpenLDAP `slapd` per test: its own cn=config (built with `slapadd -n0`), an
//! mdb database for `dc=example,dc=org` in a temporary directory, the memberof, refint
//! and ppolicy overlays, on a free port of 127.0.0.1; killed on drop. With [`SlapdTls`]
//! it also serves StartTLS on that port and `ldaps://` on a second one.
//!
//! It logs at `stats` level to a file, so a test can prove what the CA did (or did not)
//! ask the directory: [`Slapd::log_since`].

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const SLAPD: &str = "/usr/sbin/slapd";
pub const SLAPADD: &str = "/usr/sbin/slapadd";
pub const LDAPADD: &str = "/usr/bin/ldapadd";
pub const LDAPMODIFY: &str = "/usr/bin/ldapmodify";
pub const LDAPPASSWD: &str = "/usr/bin/ldappasswd";

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
pub const ROOT_PW: &str = "root-secret-not-for-production";

/// TLS material for the `ldaps://` listener and StartTLS (PEM).
#[derive(Debug, Clone)]
pub struct SlapdTls {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA that signed `cert_pem` (`olcTLSCACertificateFile`).
    pub ca_pem: String,
}

/// What a test may change in the server's configuration ([`Slapd::start_configured`]).
#[derive(Debug, Clone, Default)]
pub struct SlapdConfig {
    pub tls: Option<SlapdTls>,
    /// Lines appended to the mdb database's entry, e.g. `olcLimits: …` or `olcSizeLimit: 3`.
    pub database: String,
    /// `olcPPolicyDefault`: the DN of the password policy entry that applies to everyone
    /// (the test adds that entry).
    pub ppolicy_default: Option<String>,
}

/// Where [`config_ldif`] finds the TLS files it names.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

pub struct Slapd {
    /// `ldap://127.0.0.1:PORT`
    pub url: String,
    /// `ldaps://127.0.0.1:PORT2` when started with TLS.
    pub ldaps_url: Option<String>,
    pub log_path: PathBuf,
    dir: TempDir,
    child: Option<Child>,
}

fn require_binaries() {
    for bin in [SLAPD, SLAPADD, LDAPADD, LDAPMODIFY, LDAPPASSWD] {
        assert!(
            Path::new(bin).is_file(),
            "{bin} is missing: the LDAP tests need OpenLDAP (slapd, ldap-utils); run ./scripts/test.sh, which installs them"
        );
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn config_ldif(dir: &Path, tls: Option<&TlsFiles>, config: &SlapdConfig) -> String {
    let d = dir.display();
    let mut database = config.database.clone();
    if !database.is_empty() && !database.ends_with('\n') {
        database.push('\n');
    }
    let ppolicy_default = match &config.ppolicy_default {
        Some(dn) => format!("olcPPolicyDefault: {dn}\n"),
        None => String::new(),
    };
    let tls_attrs = match tls {
        Some(f) => format!(
            "olcTLSCertificateFile: {}\nolcTLSCertificateKeyFile: {}\nolcTLSCACertificateFile: {}\n",
            f.cert.display(),
            f.key.display(),
            f.ca.display()
        ),
        None => String::new(),
    };
    format!(
        "dn: cn=config\nobjectClass: olcGlobal\ncn: config\nolcPidFile: {d}/slapd.pid\nolcArgsFile: {d}/slapd.args\n{tls_attrs}\n\
         dn: cn=module{{0}},cn=config\nobjectClass: olcModuleList\ncn: module{{0}}\nolcModulePath: /usr/lib/ldap\n\
         olcModuleLoad: back_mdb\nolcModuleLoad: memberof\nolcModuleLoad: refint\nolcModuleLoad: ppolicy\n\n\
         dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n\n\
         include: file:///etc/ldap/schema/core.ldif\n\n\
         include: file:///etc/ldap/schema/cosine.ldif\n\n\
         include: file:///etc/ldap/schema/inetorgperson.ldif\n\n\
         include: file:///etc/ldap/schema/nis.ldif\n\n\
         dn: olcDatabase={{-1}}frontend,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcFrontendConfig\n\
         olcDatabase: {{-1}}frontend\n\n\
         dn: olcDatabase={{0}}config,cn=config\nobjectClass: olcDatabaseConfig\nolcDatabase: {{0}}config\n\
         olcAccess: {{0}}to * by * none\n\n\
         dn: olcDatabase={{1}}mdb,cn=config\nobjectClass: olcDatabaseConfig\nobjectClass: olcMdbConfig\n\
         olcDatabase: {{1}}mdb\nolcDbDirectory: {d}/db\nolcSuffix: {SUFFIX}\nolcRootDN: {ROOT_DN}\nolcRootPW: {ROOT_PW}\n\
         olcDbMaxSize: 33554432\n{database}\
         olcAccess: {{0}}to attrs=userPassword by self =xw by anonymous auth by * none\n\
         olcAccess: {{1}}to * by users read by * none\n\n\
         dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config\nobjectClass: olcOverlayConfig\n\
         objectClass: olcMemberOf\nolcOverlay: {{0}}memberof\nolcMemberOfRefInt: TRUE\n\n\
         dn: olcOverlay={{1}}refint,olcDatabase={{1}}mdb,cn=config\nobjectClass: olcOverlayConfig\n\
         objectClass: olcRefintConfig\nolcOverlay: {{1}}refint\nolcRefintAttribute: member\n\n\
         dn: olcOverlay={{2}}ppolicy,olcDatabase={{1}}mdb,cn=config\nobjectClass: olcOverlayConfig\n\
         objectClass: olcPPolicyConfig\nolcOverlay: {{2}}ppolicy\n{ppolicy_default}"
    )
}

impl Slapd {
    /// A plain `ldap://` directory with just the suffix entry.
    pub fn start() -> Slapd {
        Slapd::start_with(None)
    }

    pub fn start_with(tls: Option<SlapdTls>) -> Slapd {
        Slapd::start_configured(SlapdConfig { tls, ..SlapdConfig::default() })
    }

    pub fn start_configured(config: SlapdConfig) -> Slapd {
        let tls = config.tls.clone();
        require_binaries();
        let dir = tempfile::Builder::new().prefix("slapd-test-").tempdir().unwrap();
        let confdir = dir.path().join("slapd.d");
        std::fs::create_dir(&confdir).unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let tls_files = tls.as_ref().map(|t| {
            let files = TlsFiles {
                cert: dir.path().join("cert.pem"),
                key: dir.path().join("key.pem"),
                ca: dir.path().join("ca.pem"),
            };
            std::fs::write(&files.cert, &t.cert_pem).unwrap();
            std::fs::write(&files.key, &t.key_pem).unwrap();
            std::fs::write(&files.ca, &t.ca_pem).unwrap();
            files
        });
        let ldif = dir.path().join("config.ldif");
        std::fs::write(&ldif, config_ldif(dir.path(), tls_files.as_ref(), &config)).unwrap();
        let out = Command::new(SLAPADD).arg("-n0").arg("-F").arg(&confdir).arg("-l").arg(&ldif).output().unwrap();
        assert!(
            out.status.success(),
            "slapadd -n0 failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        // Two probes in a row can get the same port back; slapd would then fail to bind.
        let tls_port = tls.is_some().then(|| std::iter::repeat_with(free_port).find(|p| *p != port).unwrap());
        let mut slapd = Slapd {
            url: format!("ldap://127.0.0.1:{port}"),
            ldaps_url: tls_port.map(|p| format!("ldaps://127.0.0.1:{p}")),
            log_path: dir.path().join("slapd.log"),
            dir,
            child: None,
        };
        slapd.run();
        slapd.ldapadd(&format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n"
        ));
        slapd
    }

    fn run(&mut self) {
        let mut listen = format!("{}/", self.url);
        if let Some(ldaps) = &self.ldaps_url {
            listen.push_str(&format!(" {ldaps}/"));
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).unwrap();
        // `-d stats`: stay in the foreground and log connections, binds and searches.
        let child = Command::new(SLAPD)
            .arg("-F")
            .arg(self.dir.path().join("slapd.d"))
            .args(["-h", &listen, "-d", "stats"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = self.url.trim_start_matches("ldap://").to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("slapd exited with {status}; its log ({}):\n{}", self.log_path.display(), self.log());
            }
            assert!(Instant::now() < deadline, "slapd did not listen within 20 s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (the directory is "down"); [`Slapd::restart`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server without closing anything (SIGSTOP): the kernel still accepts TCP
    /// connections for it and every question hangs — a directory that never answers.
    /// [`Slapd::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("slapd is running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts the killed server again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    fn ldap_tool(&self, tool: &str, ldif: &str) {
        self.ldap_tool_with(tool, &[], ldif);
    }

    fn ldap_tool_with(&self, tool: &str, extra: &[&str], ldif: &str) {
        let mut child = Command::new(tool)
            .args(["-x", "-H", &self.url, "-D", ROOT_DN, "-w", ROOT_PW])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(ldif.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}{}\nLDIF:\n{ldif}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Adds entries as the root DN; panics on failure.
    pub fn ldapadd(&self, ldif: &str) {
        self.ldap_tool(LDAPADD, ldif);
    }

    /// Applies an LDIF change record as the root DN; panics on failure.
    pub fn ldapmodify(&self, ldif: &str) {
        self.ldap_tool(LDAPMODIFY, ldif);
    }

    /// [`Slapd::ldapmodify`] with the ManageDsaIT control (`-M`), which treats referral
    /// objects as plain entries (to add or delete one).
    pub fn ldapmodify_manage_dsait(&self, ldif: &str) {
        self.ldap_tool_with(LDAPMODIFY, &["-M"], ldif);
    }

    /// The user at `dn` changes their own password (RFC 3062 password modify, bound as
    /// themselves), as a user told "change your password" would; panics on failure.
    pub fn change_own_password(&self, dn: &str, old: &str, new: &str) {
        let out = Command::new(LDAPPASSWD)
            .args(["-x", "-H", &self.url, "-D", dn, "-w", old, "-a", old, "-s", new])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ldappasswd as {dn} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A mark to pass to [`Slapd::log_since`].
    pub fn log_mark(&self) -> usize {
        self.log().len()
    }

    /// What slapd logged after `mark`.
    pub fn log_since(&self, mark: usize) -> String {
        self.log().get(mark..).unwrap_or_default().to_owned()
    }

    /// Writes a file into the server's temporary directory (for configs and secrets
    /// of the CA under test) and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- slapd log ({}) ---\n{}", self.log_path.display(), self.log());
        }
    }
}
