//! rxen's nftables table, driven with `nft -j -f -` and JSON built here.
//!
//! Everything rxen adds lives in one table, `ip rxen`, with two base chains:
//! `postrouting` (nat, masquerade for NAT'ed guests) and `forward` (filter: anti-spoofing
//! and "no new inbound connections" for NAT'ed guests). Every rule carries a comment
//! `rxen:dom<domid>:vif<devid>`, so the rules of one vif or one domain are found and deleted
//! by handle — exactly those, nothing else (see [`delete_rules`]).
//!
//! `rate=` limits live in a second table, `netdev rxen`, one chain per vif named
//! `dom<domid>_vif<devid>` hooked on the tap's ingress (see [`set_rate_limit`]); a domain's
//! chains are found by that name.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::{Error, Result};

/// The nftables table name (family `ip`).
pub const TABLE: &str = "rxen";
/// Base chain with the masquerade rules.
pub const CHAIN_POSTROUTING: &str = "postrouting";
/// Base chain with the forward filter rules.
pub const CHAIN_FORWARD: &str = "forward";

/// The `nft` binary (`$RXEN_NFT` overrides it).
pub fn nft_binary() -> String {
    std::env::var("RXEN_NFT").unwrap_or_else(|_| "nft".to_string())
}

/// Runs `nft -j '<document>'` with a JSON document; returns stdout.
///
/// The document goes on the command line: `nft -f -` opens the path `/dev/stdin`, which a
/// minimal `/dev` (initramfs, containers) may lack. A document too large for one argument
/// (128 KiB on Linux) is passed through `/proc/self/fd/0` instead.
fn run_json(doc: &Value, what: &str) -> Result<String> {
    let text = doc.to_string();
    if text.len() < 100_000 {
        run_nft(&["-j", &text], None, what)
    } else {
        run_nft(&["-j", "-f", "/proc/self/fd/0"], Some(text), what)
    }
}

fn run_nft(args: &[&str], stdin: Option<String>, what: &str) -> Result<String> {
    let bin = nft_binary();
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::NftSpawn {
            bin: bin.clone(),
            source,
        })?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        // A write error shows up as nft's own failure below.
        let _ = w.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| Error::NftSpawn {
        bin: bin.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Nft {
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn table_cmds() -> Vec<Value> {
    vec![
        json!({"add": {"table": {"family": "ip", "name": TABLE}}}),
        json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": CHAIN_POSTROUTING,
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}}),
        json!({"add": {"chain": {"family": "ip", "table": TABLE, "name": CHAIN_FORWARD,
            "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}),
    ]
}

/// The comment that tags every rule of one vif.
pub fn vif_comment(domid: u32, devid: u32) -> String {
    format!("rxen:dom{domid}:vif{devid}")
}

/// The comment prefix shared by all rules of one domain.
pub fn domain_comment_prefix(domid: u32) -> String {
    format!("rxen:dom{domid}:")
}

/// One rule to add to a chain of the rxen table.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Chain name ([`CHAIN_POSTROUTING`] or [`CHAIN_FORWARD`]).
    pub chain: &'static str,
    /// The rule's expressions (nftables JSON `expr` array).
    pub expr: Vec<Value>,
    /// Tag, see [`vif_comment`].
    pub comment: String,
}

fn match_eq(left: Value, right: Value, op: &str) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

fn saddr() -> Value {
    json!({"payload": {"protocol": "ip", "field": "saddr"}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn addr_set(ips: &[Ipv4Addr]) -> Value {
    if ips.len() == 1 {
        json!(ips[0].to_string())
    } else {
        json!({"set": ips.iter().map(|i| i.to_string()).collect::<Vec<_>>()})
    }
}

/// NAT rules for a guest behind `vif` with addresses `ips`: masquerade what it sends
/// anywhere but back to itself; drop anything it sends from another source address;
/// reject new connections forwarded towards it.
pub fn nat_rules(vif: &str, ips: &[Ipv4Addr], comment: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for ip in ips {
        rules.push(Rule {
            chain: CHAIN_POSTROUTING,
            expr: vec![
                match_eq(saddr(), json!(ip.to_string()), "=="),
                match_eq(meta("oifname"), json!(vif), "!="),
                json!({"masquerade": null}),
            ],
            comment: comment.to_string(),
        });
    }
    rules.extend(antispoof_rules(vif, ips, comment));
    rules.push(Rule {
        chain: CHAIN_FORWARD,
        expr: vec![
            match_eq(meta("oifname"), json!(vif), "=="),
            match_eq(json!({"ct": {"key": "state"}}), json!("new"), "in"),
            json!({"reject": {"type": "icmp", "expr": "admin-prohibited"}}),
        ],
        comment: comment.to_string(),
    });
    rules
}

/// Drop forwarded packets from `vif` whose source is not one of the guest's `ips`.
pub fn antispoof_rules(vif: &str, ips: &[Ipv4Addr], comment: &str) -> Vec<Rule> {
    if ips.is_empty() {
        return Vec::new();
    }
    vec![Rule {
        chain: CHAIN_FORWARD,
        expr: vec![
            match_eq(meta("iifname"), json!(vif), "=="),
            match_eq(saddr(), addr_set(ips), "!="),
            json!({"drop": null}),
        ],
        comment: comment.to_string(),
    }]
}

/// Creates the rxen table and its base chains if missing, then adds `rules` — all in one
/// nft transaction.
pub fn add_rules(rules: &[Rule]) -> Result<()> {
    let mut cmds = table_cmds();
    for r in rules {
        cmds.push(
            json!({"add": {"rule": {"family": "ip", "table": TABLE, "chain": r.chain,
            "comment": r.comment, "expr": r.expr}}}),
        );
    }
    run_json(&json!({ "nftables": cmds }), "add rxen rules")?;
    Ok(())
}

/// A rule as listed by nft: chain, handle, comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Chain name.
    pub chain: String,
    /// Kernel rule handle.
    pub handle: u64,
    /// The rule's comment, if any.
    pub comment: Option<String>,
}

/// Parses `nft -j list table` output into the rules it lists.
pub fn parse_listing(out: &str) -> Result<Vec<Listed>> {
    let v: Value = serde_json::from_str(out).map_err(|e| Error::Nft {
        what: "parse nft listing".into(),
        stderr: e.to_string(),
    })?;
    let mut rules = Vec::new();
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for it in items {
        let Some(r) = it.get("rule") else { continue };
        let (Some(chain), Some(handle)) = (
            r.get("chain").and_then(Value::as_str),
            r.get("handle").and_then(Value::as_u64),
        ) else {
            continue;
        };
        rules.push(Listed {
            chain: chain.to_string(),
            handle,
            comment: r.get("comment").and_then(Value::as_str).map(String::from),
        });
    }
    Ok(rules)
}

/// The rules of the rxen table (empty if the table does not exist).
pub fn list_rules() -> Result<Vec<Listed>> {
    match run_nft(
        &["-j", "list", "table", "ip", TABLE],
        None,
        "list rxen table",
    ) {
        Ok(out) => parse_listing(&out),
        Err(Error::Nft { stderr, .. })
            if stderr.contains("No such file or directory")
                || stderr.contains("does not exist") =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Deletes every rule of the rxen table whose comment is `comment` (exact) or, with
/// `prefix`, starts with it. Returns how many were deleted.
pub fn delete_rules(comment: &str, prefix: bool) -> Result<usize> {
    // Another process may delete rules concurrently: retry on a stale handle.
    for _ in 0..3 {
        let victims: Vec<Listed> = list_rules()?
            .into_iter()
            .filter(|r| match &r.comment {
                Some(c) if prefix => c.starts_with(comment),
                Some(c) => c == comment,
                None => false,
            })
            .collect();
        if victims.is_empty() {
            return Ok(0);
        }
        let cmds: Vec<Value> = victims
            .iter()
            .map(|r| {
                json!({"delete": {"rule": {"family": "ip", "table": TABLE,
                    "chain": r.chain, "handle": r.handle}}})
            })
            .collect();
        match run_json(&json!({ "nftables": cmds }), "delete rxen rules") {
            Ok(_) => return Ok(victims.len()),
            Err(Error::Nft { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Nft {
        what: format!("delete rules tagged {comment:?}"),
        stderr: "rules kept changing under us".into(),
    })
}

/// Name of the per-vif rate-limit chain in the `netdev rxen` table.
pub fn rate_chain(domid: u32, devid: u32) -> String {
    format!("dom{domid}_vif{devid}")
}

/// Installs (or replaces) a policer on `dev`'s ingress: traffic beyond `bytes_per_sec`
/// (with a bucket of `burst` bytes) is dropped.
pub fn set_rate_limit(
    dev: &str,
    domid: u32,
    devid: u32,
    bytes_per_sec: u64,
    burst: u64,
) -> Result<()> {
    let chain = rate_chain(domid, devid);
    let cmds = vec![
        json!({"add": {"table": {"family": "netdev", "name": TABLE}}}),
        json!({"add": {"chain": {"family": "netdev", "table": TABLE, "name": chain,
            "type": "filter", "hook": "ingress", "prio": 0, "dev": dev, "policy": "accept"}}}),
        json!({"flush": {"chain": {"family": "netdev", "table": TABLE, "name": chain}}}),
        json!({"add": {"rule": {"family": "netdev", "table": TABLE, "chain": chain,
            "comment": vif_comment(domid, devid),
            "expr": [{"limit": {"rate": bytes_per_sec, "burst": burst, "per": "second",
                "inv": true, "rate_unit": "bytes", "burst_unit": "bytes"}}, {"drop": null}]}}}),
    ];
    run_json(&json!({ "nftables": cmds }), "add rate limit")?;
    Ok(())
}

fn missing(stderr: &str) -> bool {
    stderr.contains("No such file or directory") || stderr.contains("does not exist")
}

/// Deletes a vif's rate-limit chain; `Ok(false)` if there was none.
pub fn delete_rate_limit(domid: u32, devid: u32) -> Result<bool> {
    let chain = rate_chain(domid, devid);
    match run_nft(
        &["delete", "chain", "netdev", TABLE, &chain],
        None,
        "delete rate limit",
    ) {
        Ok(_) => Ok(true),
        Err(Error::Nft { stderr, .. }) if missing(&stderr) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Chains of the `netdev rxen` table (empty if it does not exist).
pub fn list_rate_chains() -> Result<Vec<String>> {
    let out = match run_nft(
        &["-j", "list", "table", "netdev", TABLE],
        None,
        "list rate limits",
    ) {
        Ok(o) => o,
        Err(Error::Nft { stderr, .. }) if missing(&stderr) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let v: Value = serde_json::from_str(&out).map_err(|e| Error::Nft {
        what: "parse nft listing".into(),
        stderr: e.to_string(),
    })?;
    Ok(v.get("nftables")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|it| it.get("chain")?.get("name")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// Deletes every rate-limit chain of a domain; returns how many.
pub fn delete_domain_rate_limits(domid: u32) -> Result<usize> {
    let prefix = format!("dom{domid}_vif");
    let mut n = 0;
    for c in list_rate_chains()? {
        if c.strip_prefix(&prefix)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        {
            match run_nft(
                &["delete", "chain", "netdev", TABLE, &c],
                None,
                "delete rate limit",
            ) {
                Ok(_) => n += 1,
                Err(Error::Nft { stderr, .. }) if missing(&stderr) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(n)
}

/// Deletes the whole rxen table (host teardown). `Ok(false)` if it did not exist.
pub fn delete_table() -> Result<bool> {
    match run_nft(&["delete", "table", "ip", TABLE], None, "delete rxen table") {
        Ok(_) => Ok(true),
        Err(Error::Nft { stderr, .. }) if missing(&stderr) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the `netdev rxen` table if it has no chain left. `Ok(true)` if deleted.
pub fn delete_rate_table_if_empty() -> Result<bool> {
    if !list_rate_chains()?.is_empty() {
        return Ok(false);
    }
    match run_nft(
        &["delete", "table", "netdev", TABLE],
        None,
        "delete rxen netdev table",
    ) {
        Ok(_) => Ok(true),
        Err(Error::Nft { stderr, .. }) if missing(&stderr) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_parses_handles_and_comments() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "rxen", "handle": 1}},
            {"rule": {"family": "ip", "table": "rxen", "chain": "postrouting", "handle": 3,
              "comment": "rxen:dom5:vif0", "expr": []}},
            {"rule": {"family": "ip", "table": "rxen", "chain": "forward", "handle": 9, "expr": []}}]}"#;
        let r = parse_listing(out).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].handle, 3);
        assert_eq!(r[0].comment.as_deref(), Some("rxen:dom5:vif0"));
        assert_eq!(r[1].comment, None);
        assert!(parse_listing("not json").is_err());
    }

    #[test]
    fn nat_rules_shape() {
        let r = nat_rules("vif5.0", &["10.0.5.1".parse().unwrap()], "c");
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].chain, CHAIN_POSTROUTING);
        assert!(r[0].expr[2].get("masquerade").is_some());
        assert_eq!(r[1].expr[1]["match"]["op"], "!=");
    }
}
