//! The indexed object cache behind an informer: one `Arc` per object, and secondary indexes
//! (namespace, owner uid, label pairs, and any the user adds) kept in step with every write.
//!
//! Only the informer's watch task writes; readers take a short read lock and get `Arc`s, never
//! copies of objects.

use super::ObjectKey;
use kube::Resource;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A function computing the index values of an object.
pub type IndexFn<K> = Arc<dyn Fn(&K) -> Vec<String> + Send + Sync>;

/// The name of the built-in index by namespace.
pub const BY_NAMESPACE: &str = "namespace";
/// The name of the built-in index by owner uid (every owner reference, controller or not).
pub const BY_OWNER: &str = "owner";
/// The name of the built-in index by label pair, values written `key=value`.
pub const BY_LABEL: &str = "label";
/// The name of the index of pods by `spec.nodeName` (see [`pods_by_node`]).
pub const BY_POD_NODE: &str = "pod-node-name";

/// The index function of [`BY_POD_NODE`]: a pod's node, once it is bound to one.
pub fn pods_by_node() -> IndexFn<k8s_openapi::api::core::v1::Pod> {
    Arc::new(|p| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .into_iter()
            .collect()
    })
}

struct Index<K> {
    function: IndexFn<K>,
    entries: HashMap<String, HashSet<Arc<ObjectKey>>>,
}

/// Objects by key, with secondary indexes. Each key is allocated once and shared by the object
/// map and every index entry (a pod is in four or five of them).
pub(crate) struct Cache<K> {
    objects: HashMap<Arc<ObjectKey>, Arc<K>>,
    indexes: HashMap<String, Index<K>>,
}

impl<K: Resource> Cache<K> {
    pub(crate) fn new() -> Self {
        let mut cache = Cache {
            objects: HashMap::new(),
            indexes: HashMap::new(),
        };
        cache.add_index(
            BY_NAMESPACE,
            Arc::new(|o: &K| o.meta().namespace.iter().cloned().collect()),
        );
        cache.add_index(
            BY_OWNER,
            Arc::new(|o: &K| {
                o.meta()
                    .owner_references
                    .iter()
                    .flatten()
                    .map(|r| r.uid.clone())
                    .collect()
            }),
        );
        cache.add_index(
            BY_LABEL,
            Arc::new(|o: &K| {
                o.meta()
                    .labels
                    .iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            }),
        );
        cache
    }

    /// Adds (or replaces) an index and builds it over the objects already cached.
    pub(crate) fn add_index(&mut self, name: &str, function: IndexFn<K>) {
        let mut index = Index {
            function,
            entries: HashMap::new(),
        };
        for (key, object) in &self.objects {
            for value in (index.function)(object) {
                index.entries.entry(value).or_default().insert(key.clone());
            }
        }
        self.indexes.insert(name.to_string(), index);
    }

    pub(crate) fn has_index(&self, name: &str) -> bool {
        self.indexes.contains_key(name)
    }

    pub(crate) fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.objects.get(key).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }

    pub(crate) fn all(&self) -> Vec<Arc<K>> {
        self.objects.values().cloned().collect()
    }

    pub(crate) fn keys(&self) -> Vec<ObjectKey> {
        self.objects.keys().map(|k| ObjectKey::clone(k)).collect()
    }

    pub(crate) fn by_index(&self, name: &str, value: &str) -> Vec<Arc<K>> {
        let Some(index) = self.indexes.get(name) else {
            return Vec::new();
        };
        index
            .entries
            .get(value)
            .into_iter()
            .flatten()
            .filter_map(|key| self.objects.get(&**key).cloned())
            .collect()
    }

    /// Stores `object`, returning what it replaced.
    pub(crate) fn insert(&mut self, object: Arc<K>) -> Option<Arc<K>> {
        let key = ObjectKey::of(object.as_ref());
        // A replaced object's key is reused, not allocated again.
        let (key, old) = match self.remove_entry(&key) {
            Some((shared, old)) => (shared, Some(old)),
            None => (Arc::new(key), None),
        };
        for index in self.indexes.values_mut() {
            for value in (index.function)(&object) {
                index.entries.entry(value).or_default().insert(key.clone());
            }
        }
        self.objects.insert(key, object);
        old
    }

    /// Removes the object at `key`, returning it.
    pub(crate) fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        self.remove_entry(key).map(|(_, old)| old)
    }

    /// Removes the object at `key`, returning its shared key and the object.
    fn remove_entry(&mut self, key: &ObjectKey) -> Option<(Arc<ObjectKey>, Arc<K>)> {
        let (shared, old) = self.objects.remove_entry(key)?;
        for index in self.indexes.values_mut() {
            for value in (index.function)(&old) {
                if let Some(keys) = index.entries.get_mut(&value) {
                    keys.remove(key);
                    if keys.is_empty() {
                        index.entries.remove(&value);
                    }
                }
            }
        }
        Some((shared, old))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    fn pod(ns: &str, name: &str, app: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some([("app".to_string(), app.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[test]
    fn indexes_follow_inserts_replacements_and_removals() {
        let mut cache = Cache::<Pod>::new();
        cache.insert(pod("a", "one", "web"));
        cache.insert(pod("b", "two", "web"));
        assert_eq!(cache.by_index(BY_NAMESPACE, "a").len(), 1);
        assert_eq!(cache.by_index(BY_LABEL, "app=web").len(), 2);
        // Relabelling moves the object between index entries.
        cache.insert(pod("a", "one", "db"));
        assert_eq!(cache.by_index(BY_LABEL, "app=web").len(), 1);
        assert_eq!(cache.by_index(BY_LABEL, "app=db").len(), 1);
        cache.remove(&ObjectKey::namespaced("b", "two"));
        assert!(cache.by_index(BY_LABEL, "app=web").is_empty());
        assert_eq!(cache.len(), 1);
        // An index added late covers what is already cached.
        cache.add_index(
            "name",
            Arc::new(|p: &Pod| p.metadata.name.iter().cloned().collect()),
        );
        assert_eq!(cache.by_index("name", "one").len(), 1);
    }
}
