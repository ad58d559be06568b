//! Command-line grammar.

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "portcullis", version, about = "Log in to a Portcullis CA and use short-lived SSH certificates")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Authenticate, get a certificate for a local key, and load it into ssh-agent.
    Login(LoginArgs),
    /// Show the current certificate and session.
    Status,
    /// End the session, remove the certificate and key from disk and from ssh-agent.
    Logout,
    /// Print an ssh_config block that uses the certificate.
    SshConfig(SshConfigArgs),
    /// Administration (needs the matching permission in policy).
    Admin(AdminArgs),
    /// Print a shell completion script: `portcullis completions bash > /etc/bash_completion.d/portcullis`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff): `portcullis man | man -l -`.
    Man,
}

#[derive(Args)]
pub struct AdminArgs {
    /// Print what the CA answered as JSON (for scripts) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Args)]
pub struct LoginArgs {
    /// CA URL, e.g. https://ca.example.com:8443 (remembered after the first login).
    #[arg(long)]
    pub ca: Option<String>,
    /// Pin of the CA's TLS public key as printed by the server (SHA256:… or sha256//…).
    #[arg(long)]
    pub ca_fingerprint: Option<String>,
    /// Username (default: the previous one, else $USER).
    #[arg(long, short)]
    pub user: Option<String>,
    /// Ask only this password source: `ldap` signs in a directory user whose name a
    /// local user also has (the local user is asked first otherwise); `--user ldap:NAME`
    /// does the same.
    #[arg(long, value_parser = ["local", "ldap"], conflicts_with = "oidc")]
    pub source: Option<String>,
    /// Read the password from the first line of standard input (for scripts).
    #[arg(long)]
    pub password_stdin: bool,
    /// Sign in with a password even when the CA offers single sign-on.
    #[arg(long, conflicts_with = "oidc")]
    pub password: bool,
    /// Choose a new password at this sign-in (local users; asked for anyway when the
    /// current one is a one-time password). With --password-stdin it is the next line.
    #[arg(long, conflicts_with = "oidc")]
    pub change_password: bool,
    /// Sign in through the CA's OpenID Connect provider (device flow: a URL and a code to
    /// open in any browser, so it works on a headless machine).
    #[arg(long, conflicts_with_all = ["password_stdin", "user"])]
    pub oidc: bool,
    /// Make this a recent sign-in, for devices whose rule asks for one
    /// (`fresh_auth_within`): single sign-on asks for the password again even while the
    /// identity provider remembers you. A password sign-in is always recent.
    #[arg(long)]
    pub fresh: bool,
    /// Requested certificate lifetime, e.g. 1h (policy caps it).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Use only these roles (repeatable); needed for forced-command roles.
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Certify a key of your own instead of the CLI's (`~/.ssh/portcullis/id_ed25519`):
    /// a security key's, say (`ssh-keygen -t ed25519-sk`), which roles asking for a touch
    /// or a PIN (`verify-required`) need. PATH is the private key file (a security key's
    /// handle); its public half is read from PATH.pub and the certificate written to
    /// PATH-cert.pub, where ssh finds it. The key itself is never read or changed.
    #[arg(long, value_name = "PATH")]
    pub key: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct SshConfigArgs {
    /// Host patterns the block applies to (with `--bastion`: the nodes reached in jump mode).
    #[arg(long, default_value = "*")]
    pub hosts: String,
    /// `HOST:PORT` of a Portcullis bastion: also print its host block (terminated mode,
    /// `ssh root%NODE@portcullis`) and make `--hosts` jump through it.
    #[arg(long)]
    pub bastion: Option<String>,
    /// The alias of the bastion's host block.
    #[arg(long, default_value = "portcullis")]
    pub alias: String,
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Local users.
    #[command(subcommand)]
    User(UserCommand),
    /// Revoke certificates by serial, key, or user; the KRL is updated at once.
    Revoke(RevokeArgs),
    /// Certificates issued, newest first (optionally for one user).
    Certs {
        #[arg(long)]
        user: Option<String>,
        /// How many of the newest to show (the CA's default is 500, its most 10,000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: Option<u32>,
    },
    /// CA keys and their rotation.
    #[command(subcommand)]
    Ca(CaCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The policy directory.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The node inventory.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Enrollment tokens for `portcullis-enroll` (nodes) or for bastions and agents.
    #[command(subcommand)]
    EnrollToken(EnrollTokenCommand),
    /// Live sessions through the bastions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Enrolled edge agents.
    #[command(subcommand)]
    Agents(ServicesCommand),
    /// Enrolled bastions.
    #[command(subcommand)]
    Bastions(ServicesCommand),
    /// Hardware facts collected by discovery, and Proxmox VE clusters.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// API secrets (Proxmox VE tokens): stored sealed, never shown again.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Rules of the policy (credential, console, login and discovery rules).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Session recordings (rules with `record = true`), for holders of
    /// `recordings.read`; the CA audits every playback and export.
    #[command(subcommand)]
    Recordings(RecordingsCommand),
}

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Which devices a rule reaches: matched by its targets, in its scope, per agent, and
    /// where an earlier rule decides instead. With --dir, a policy that is not loaded yet
    /// (nothing is saved).
    Preview {
        /// One rule; every rule (of --dir, or of the loaded policy) when absent.
        rule: Option<String>,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum InventoryCommand {
    /// A node's current hardware facts and their history of changes.
    Show { node: String },
    /// Proxmox VE clusters collected through credential rules.
    Clusters,
    /// One cluster's nodes, guests, storage, interfaces, disks and Ceph.
    Cluster {
        /// `AGENT/CLUSTER`, as `inventory clusters` lists it.
        id: String,
    },
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Store a secret. The value is read from stdin (--secret-stdin) or prompted without echo.
    Add {
        name: String,
        #[arg(long, default_value = "proxmox_api_token")]
        kind: String,
        /// The public half, e.g. `serviceradar@pve!serviceradar`.
        #[arg(long)]
        identity: String,
        #[arg(long)]
        secret_stdin: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Replace a secret's value (identity and TLS policy stay unless given).
    Rotate {
        name: String,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        secret_stdin: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Remove a secret; rules that name it collect nothing until it is added again.
    Remove { name: String },
    /// Names, identities, fingerprints and TLS policies; never a value.
    List,
}

/// How the API's certificate is checked; one of them.
#[derive(Args)]
#[group(multiple = false)]
pub struct TlsArgs {
    /// The server certificate's SHA-256 fingerprint (`pvenode cert info`; colons optional).
    #[arg(long)]
    pub tls_pin_sha256: Option<String>,
    /// PEM file of the CA certificates that sign the API's certificate.
    #[arg(long)]
    pub tls_ca_bundle: Option<std::path::PathBuf>,
    /// No certificate check at all: for a lab only.
    #[arg(long)]
    pub tls_danger_skip_verify: bool,
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    List,
    /// Close a live session (its bastion does so within about a second).
    Kill {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum RecordingsCommand {
    /// Recordings, newest first.
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
    },
    /// Replays a recording's output on this terminal with its timing (titles,
    /// clipboard writes and other terminal commands in it are dropped).
    Play {
        /// Session id.
        id: String,
        /// Faster (2) or slower (0.5) than it happened.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longer pauses are shortened to this many seconds.
        #[arg(long, default_value_t = 2.0)]
        idle_limit: f64,
    },
    /// Writes a recording as an asciicast v2 file (`asciinema play` reads it).
    Export {
        /// Session id.
        id: String,
        /// The file (default: standard output).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ServicesCommand {
    List,
}

#[derive(Subcommand)]
pub enum EnrollTokenCommand {
    /// Create a token (shown once; the CA keeps only its hash).
    Create {
        /// Lifetime, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many nodes may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Tags given to nodes enrolled with it: key=value, comma-separated or repeated.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// The agent that serves these nodes.
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        partition: Option<String>,
        /// A token for enrolling a bastion or an edge agent instead of a node.
        #[arg(long, value_parser = ["agent", "bastion"], conflicts_with_all = ["tags", "agent", "partition", "node"])]
        service: Option<String>,
        /// Bind the token to this node name (needed to claim a name added with `node add`).
        #[arg(long)]
        node: Option<String>,
    },
    List,
    /// End a token before its time (its id, from `list`).
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a local user (password prompted, or --password-stdin, or --no-password).
    Add {
        name: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
    },
    /// Disable a user: ends their sessions and revokes their live certificates.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Free a directory or identity-provider account name (ldap:NAME, oidc:NAME) for the
    /// next directory entry or IdP account that signs in with it; ends what the previous
    /// holder had under it (sessions, live certificates).
    Release {
        account: String,
    },
    /// Replace a user's groups (comma-separated; empty for none).
    SetGroups {
        name: String,
        #[arg(value_delimiter = ',')]
        groups: Vec<String>,
    },
    SetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        /// A reset: the password opens no session until the user replaces it at their
        /// next sign-in (`portcullis login` asks), and their sessions end now.
        #[arg(long)]
        one_time: bool,
    },
    List,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct RevokeArgs {
    #[arg(long)]
    pub serial: Option<String>,
    /// File with an OpenSSH public key: the key and every certificate for it.
    #[arg(long)]
    pub key: Option<std::path::PathBuf>,
    #[arg(long)]
    pub user: Option<String>,
}

#[derive(Subcommand)]
pub enum CaCommand {
    List,
    /// Publish a new key for PURPOSE (user, host, internal) without signing with it yet.
    Rotate {
        purpose: String,
    },
    /// Start signing with the published key; the old one stays trusted.
    Activate {
        purpose: String,
    },
    /// Stop trusting an old key.
    Retire {
        fingerprint: String,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exits non-zero if a record was edited or deleted.
    Verify,
    List {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Re-read the policy directory; an invalid policy is refused and the old one kept.
    Reload,
    /// Check a policy directory offline (no CA, no login): every `*.toml` file is loaded
    /// as the CA would load it; errors are printed as `file:line:column: message` and the
    /// exit status is 1. Usable in a Git pre-commit hook.
    Check {
        /// The directory holding the policy's `*.toml` files.
        dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Add a node (refused when the name exists: use `update`).
    Add {
        name: String,
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// key=value, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        partition: Option<String>,
        /// The port the node's sshd listens on (default 22).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        ssh_port: Option<u16>,
    },
    /// Change only what is given; everything else (pinned host keys included) stays.
    Update {
        name: String,
        /// Replaces the addresses (repeatable).
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// Sets a tag: key=value, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Removes a tag by key, repeatable.
        #[arg(long = "remove-tag")]
        remove_tags: Vec<String>,
        /// Empty to clear.
        #[arg(long)]
        agent: Option<String>,
        /// Empty to clear.
        #[arg(long)]
        partition: Option<String>,
        /// Re-key: replace the pinned host keys with these public key files (repeatable);
        /// the node's host certificates are revoked and reissued at its next refresh.
        #[arg(long = "host-key")]
        host_keys: Vec<std::path::PathBuf>,
        /// The port the node's sshd listens on.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        ssh_port: Option<u16>,
    },
    /// Remove a node: its record, principals and pinned keys; its host certificates are
    /// revoked.
    Remove {
        name: String,
    },
    List,
    /// A node's AuthorizedPrincipalsFile contents.
    Principals {
        name: String,
        /// Print only the file for this login.
        #[arg(long)]
        login: Option<String>,
    },
}
