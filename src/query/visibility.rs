//! Which document versions queries may see.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

/// Version keys that queries must not see, per collection: versions still being indexed and
/// retired ones whose points are being removed. Swapping a version live is one update here,
/// made together with the catalog transaction.
#[derive(Default)]
pub struct Visibility {
    hidden: RwLock<HashMap<String, HashSet<String>>>,
}

impl Visibility {
    pub fn hide(&self, collection: &str, key: &str) {
        self.hidden
            .write()
            .unwrap()
            .entry(collection.to_string())
            .or_default()
            .insert(key.to_string());
    }

    pub fn show(&self, collection: &str, key: &str) {
        if let Some(s) = self.hidden.write().unwrap().get_mut(collection) {
            s.remove(key);
        }
    }

    /// Make `show` visible and `hide` invisible in one step.
    pub fn swap(&self, collection: &str, show: &str, hide: Option<&str>) {
        let mut map = self.hidden.write().unwrap();
        let s = map.entry(collection.to_string()).or_default();
        s.remove(show);
        if let Some(h) = hide {
            s.insert(h.to_string());
        }
    }

    /// A deleted collection: nothing of it is left to hide.
    pub fn forget(&self, collection: &str) {
        self.hidden.write().unwrap().remove(collection);
    }

    pub fn hidden(&self, collection: &str) -> Vec<String> {
        self.hidden
            .read()
            .unwrap()
            .get(collection)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_swap_is_one_step() {
        let v = Visibility::default();
        v.hide("c", "d@2");
        assert_eq!(v.hidden("c"), vec!["d@2".to_string()]);
        v.swap("c", "d@2", Some("d@1"));
        assert_eq!(v.hidden("c"), vec!["d@1".to_string()]);
        v.show("c", "d@1");
        assert!(v.hidden("c").is_empty());
    }
}
