//! Who is asking: API keys, their scopes, and what a request may touch.
//!
//! With `auth.mode = "keys"` every `/v1` request carries `Authorization: Bearer KEY`. A key has
//! scopes: `admin` (everything, keys included), `*` (read and write every collection),
//! `read:NAME` (search, ask, list), `write:NAME` (upload, new versions, deletes); `NAME` may be
//! `*`. Write does not imply read: an ingestion key can be kept from reading. Keys are stored as
//! sha256(install secret ‖ key): a key is 256 random bits, so a keyed hash is enough, and a
//! stolen catalog alone does not give the keys.

use std::collections::BTreeSet;
use std::path::Path;

/// One scope of a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Admin,
    Read(String),
    Write(String),
}

impl Scope {
    /// `admin`, `*`, `read:NAME`, `write:NAME`; `*` expands to read and write of every
    /// collection.
    pub fn parse(s: &str) -> Result<Vec<Scope>, String> {
        let s = s.trim();
        let name_ok = |n: &str| n == "*" || crate::catalog::collection_name_ok(n);
        match s {
            "admin" => Ok(vec![Scope::Admin]),
            "*" => Ok(vec![Scope::Read("*".into()), Scope::Write("*".into())]),
            _ => match s.split_once(':') {
                Some(("read", n)) if name_ok(n) => Ok(vec![Scope::Read(n.into())]),
                Some(("write", n)) if name_ok(n) => Ok(vec![Scope::Write(n.into())]),
                _ => Err(format!(
                    "unknown scope `{s}`: use admin, *, read:COLLECTION or write:COLLECTION (COLLECTION may be *)"
                )),
            },
        }
    }

    pub fn as_string(&self) -> String {
        match self {
            Scope::Admin => "admin".into(),
            Scope::Read(n) => format!("read:{n}"),
            Scope::Write(n) => format!("write:{n}"),
        }
    }
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// `auth.mode = "none"`: everything is allowed.
    Open,
    Key {
        id: String,
        name: String,
        scopes: BTreeSet<Scope>,
    },
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        match self {
            Principal::Open => true,
            Principal::Key { scopes, .. } => scopes.contains(&Scope::Admin),
        }
    }

    fn has(&self, f: impl Fn(&Scope) -> bool) -> bool {
        match self {
            Principal::Open => true,
            Principal::Key { scopes, .. } => scopes.iter().any(|s| *s == Scope::Admin || f(s)),
        }
    }

    pub fn can_read(&self, collection: &str) -> bool {
        self.has(|s| matches!(s, Scope::Read(n) if n == "*" || n == collection))
    }

    pub fn can_write(&self, collection: &str) -> bool {
        self.has(|s| matches!(s, Scope::Write(n) if n == "*" || n == collection))
    }

    /// The key's id (the owner of what it creates; the actor in the audit log).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Principal::Open => None,
            Principal::Key { id, .. } => Some(id),
        }
    }

    /// Whether this caller may see a conversation owned by `owner`.
    pub fn owns(&self, owner: Option<&str>) -> bool {
        self.is_admin() || matches!((self.key_id(), owner), (Some(k), Some(o)) if k == o)
    }
}

/// A new key: `kb_` and 64 hex digits (256 random bits), and its public id.
pub fn new_key() -> (String, String) {
    let r = || uuid::Uuid::new_v4().simple().to_string();
    let key = format!("kb_{}{}", r(), r());
    let id = format!("key_{}", &r()[..16]);
    (id, key)
}

/// The stored form of `key`.
pub fn hash_key(secret: &[u8], key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(secret);
    h.update(key.as_bytes());
    hex::encode(h.finalize())
}

/// The install's secret (`data/auth.secret`, created on first use, readable by its owner only).
pub fn install_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("auth.secret");
    match std::fs::read(&path) {
        Ok(b) if b.len() >= 32 => return Ok(b),
        Ok(_) => anyhow::bail!(
            "{} is too short: remove it to make a new one (every key then stops working)",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let secret: Vec<u8> = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .copied()
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(&secret)?;
    f.sync_all()?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scopes: &[&str]) -> Principal {
        Principal::Key {
            id: "k".into(),
            name: "n".into(),
            scopes: scopes
                .iter()
                .flat_map(|s| Scope::parse(s).unwrap())
                .collect(),
        }
    }

    #[test]
    fn scopes_grant_what_they_say_and_no_more() {
        let a = key(&["read:a"]);
        assert!(a.can_read("a") && !a.can_read("b") && !a.can_write("a") && !a.is_admin());
        let w = key(&["write:a"]);
        assert!(w.can_write("a") && !w.can_read("a") && !w.can_write("b"));
        let all = key(&["*"]);
        assert!(all.can_read("x") && all.can_write("y") && !all.is_admin());
        let reader = key(&["read:*"]);
        assert!(reader.can_read("x") && !reader.can_write("x"));
        let admin = key(&["admin"]);
        assert!(admin.can_read("x") && admin.can_write("x") && admin.is_admin());
        assert!(Principal::Open.is_admin() && Principal::Open.can_write("x"));
        for bad in ["root", "read:", "read:../x", "delete:a", "write:a b"] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        assert!(
            admin.owns(Some("other")) && a.owns(Some("k")) && !a.owns(Some("j")) && !a.owns(None)
        );
    }

    #[test]
    fn keys_are_random_and_hashed_with_the_secret() {
        let (id1, k1) = new_key();
        let (id2, k2) = new_key();
        assert_ne!(k1, k2);
        assert_ne!(id1, id2);
        assert_eq!(k1.len(), 3 + 64);
        assert_ne!(hash_key(b"s1", &k1), hash_key(b"s2", &k1));
        assert_eq!(hash_key(b"s1", &k1), hash_key(b"s1", &k1));
        let dir = tempfile::tempdir().unwrap();
        let s = install_secret(dir.path()).unwrap();
        assert_eq!(install_secret(dir.path()).unwrap(), s);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("auth.secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
