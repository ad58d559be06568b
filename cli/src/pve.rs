//! `admin secret …` and the Proxmox VE side of `admin inventory …`.

use crate::api::Api;
use crate::args::{SecretCommand, TlsArgs};
use crate::login::read_password;
use crate::shared::{ago, print_json, seg};
use anyhow::{anyhow, bail};
use portcullis_proto::WireSecret;
use portcullis_proto::pve::*;
use secrecy::ExposeSecret;

fn tls_policy(args: TlsArgs) -> anyhow::Result<Option<TlsPolicy>> {
    Ok(match (args.tls_pin_sha256, args.tls_ca_bundle, args.tls_danger_skip_verify) {
        (Some(sha256), _, _) => Some(TlsPolicy::PinnedSha256 { sha256 }),
        (_, Some(path), _) => Some(TlsPolicy::CaBundle {
            pem: std::fs::read_to_string(&path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?,
        }),
        (_, _, true) => Some(TlsPolicy::DangerSkipVerify),
        _ => None,
    })
}

pub async fn secret(api: &Api, cmd: SecretCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Add { name, kind, identity, secret_stdin, tls } => {
            let Some(tls) = tls_policy(tls)? else {
                bail!(
                    "say how the API's certificate is checked: --tls-pin-sha256, --tls-ca-bundle or --tls-danger-skip-verify"
                )
            };
            let value = read_password(&format!("Secret for {name}: "), secret_stdin)?;
            let body = SecretAddRequest { name, kind, identity, secret: WireSecret::new(value.expose_secret()), tls };
            let info: SecretInfo = api.post("/v1/admin/secrets", &body).await?;
            println!("Stored {} ({} {}), fingerprint {}.", info.name, info.kind, info.identity, info.fingerprint);
            if info.rules.is_empty() {
                println!("No credential rule names it yet: add one with secret = {:?} to the policy.", info.name);
            }
            Ok(())
        }
        SecretCommand::Rotate { name, identity, secret_stdin, tls } => {
            let tls = tls_policy(tls)?;
            let value = read_password(&format!("New secret for {name}: "), secret_stdin)?;
            let body = SecretRotateRequest { secret: WireSecret::new(value.expose_secret()), identity, tls };
            let info: SecretInfo = api.put(&format!("/v1/admin/secrets/{}", seg(&name)?), &body).await?;
            println!("Rotated {}, fingerprint now {}.", info.name, info.fingerprint);
            Ok(())
        }
        SecretCommand::Remove { name } => {
            api.delete(&format!("/v1/admin/secrets/{}", seg(&name)?)).await?;
            println!("Removed {name}.");
            Ok(())
        }
        SecretCommand::List => {
            let list: Vec<SecretInfo> = api.get("/v1/admin/secrets").await?;
            if json {
                return print_json(&list);
            }
            println!(
                "{:<20} {:<18} {:<32} {:<16} {:<8} TLS / rules",
                "NAME", "KIND", "IDENTITY", "FINGERPRINT", "CHANGED"
            );
            for s in list {
                let changed = ago(s.rotated_at.unwrap_or(s.created_at));
                let rules = if s.rules.is_empty() { "(no rule)".to_owned() } else { s.rules.join(",") };
                println!(
                    "{:<20} {:<18} {:<32} {:<16} {:<8} {} / {rules}",
                    s.name, s.kind, s.identity, s.fingerprint, changed, s.tls
                );
            }
            Ok(())
        }
    }
}

pub async fn clusters(api: &Api, json: bool) -> anyhow::Result<()> {
    let list: Vec<ClusterSummary> = api.get("/v1/admin/inventory/clusters").await?;
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("No Proxmox VE cluster collected yet.");
    }
    println!(
        "{:<32} {:<10} {:<8} {:>5} {:>6} {:<10} LAST RUN",
        "CLUSTER", "VERSION", "QUORATE", "NODES", "GUESTS", "FROM"
    );
    for c in list {
        let quorate = c.quorate.map_or("?", |q| if q { "yes" } else { "NO" });
        let last = match (c.last_run_at, c.last_result) {
            (Some(at), Some(r)) => format!("{r}, {} ago", ago(at)),
            _ => "running".to_owned(),
        };
        println!(
            "{:<32} {:<10} {:<8} {:>5} {:>6} {:<10} {last}",
            c.id, c.version, quorate, c.nodes, c.guests, c.collected_from
        );
        for f in c.last_endpoint_failures {
            println!("    not collected: {f}");
        }
    }
    Ok(())
}

pub async fn cluster(api: &Api, id: &str, json: bool) -> anyhow::Result<()> {
    let (agent, name) = id.split_once('/').ok_or_else(|| anyhow!("give the cluster as AGENT/CLUSTER"))?;
    let path = format!("/v1/admin/inventory/clusters/{}/{}", seg(agent)?, seg(name)?);
    let view: ClusterView = api.get(&path).await?;
    if json {
        return print_json(&view);
    }
    let (s, inv) = (&view.summary, &view.inventory);
    println!(
        "{} — Proxmox VE {}, {}",
        s.id,
        s.version,
        match s.quorate {
            Some(true) => "quorate",
            Some(false) => "NOT QUORATE",
            None => "quorum unknown",
        }
    );
    println!("Nodes:");
    for n in &inv.nodes {
        let link = match (view.node_links.get(&n.name), view.ambiguous_nodes.get(&n.name)) {
            (Some(enrolled), _) => format!("  enrolled as {enrolled}"),
            (None, Some(fitting)) => format!("  not linked: several enrolled nodes fit ({})", fitting.join(", ")),
            (None, None) => String::new(),
        };
        println!("  {:<16} {:<8} {}{link}", n.name, n.status, n.address.as_deref().unwrap_or("-"));
    }
    println!("Guests:");
    for g in &inv.guests {
        println!(
            "  {:>6} {:<5} {:<24} {:<12} {:<8}{}",
            g.vmid,
            g.kind,
            g.name,
            g.node,
            g.status,
            if g.template { " template" } else { "" }
        );
    }
    println!("Storage:");
    for st in &inv.storage {
        let total = st.total_bytes.map_or("-".to_owned(), |b| format!("{} GiB", b >> 30));
        println!(
            "  {:<12} {:<16} {:<10} {:<10} {}",
            st.node,
            st.name,
            st.kind,
            total,
            if st.active { "active" } else { "INACTIVE" }
        );
    }
    if let Some(ceph) = &inv.ceph {
        println!(
            "Ceph: {} ({} OSDs, {} pools, {} file systems)",
            ceph.health,
            ceph.osds.len(),
            ceph.pools.len(),
            ceph.filesystems.len()
        );
    }
    for f in &s.last_endpoint_failures {
        println!("Not collected: {f}");
    }
    Ok(())
}

pub async fn preview(api: &Api, rule: Option<&str>, dir: Option<&std::path::Path>, json: bool) -> anyhow::Result<()> {
    use portcullis_proto::preview::{PolicyFile, RulePreview, RulePreviewRequest};
    let previews: Vec<RulePreview> = match (dir, rule) {
        (Some(dir), rule) => {
            let files =
                crate::shared::policy_files(dir)?.into_iter().map(|(name, text)| PolicyFile { name, text }).collect();
            api.post("/v1/admin/rules/preview", &RulePreviewRequest { files, rule: rule.map(str::to_owned) }).await?
        }
        (None, Some(rule)) => api.get(&format!("/v1/admin/rules/{}/preview", seg(rule)?)).await?,
        (None, None) => api.get("/v1/admin/rules/preview").await?,
    };
    if json {
        return print_json(&previews);
    }
    for p in previews {
        let provider = p.provider.map(|x| format!(", provider {x}")).unwrap_or_default();
        println!("{} ({}{provider}): {} matched, {} in scope", p.rule, p.purpose, p.matched.len(), p.in_scope.len());
        for d in &p.in_scope {
            match p.decided_by_other_rule.get(d) {
                Some(other) => println!("  {d}  (rule {other} decides: it sorts first)"),
                None => println!("  {d}"),
            }
        }
        for d in p.matched.iter().filter(|d| !p.in_scope.contains(d)) {
            println!("  {d}  (out of scope)");
        }
        let agents: Vec<String> = p.by_agent.iter().map(|(a, n)| format!("{a}: {n}")).collect();
        if !agents.is_empty() {
            println!("  per agent: {}", agents.join(", "));
        }
    }
    Ok(())
}
