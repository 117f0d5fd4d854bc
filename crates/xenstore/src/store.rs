//! The node tree: a flat map from absolute path to node, plus path helpers.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::perms::Perms;
use crate::wire::{Errno, ABS_PATH_MAX, REL_PATH_MAX};

/// One xenstore node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The value (arbitrary bytes).
    pub value: Vec<u8>,
    /// Permissions (owner first).
    pub perms: Perms,
    /// Child names, in insertion order (like C xenstored).
    pub children: Vec<String>,
    /// Generation: changes whenever the node (value, perms or child list) changes.
    pub gen: u64,
}

impl Node {
    /// A new node.
    pub fn new(value: Vec<u8>, perms: Perms) -> Node {
        Node {
            value,
            perms,
            children: Vec::new(),
            gen: 0,
        }
    }

    /// Rough size used by the `node-size` quota (value + child names + perms).
    pub fn quota_size(&self) -> usize {
        self.value.len()
            + self.children.iter().map(|c| c.len() + 1).sum::<usize>()
            + self.perms.entries().len() * 4
    }
}

/// The committed tree.
#[derive(Debug, Clone)]
pub struct Store {
    nodes: HashMap<String, Node>,
    next_gen: u64,
    owner_counts: HashMap<u32, i64>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty tree holding only `/` (perms `n0`).
    pub fn new() -> Store {
        let mut s = Store {
            nodes: HashMap::new(),
            next_gen: 1,
            owner_counts: HashMap::new(),
        };
        s.set("/", Node::new(Vec::new(), Perms::dom0_only()));
        s
    }

    /// Looks a node up.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false (the root exists).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes owned by `domid`.
    pub fn owned_by(&self, domid: u32) -> i64 {
        self.owner_counts.get(&domid).copied().unwrap_or(0)
    }

    /// Allocates a fresh generation number.
    pub fn bump_gen(&mut self) -> u64 {
        let g = self.next_gen;
        self.next_gen += 1;
        g
    }

    fn count(&mut self, owner: u32, delta: i64) {
        let e = self.owner_counts.entry(owner).or_insert(0);
        *e += delta;
        if *e == 0 {
            self.owner_counts.remove(&owner);
        }
    }

    /// Inserts or replaces a node (assigning a fresh generation).
    pub fn set(&mut self, path: &str, mut node: Node) {
        node.gen = self.bump_gen();
        let new_owner = node.perms.owner();
        match self.nodes.get_mut(path) {
            Some(old) => {
                let old_owner = old.perms.owner();
                *old = node;
                if old_owner != new_owner {
                    self.count(old_owner, -1);
                    self.count(new_owner, 1);
                }
            }
            None => {
                self.nodes.insert(path.to_string(), node);
                self.count(new_owner, 1);
            }
        }
    }

    /// Modifies a node in place (assigning a fresh generation). Returns false if absent.
    pub fn modify(&mut self, path: &str, f: impl FnOnce(&mut Node)) -> bool {
        let gen = self.next_gen;
        let Some(n) = self.nodes.get_mut(path) else {
            return false;
        };
        self.next_gen += 1;
        let old_owner = n.perms.owner();
        f(n);
        n.gen = gen;
        let new_owner = n.perms.owner();
        if old_owner != new_owner {
            self.count(old_owner, -1);
            self.count(new_owner, 1);
        }
        true
    }

    /// Removes one node (not its children, not the parent's child entry).
    pub fn remove_one(&mut self, path: &str) -> Option<Node> {
        let n = self.nodes.remove(path)?;
        self.count(n.perms.owner(), -1);
        Some(n)
    }

    /// Depth-first (pre-order) walk from `path`, children in stored order.
    pub fn walk(&self, path: &str, f: &mut dyn FnMut(&str, &Node)) {
        let mut stack = vec![path.to_string()];
        while let Some(p) = stack.pop() {
            if let Some(n) = self.nodes.get(&p) {
                f(&p, n);
                for c in n.children.iter().rev() {
                    stack.push(join(&p, c));
                }
            }
        }
    }

    /// Verifies internal consistency: every child listed exists, every node but `/` is listed
    /// by its parent, owner counts match. Returns a description of the first problem.
    pub fn check(&self) -> Result<(), String> {
        if !self.nodes.contains_key("/") {
            return Err("root missing".into());
        }
        let mut counts: HashMap<u32, i64> = HashMap::new();
        for (p, n) in &self.nodes {
            *counts.entry(n.perms.owner()).or_insert(0) += 1;
            for c in &n.children {
                if !self.nodes.contains_key(&join(p, c)) {
                    return Err(format!("{p}: child {c} missing"));
                }
            }
            if let Some(par) = parent(p) {
                match self.nodes.get(par) {
                    Some(pn) if pn.children.iter().any(|c| c == basename(p)) => {}
                    _ => return Err(format!("{p}: not listed by parent")),
                }
            }
        }
        if counts != self.owner_counts {
            return Err("owner counts out of sync".into());
        }
        Ok(())
    }
}

/// Parent of an absolute path (`None` for `/`).
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// Last component of a path.
pub fn basename(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Joins a directory path and a child name.
pub fn join(dir: &str, child: &str) -> String {
    if dir == "/" {
        format!("/{child}")
    } else {
        format!("{dir}/{child}")
    }
}

/// Whether `path` is `ancestor` or below it (component boundary).
pub fn is_under(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/');
    }
    path == ancestor
        || (path.len() > ancestor.len()
            && path.starts_with(ancestor)
            && path.as_bytes()[ancestor.len()] == b'/')
}

fn valid_chars(p: &str) -> bool {
    p.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

/// Makes `path` absolute for a caller whose home is `/local/domain/<domid>` and validates it
/// like `is_valid_nodename()`.
pub fn canonicalize(path: &str, domid: u32) -> Result<String, Errno> {
    canonical(path, domid).map(Cow::into_owned)
}

/// [`canonicalize`] without copying a path that is already absolute.
pub fn canonical(path: &str, domid: u32) -> Result<Cow<'_, str>, Errno> {
    let abs = if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        if path.len() > REL_PATH_MAX {
            return Err(Errno::EINVAL);
        }
        Cow::Owned(format!("/local/domain/{domid}/{path}"))
    };
    if abs.len() > ABS_PATH_MAX
        || !valid_chars(&abs)
        || abs.contains("//")
        || (abs.len() > 1 && abs.ends_with('/'))
    {
        return Err(Errno::EINVAL);
    }
    Ok(abs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
        assert!(is_under("/a/b", "/a"));
        assert!(is_under("/a", "/a"));
        assert!(!is_under("/ab", "/a"));
        assert!(is_under("/ab", "/"));
        assert_eq!(canonicalize("x", 3).unwrap(), "/local/domain/3/x");
        assert_eq!(canonicalize("/a/", 0), Err(Errno::EINVAL));
        assert_eq!(canonicalize("/a//b", 0), Err(Errno::EINVAL));
        assert_eq!(canonicalize("/a b", 0), Err(Errno::EINVAL));
        assert_eq!(canonicalize("", 0), Err(Errno::EINVAL));
        assert_eq!(canonicalize("/", 0).unwrap(), "/");
        assert!(canonicalize(&format!("/{}", "a".repeat(3072)), 0).is_err());
    }
}
