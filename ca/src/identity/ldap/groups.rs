//! A user's groups, direct and nested, by `memberOf` or by group search.
//!
//! Nesting is followed level by level (one search per level in search mode, one base
//! read per group in `memberOf` mode) up to the configured depth; DNs already seen are
//! not visited again, so a cycle ends.
//!
//! **An incomplete list never decides** (a policy may `deny` on a group): group searches
//! are paged and any cut-off answer (size, time or administrative limit, a referral) is
//! an error; so is reaching `nested_depth` while there are still parent groups to find,
//! or more than [`MAX_GROUPS`] groups. `nested_depth = 0` is the operator saying groups
//! are not nested: then only direct groups count, by design. In `memberOf` mode a group
//! entry that does not exist (a dangling value) is skipped.

use super::attr;
use super::config::{GroupKind, GroupLookup};
use super::conn::{DirError, ServiceConn};
use ldap3::{Scope, ldap_escape};
use std::collections::{BTreeSet, HashSet};

/// No sane account is in more groups; the bound keeps a hostile or broken directory from
/// turning one login into thousands of searches.
const MAX_GROUPS: usize = 1000;
/// DNs per OR-filter in search mode.
const CHUNK: usize = 50;
/// A search for one chunk returns at most this many entries before it counts as incomplete.
const MAX_ENTRIES: usize = MAX_GROUPS + 1;
const AD_IN_CHAIN: &str = "1.2.840.113556.1.4.1941";

pub(super) struct Member<'a> {
    pub dn: &'a str,
    pub username: &'a str,
    /// The user's `memberOf` values (only read in `memberOf` mode).
    pub member_of: Vec<String>,
}

pub(super) async fn resolve(
    conn: &mut ServiceConn<'_>,
    lookup: &GroupLookup,
    name_attribute: &str,
    depth: u32,
    user: Member<'_>,
) -> Result<BTreeSet<String>, DirError> {
    match lookup {
        GroupLookup::MemberOf { attribute } => by_member_of(conn, attribute, name_attribute, depth, user).await,
        GroupLookup::Search { base, object_filter, kind, in_chain } => {
            let mut names = BTreeSet::new();
            let member_attr = kind.member_attribute();
            if *kind == GroupKind::PosixGroup {
                let filter = format!("(&{object_filter}({member_attr}={}))", ldap_escape(user.username));
                for entry in conn.search_all(base, Scope::Subtree, &filter, &[name_attribute], MAX_GROUPS).await? {
                    names.extend(attr(&entry, name_attribute).map(str::to_owned));
                }
                return Ok(names);
            }
            if *in_chain {
                let filter = format!("(&{object_filter}({member_attr}:{AD_IN_CHAIN}:={}))", ldap_escape(user.dn));
                for entry in conn.search_all(base, Scope::Subtree, &filter, &[name_attribute], MAX_GROUPS).await? {
                    names.extend(attr(&entry, name_attribute).map(str::to_owned));
                }
                return Ok(names);
            }
            let mut seen: HashSet<String> = HashSet::from([user.dn.to_ascii_lowercase()]);
            let mut frontier = vec![user.dn.to_owned()];
            for level in 0..=depth {
                let mut next = Vec::new();
                for chunk in frontier.chunks(CHUNK) {
                    let alternatives: String =
                        chunk.iter().map(|dn| format!("({member_attr}={})", ldap_escape(dn.as_str()))).collect();
                    let filter = format!("(&{object_filter}(|{alternatives}))");
                    for entry in conn.search_all(base, Scope::Subtree, &filter, &[name_attribute], MAX_ENTRIES).await? {
                        if !seen.insert(entry.dn.to_ascii_lowercase()) {
                            continue;
                        }
                        if seen.len() > MAX_GROUPS {
                            return Err(too_many_groups());
                        }
                        names.extend(attr(&entry, name_attribute).map(str::to_owned));
                        next.push(entry.dn);
                    }
                }
                if next.is_empty() {
                    break;
                }
                if level == depth && depth > 0 {
                    // The last level allowed found groups: are they members of groups
                    // we were not allowed to look at?
                    for chunk in next.chunks(CHUNK) {
                        let alternatives: String =
                            chunk.iter().map(|dn| format!("({member_attr}={})", ldap_escape(dn.as_str()))).collect();
                        let filter = format!("(&{object_filter}(|{alternatives}))");
                        let parents = conn.search_all(base, Scope::Subtree, &filter, &["1.1"], MAX_ENTRIES).await?;
                        if parents.iter().any(|p| !seen.contains(&p.dn.to_ascii_lowercase())) {
                            return Err(depth_limit(depth));
                        }
                    }
                }
                frontier = next;
            }
            Ok(names)
        }
    }
}

fn too_many_groups() -> DirError {
    DirError::Incomplete(format!("the user is in more than {MAX_GROUPS} groups"))
}

fn depth_limit(depth: u32) -> DirError {
    DirError::Incomplete(format!("groups are nested deeper than nested_depth = {depth}"))
}

async fn by_member_of(
    conn: &mut ServiceConn<'_>,
    member_of: &str,
    name_attribute: &str,
    depth: u32,
    user: Member<'_>,
) -> Result<BTreeSet<String>, DirError> {
    let mut names = BTreeSet::new();
    let mut seen: HashSet<String> = HashSet::from([user.dn.to_ascii_lowercase()]);
    let mut frontier: Vec<String> = user.member_of;
    for level in 0..=depth {
        let mut next = Vec::new();
        for dn in frontier {
            if !seen.insert(dn.to_ascii_lowercase()) {
                continue;
            }
            if seen.len() > MAX_GROUPS {
                return Err(too_many_groups());
            }
            let entries = conn.search(&dn, Scope::Base, "(objectClass=*)", &[name_attribute, member_of], 1).await?;
            let Some(entry) = entries.into_iter().next() else { continue };
            if super::ranged(&entry, member_of) {
                return Err(DirError::Incomplete(format!("{member_of} of a group came as a range of its values")));
            }
            names.extend(attr(&entry, name_attribute).map(str::to_owned));
            next.extend(super::attrs(&entry, member_of).map(str::to_owned));
        }
        next.retain(|dn| !seen.contains(&dn.to_ascii_lowercase()));
        if next.is_empty() {
            break;
        }
        if level == depth && depth > 0 {
            return Err(depth_limit(depth));
        }
        frontier = next;
    }
    Ok(names)
}
