//! Member and cluster ids: stable 64-bit FNV-1a hashes, so every member derives the same ids from
//! the same flags (std's `DefaultHasher` is not guaranteed stable across releases).

use crate::NodeId;

/// A peer URL in the one form ids and membership checks compare.
pub(crate) fn normalize_url(u: &str) -> String {
    u.trim().trim_end_matches('/').to_string()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Incremental FNV-1a 64-bit hasher.
#[derive(Clone, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl Fnv64 {
    /// Feed raw bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// Feed a length-prefixed field, so that ("ab","c") and ("a","bc") hash differently.
    pub fn field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_be_bytes());
        self.write(bytes);
    }

    /// The hash, never zero (zero means "no member" in etcd's API).
    pub fn finish_nonzero(&self) -> u64 {
        // A final avalanche step spreads FNV's weak low bits; 0 is remapped.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        if h == 0 {
            1
        } else {
            h
        }
    }
}

fn sorted(urls: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = urls.iter().map(|u| u.trim_end_matches('/')).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Id of an initial member: hash of its sorted peer URLs and the cluster token.
pub fn initial_member_id(peer_urls: &[String], token: &str) -> NodeId {
    let mut h = Fnv64::default();
    for u in sorted(peer_urls) {
        h.field(u.as_bytes());
    }
    h.field(token.as_bytes());
    h.finish_nonzero()
}

/// Id of a member added at runtime: the current time is mixed in so a removed id never comes back.
pub fn added_member_id(peer_urls: &[String], token: &str, unix_nanos: u128) -> NodeId {
    let mut h = Fnv64::default();
    for u in sorted(peer_urls) {
        h.field(u.as_bytes());
    }
    h.field(token.as_bytes());
    h.field(&unix_nanos.to_be_bytes());
    h.finish_nonzero()
}

/// Cluster id: hash of the sorted initial member ids and the token.
pub fn cluster_id(member_ids: &[NodeId], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut h = Fnv64::default();
    for id in ids {
        h.write(&id.to_be_bytes());
    }
    h.field(token.as_bytes());
    h.finish_nonzero()
}

/// Group `--initial-cluster` entries by name (a member may list several peer URLs), sorted by name.
pub fn group_initial_cluster(entries: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut map: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (name, url) in entries {
        map.entry(name.clone()).or_default().push(url.clone());
    }
    map.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vector() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (before our final mix).
        let mut h = Fnv64::default();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        let b = vec!["http://b:2".to_string(), "http://a:1/".to_string()];
        assert_eq!(initial_member_id(&a, "t"), initial_member_id(&b, "t"));
        assert_ne!(initial_member_id(&a, "t"), initial_member_id(&a, "u"));
        assert_ne!(initial_member_id(&a, "t"), 0);
        assert_ne!(added_member_id(&a, "t", 1), added_member_id(&a, "t", 2));
        assert_eq!(cluster_id(&[3, 1, 2], "t"), cluster_id(&[1, 2, 3], "t"));
        assert_ne!(cluster_id(&[1, 2, 3], "t"), cluster_id(&[1, 2, 4], "t"));
    }
}
