//! Node permissions: `n`/`r`/`w`/`b` followed by a domain id.
//!
//! The first entry names the node's **owner** (who always has full access) and its letter is the
//! default access of every domain not listed in the following entries.

use std::fmt;

/// Access granted by one permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    /// Whether this access includes reading.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// Whether this access includes writing.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain the entry is about.
    pub domid: u32,
    /// What it may do.
    pub access: Access,
}

impl Perm {
    /// Builds an entry.
    pub fn new(access: Access, domid: u32) -> Perm {
        Perm { domid, access }
    }

    /// Parses `n0`, `r5`, `b12`, ... Returns `None` on a bad letter or domid.
    pub fn parse(s: &str) -> Option<Perm> {
        let mut chars = s.chars();
        let access = match chars.next()? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::Both,
            _ => return None,
        };
        let rest = chars.as_str();
        if rest.is_empty() || rest.len() > 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let domid: u32 = rest.parse().ok()?;
        if domid > u16::MAX as u32 {
            return None;
        }
        Some(Perm { domid, access })
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// The permission list of a node (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// Builds a list; `None` if empty.
    pub fn new(list: Vec<Perm>) -> Option<Perms> {
        if list.is_empty() {
            None
        } else {
            Some(Perms(list))
        }
    }

    /// `n0`: owned by dom0, nobody else may access.
    pub fn dom0_only() -> Perms {
        Perms(vec![Perm::new(Access::None, 0)])
    }

    /// The owner domain.
    pub fn owner(&self) -> u32 {
        self.0[0].domid
    }

    /// All entries.
    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// Replaces the owner.
    pub fn set_owner(&mut self, domid: u32) {
        self.0[0].domid = domid;
    }

    /// Removes every non-owner entry naming `domid`.
    pub fn strip_domain(&mut self, domid: u32) -> bool {
        let before = self.0.len();
        let owner = self.0[0];
        let mut rest: Vec<Perm> = self.0[1..]
            .iter()
            .copied()
            .filter(|p| p.domid != domid)
            .collect();
        if rest.len() + 1 == before {
            return false;
        }
        rest.insert(0, owner);
        self.0 = rest;
        true
    }

    /// Effective access for an unprivileged domain `domid` (with optional stubdom `target`).
    /// Returns (read, write, owner).
    pub fn access_for(&self, domid: u32, target: Option<u32>) -> (bool, bool, bool) {
        let is = |d: u32| d == domid || Some(d) == target;
        if is(self.0[0].domid) {
            return (true, true, true);
        }
        for p in &self.0[1..] {
            if is(p.domid) {
                return (p.access.can_read(), p.access.can_write(), false);
            }
        }
        let a = self.0[0].access;
        (a.can_read(), a.can_write(), false)
    }

    /// Parses a list of entries.
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<Perms> {
        let v: Option<Vec<Perm>> = items.into_iter().map(Perm::parse).collect();
        Perms::new(v?)
    }

    /// Wire form: each entry NUL-terminated.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for p in &self.0 {
            v.extend_from_slice(p.to_string().as_bytes());
            v.push(0);
        }
        v
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(Perm::parse("r5"), Some(Perm::new(Access::Read, 5)));
        assert_eq!(Perm::parse("b0"), Some(Perm::new(Access::Both, 0)));
        assert_eq!(Perm::parse("x5"), None);
        assert_eq!(Perm::parse("r"), None);
        assert_eq!(Perm::parse("r-1"), None);
        assert_eq!(Perm::parse("r99999999999"), None);
        assert!(Perms::parse_list(Vec::<&str>::new()).is_none());
    }

    #[test]
    fn access() {
        let p = Perms::parse_list(["n1", "r2", "w3"]).unwrap();
        assert_eq!(p.access_for(1, None), (true, true, true));
        assert_eq!(p.access_for(2, None), (true, false, false));
        assert_eq!(p.access_for(3, None), (false, true, false));
        assert_eq!(p.access_for(4, None), (false, false, false));
        assert_eq!(p.access_for(4, Some(1)), (true, true, true));
        let d = Perms::parse_list(["r1"]).unwrap();
        assert_eq!(d.access_for(9, None), (true, false, false));
        let mut s = Perms::parse_list(["n1", "r2", "w3", "r2"]).unwrap();
        assert!(s.strip_domain(2));
        assert_eq!(s.to_string(), "n1,w3");
        assert!(!s.strip_domain(1));
    }
}
