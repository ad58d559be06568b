//! `portcullis admin …`: thin calls to the CA's admin API with the saved session.

use crate::api::Api;
use crate::args::{
    AdminCommand, AuditCommand, CaCommand, EnrollTokenCommand, InventoryCommand, NodeCommand, PolicyCommand,
    RulesCommand, ServicesCommand, SessionsCommand, UserCommand,
};
use crate::login::read_password;
use crate::shared::{ago, bytes, policy_files, print_json, seg};
use crate::state::Paths;
use anyhow::{anyhow, bail};
use portcullis_policies::{Policy, PolicySource};
use portcullis_proto::*;
use secrecy::ExposeSecret;
use serde_json::json;
use std::collections::BTreeMap;

fn api() -> anyhow::Result<Api> {
    let session = Paths::new()?.load_session().ok_or_else(|| anyhow!("not logged in: run `portcullis login` first"))?;
    let token = session.token.as_deref().ok_or_else(|| anyhow!("logged out: run `portcullis login`"))?;
    Ok(Api::new(&session.ca_url, session.ca_fingerprint.as_deref())?.with_token(token))
}

/// `admin policy check DIR`: the directory's `*.toml` files loaded as the CA loads them
/// (in name order, as one policy), every error printed with its file, line and column.
fn check_policy_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let texts = policy_files(dir)?;
    let sources: Vec<PolicySource<'_>> = texts.iter().map(|(name, text)| PolicySource { name, text }).collect();
    match Policy::from_sources(&sources) {
        Ok(policy) => {
            println!(
                "Policy OK: {} file(s), {} role(s), {} rule(s), {} binding(s), {} deny statement(s).",
                texts.len(),
                policy.roles().count(),
                policy.rules().count(),
                policy.bindings().len(),
                policy.denies().count()
            );
            Ok(())
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            bail!("the policy in {} is invalid ({} error(s))", dir.display(), errors.0.len())
        }
    }
}

pub async fn run(cmd: AdminCommand, json: bool) -> anyhow::Result<()> {
    // Offline: neither a session nor the CA.
    if let AdminCommand::Policy(PolicyCommand::Check { dir }) = &cmd {
        return check_policy_dir(dir);
    }
    let api = api()?;
    match cmd {
        AdminCommand::User(cmd) => user(&api, cmd, json).await,
        AdminCommand::Revoke(args) => {
            let body = match (args.serial, args.key, args.user) {
                (Some(serial), _, _) => RevokeRequest { serial: Some(serial), ..Default::default() },
                (_, Some(path), _) => RevokeRequest {
                    public_key: Some(
                        std::fs::read_to_string(&path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?,
                    ),
                    ..Default::default()
                },
                (_, _, Some(user)) => RevokeRequest { username: Some(user), ..Default::default() },
                _ => bail!("give --serial, --key or --user"),
            };
            let r: RevokeResponse = api.post("/v1/admin/revoke", &body).await?;
            println!(
                "Revoked {} certificate(s){}; KRL version {}.",
                r.certificates_revoked,
                if r.key_revoked { " and the key" } else { "" },
                r.krl_version
            );
            Ok(())
        }
        AdminCommand::Certs { user, limit } => {
            let mut query = Vec::new();
            if let Some(u) = user {
                query.push(format!("user={}", seg(&u)?));
            }
            if let Some(limit) = limit {
                query.push(format!("limit={limit}"));
            }
            let path = if query.is_empty() {
                "/v1/admin/certs".to_owned()
            } else {
                format!("/v1/admin/certs?{}", query.join("&"))
            };
            print_json(&api.get::<Vec<IssuedCert>>(&path).await?)
        }
        AdminCommand::Ca(cmd) => match cmd {
            CaCommand::List => {
                let keys = api.get::<Vec<CaKeyInfo>>("/v1/admin/ca/keys").await?;
                if json {
                    return print_json(&keys);
                }
                for k in keys {
                    println!("{:<9} {:<9} {} {}", k.purpose, k.state, k.fingerprint, k.algorithm);
                }
                Ok(())
            }
            CaCommand::Rotate { purpose } => {
                let k: CaKeyInfo = api.post(&format!("/v1/admin/ca/{}/rotate", seg(&purpose)?), &json!({})).await?;
                println!("Published new {} CA key {} (pending).", k.purpose, k.fingerprint);
                println!(
                    "Let nodes refresh their trusted keys, then run `portcullis admin ca activate {}`.",
                    k.purpose
                );
                Ok(())
            }
            CaCommand::Activate { purpose } => {
                api.post_unit(&format!("/v1/admin/ca/{}/activate", seg(&purpose)?), &json!({})).await?;
                println!("The pending {purpose} CA key now signs; the previous key stays trusted until retired.");
                Ok(())
            }
            CaCommand::Retire { fingerprint } => {
                api.post_unit("/v1/admin/ca/retire", &json!({ "fingerprint": fingerprint })).await?;
                println!("Retired {fingerprint}.");
                Ok(())
            }
        },
        AdminCommand::Audit(AuditCommand::Verify) => {
            let r: AuditVerifyResponse = api.get("/v1/admin/audit/verify").await?;
            if r.ok {
                println!("Audit log intact: {} records, hash chain verified.", r.records);
                Ok(())
            } else {
                bail!(
                    "audit log TAMPERED at record {}: {}",
                    r.first_bad_seq.map(|s| s.to_string()).unwrap_or_default(),
                    r.problem.unwrap_or_default()
                )
            }
        }
        AdminCommand::Audit(AuditCommand::List { after, limit }) => {
            let records = api.get::<Vec<AuditRecord>>(&format!("/v1/admin/audit?after={after}&limit={limit}")).await?;
            if json {
                return print_json(&records);
            }
            for r in records {
                println!("{} {} {}", r.seq, r.at, r.payload);
            }
            Ok(())
        }
        AdminCommand::Policy(PolicyCommand::Check { dir }) => check_policy_dir(&dir),
        AdminCommand::Policy(PolicyCommand::Reload) => {
            let r: PolicyReloadResponse = api.post("/v1/admin/policy/reload", &json!({})).await?;
            if r.changed {
                println!(
                    "Policy reloaded ({}): added {:?}, removed {:?}, changed {:?}",
                    r.digest, r.added, r.removed, r.modified
                );
            } else {
                println!("Policy unchanged ({}).", r.digest);
            }
            Ok(())
        }
        AdminCommand::Node(cmd) => node(&api, cmd).await,
        AdminCommand::EnrollToken(cmd) => enroll_token(&api, cmd, json).await,
        AdminCommand::Sessions(cmd) => sessions(&api, cmd, json).await,
        AdminCommand::Agents(ServicesCommand::List) => services(&api, "/v1/admin/agents", json).await,
        AdminCommand::Bastions(ServicesCommand::List) => services(&api, "/v1/admin/bastions", json).await,
        AdminCommand::Inventory(InventoryCommand::Show { node }) => inventory(&api, &node, json).await,
        AdminCommand::Inventory(InventoryCommand::Clusters) => crate::pve::clusters(&api, json).await,
        AdminCommand::Inventory(InventoryCommand::Cluster { id }) => crate::pve::cluster(&api, &id, json).await,
        AdminCommand::Secret(cmd) => crate::pve::secret(&api, cmd, json).await,
        AdminCommand::Recordings(cmd) => crate::recordings::run(&api, cmd, json).await,
        AdminCommand::Rules(RulesCommand::Preview { rule, dir }) => {
            crate::pve::preview(&api, rule.as_deref(), dir.as_deref(), json).await
        }
    }
}

async fn inventory(api: &Api, node: &str, json: bool) -> anyhow::Result<()> {
    use portcullis_proto::discovery::InventoryView;
    let view: InventoryView = api.get(&format!("/v1/admin/inventory/{}", seg(node)?)).await?;
    if json {
        return print_json(&view);
    }
    match (view.last_run_at, view.last_result.as_deref()) {
        (Some(at), Some(result)) => println!("{}: last discovery {} ago: {result}", view.device, ago(at)),
        (Some(at), None) => println!("{}: discovery running (started {} ago)", view.device, ago(at)),
        _ => println!("{}: never discovered", view.device),
    }
    if view.facts.is_empty() {
        println!("No hardware facts stored.");
    } else {
        println!("Facts (unchanged for {}):", ago(view.changed_at));
        let width = view.facts.keys().map(String::len).max().unwrap_or(0);
        for (field, value) in &view.facts {
            println!("  {field:<width$}  {value}");
        }
    }
    if !view.history.is_empty() {
        println!("History (newest first):");
    }
    for entry in &view.history {
        let fields: Vec<String> = entry
            .changes
            .iter()
            .map(|c| {
                let field = c["field"].as_str().unwrap_or("?");
                match (c["change"].as_str(), c["old"].as_str(), c["new"].as_str(), c["value"].as_str()) {
                    (Some("changed"), Some(old), Some(new), _) => format!("{field}: {old} -> {new}"),
                    (Some("added"), _, _, Some(v)) => format!("+{field}: {v}"),
                    (Some("removed"), _, _, Some(v)) => format!("-{field}: {v}"),
                    _ => field.to_owned(),
                }
            })
            .collect();
        println!("  {} ago, run {}: {} change(s)", ago(entry.at), entry.run_id, fields.len());
        for f in fields.iter().take(50) {
            println!("    {f}");
        }
    }
    Ok(())
}

async fn sessions(api: &Api, cmd: SessionsCommand, json: bool) -> anyhow::Result<()> {
    use portcullis_proto::SessionInfo;
    match cmd {
        SessionsCommand::List => {
            let list: Vec<SessionInfo> = api.get("/v1/admin/sessions").await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<32}  {:<12} {:<16} {:<10} {:<10} {:<12} {:<10} {:<15} {:>5} {:>6} {:>6}",
                "SESSION", "USER", "DEVICE", "LOGIN", "MODE", "AGENT", "BASTION", "CLIENT", "AGE", "IN", "OUT"
            );
            for s in &list {
                println!(
                    "{:<32}  {:<12} {:<16} {:<10} {:<10} {:<12} {:<10} {:<15} {:>5} {:>6} {:>6}{}",
                    s.session_id,
                    s.user,
                    s.device,
                    s.login.as_deref().unwrap_or("-"),
                    s.mode,
                    s.agent,
                    s.bastion,
                    s.client_ip,
                    ago(s.opened_at),
                    bytes(s.bytes_from_client),
                    bytes(s.bytes_to_client),
                    if s.kill_requested { "  (closing)" } else { "" }
                );
            }
            if list.is_empty() {
                eprintln!("No live sessions.");
            }
        }
        SessionsCommand::Kill { id } => {
            if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("a session id is 32 hexadecimal characters (see `portcullis admin sessions list`)");
            }
            api.post_unit(&format!("/v1/admin/sessions/{}/kill", id.to_ascii_lowercase()), &json!({})).await?;
            println!("Session {id} will be closed by its bastion within a few seconds.");
        }
    }
    Ok(())
}

async fn services(api: &Api, path: &str, json: bool) -> anyhow::Result<()> {
    use portcullis_proto::bastion::ServiceInfo;
    let list: Vec<ServiceInfo> = api.get(path).await?;
    if json {
        return print_json(&list);
    }
    println!("{:<24} {:<52} {:>8} {:>9}  CONNECTED TO", "NAME", "KEY", "ENROLLED", "LAST SEEN");
    for s in &list {
        println!(
            "{:<24} {:<52} {:>8} {:>9}  {}",
            s.name,
            s.key_fingerprint,
            ago(s.enrolled_at),
            s.last_seen.map(|t| format!("{} ago", ago(t))).unwrap_or_else(|| "never".to_owned()),
            if s.connected_to.is_empty() { "-".to_owned() } else { s.connected_to.join(",") }
        );
    }
    if list.is_empty() {
        eprintln!("None enrolled.");
    }
    Ok(())
}

async fn user(api: &Api, cmd: UserCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { name, groups, password_stdin, no_password } => {
            let password = if no_password {
                None
            } else {
                Some(read_password(&format!("New password for {name}: "), password_stdin)?)
            };
            let body = json!({
                "username": name,
                "groups": groups,
                "password": password.as_ref().map(|p| p.expose_secret()),
            });
            let _: UserInfo = api.post("/v1/admin/users", &body).await?;
            println!("Added user {name} (groups: {}).", groups.join(", "));
        }
        UserCommand::Disable { name } => {
            api.post_unit(&format!("/v1/admin/users/{}/disable", seg(&name)?), &json!({})).await?;
            println!("Disabled {name}; their sessions ended and live certificates were revoked.");
        }
        UserCommand::Release { account } => {
            api.post_unit(&format!("/v1/admin/users/{}/release", seg(&account)?), &json!({})).await?;
            println!("Released {account}; the next account that signs in with it holds it.");
        }
        UserCommand::Enable { name } => {
            api.post_unit(&format!("/v1/admin/users/{}/enable", seg(&name)?), &json!({})).await?;
            println!("Enabled {name}.");
        }
        UserCommand::SetGroups { name, groups } => {
            let groups: Vec<String> = groups.into_iter().filter(|g| !g.is_empty()).collect();
            api.put_unit(
                &format!("/v1/admin/users/{}/groups", seg(&name)?),
                &SetGroupsRequest { groups: groups.clone() },
            )
            .await?;
            println!("{name} is now in: {}", groups.join(", "));
        }
        UserCommand::SetPassword { name, password_stdin, one_time } => {
            let password = read_password(&format!("New password for {name}: "), password_stdin)?;
            api.put_unit(
                &format!("/v1/admin/users/{}/password", seg(&name)?),
                &json!({ "password": password.expose_secret(), "one_time": one_time }),
            )
            .await?;
            match one_time {
                true => println!("One-time password set for {name}: their next sign-in must replace it."),
                false => println!("Password set for {name}."),
            }
        }
        UserCommand::List => {
            let users = api.get::<Vec<UserInfo>>("/v1/admin/users").await?;
            if json {
                return print_json(&users);
            }
            for u in users {
                println!(
                    "{:<20} {:<9} {}",
                    u.username,
                    if u.disabled { "disabled" } else { "active" },
                    u.groups.join(",")
                );
            }
        }
    }
    Ok(())
}

async fn node(api: &Api, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Add { name, addresses, tags, agent, partition, ssh_port } => {
            let record = NodeRecord {
                name: name.clone(),
                addresses,
                tags: key_values(&tags)?,
                agent,
                partition,
                ssh_port,
                ..Default::default()
            };
            let _: NodeRecord = api.post("/v1/admin/nodes", &record).await?;
            println!("Node {name} added.");
        }
        NodeCommand::Update { name, addresses, tags, remove_tags, agent, partition, host_keys, ssh_port } => {
            let host_keys = if host_keys.is_empty() {
                None
            } else {
                let mut lines = Vec::new();
                for path in &host_keys {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow!("cannot read host key {}: {e}", path.display()))?;
                    lines.push(text.trim().to_owned());
                }
                Some(lines)
            };
            let update = portcullis_proto::NodeUpdate {
                addresses: (!addresses.is_empty()).then_some(addresses),
                set_tags: key_values(&tags)?,
                remove_tags,
                agent,
                partition,
                host_keys,
                ssh_port,
            };
            let _: NodeRecord = api.put(&format!("/v1/admin/nodes/{}", seg(&name)?), &update).await?;
            println!("Node {name} updated.");
        }
        NodeCommand::Remove { name } => {
            api.delete(&format!("/v1/admin/nodes/{}", seg(&name)?)).await?;
            println!("Node {name} removed; its host certificates are revoked.");
        }
        NodeCommand::List => print_json(&api.get::<Vec<NodeRecord>>("/v1/admin/nodes").await?)?,
        NodeCommand::Principals { name, login } => {
            let p: NodePrincipals = api.get(&format!("/v1/nodes/{}/principals", seg(&name)?)).await?;
            match login {
                // The file's lines, options included, exactly as enrollment installs them.
                Some(login) => {
                    for line in p.lines.get(&login).into_iter().flatten() {
                        println!("{}", line.render());
                    }
                }
                None => print_json(&p)?,
            }
        }
    }
    Ok(())
}

fn key_values(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| anyhow!("tags are key=value"))?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

async fn enroll_token(api: &Api, cmd: EnrollTokenCommand, json: bool) -> anyhow::Result<()> {
    use portcullis_proto::enroll::{EnrollTokenInfo, EnrollTokenRequest, EnrollTokenResponse};
    match cmd {
        EnrollTokenCommand::Create { ttl, uses, tags, agent, partition, service, node } => {
            use portcullis_proto::bastion::ServiceKind;
            let ttl_seconds =
                crate::login::duration_secs(&ttl).ok_or_else(|| anyhow!("--ttl must look like 1h or 30m"))?;
            let service = match service.as_deref() {
                None => None,
                Some("agent") => Some(ServiceKind::Agent),
                Some("bastion") => Some(ServiceKind::Bastion),
                Some(other) => bail!("--service must be agent or bastion, not {other:?}"),
            };
            let request =
                EnrollTokenRequest { ttl_seconds, uses, tags: key_values(&tags)?, partition, agent, service, node };
            let t: EnrollTokenResponse = api.post("/v1/admin/enroll-tokens", &request).await?;
            // The token goes to stdout alone so scripts can capture it; the rest to stderr.
            eprintln!("Enrollment token {} ({} use(s), expires at unix time {}):", t.id, t.uses, t.expires_at);
            println!("{}", t.token.expose());
        }
        EnrollTokenCommand::List => {
            let tokens = api.get::<Vec<EnrollTokenInfo>>("/v1/admin/enroll-tokens").await?;
            if json {
                return print_json(&tokens);
            }
            for t in tokens {
                let kind = t.service.map_or("node", |k| k.as_str());
                let node = t.node.as_deref().map(|n| format!(" node={n}")).unwrap_or_default();
                println!(
                    "{} {kind} uses_left={} expires={} by={} tags={:?}{node}",
                    t.id, t.uses_left, t.expires_at, t.created_by, t.tags
                );
            }
        }
        EnrollTokenCommand::Revoke { id } => {
            api.delete(&format!("/v1/admin/enroll-tokens/{}", seg(&id)?)).await?;
            println!("Enrollment token {id} revoked.");
        }
    }
    Ok(())
}
