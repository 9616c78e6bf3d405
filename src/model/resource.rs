//! What the master, the worker and the crawl engine share about resources: the key layout in
//! the store and a resource's stored shape (the Go original's JSON).

use serde::{Deserialize, Serialize};

/// go-micro service name of workers (their registry prefix).
pub const WORKER_SERVICE: &str = "go.micro.server.worker";
/// go-micro service name of masters.
pub const MASTER_SERVICE: &str = "go.micro.server.master";
/// Prefix of every resource key.
pub const RESOURCE_PREFIX: &str = "/resources/";
/// Root of the per-task key spaces that workers keep (checkpoints, done marks); a deleted
/// resource's is deleted with it.
pub const TASKS_PREFIX: &str = "/crawler/tasks/";

/// The key space of the task run for resource `name`: `/crawler/tasks/<name>/`.
pub fn task_prefix(name: &str) -> String {
    format!("{TASKS_PREFIX}{name}/")
}

/// One resource as stored (field names and order are the Go original's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Snowflake ID as a decimal string; kept for the resource's whole life.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Name; also the last segment of the key.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// `<node id>|<address>` of the worker running it; empty while unassigned.
    #[serde(rename = "AssignedNode", default)]
    pub assigned_node: String,
    /// Unix nanoseconds when it was first stored; kept on reassignment.
    #[serde(rename = "CreationTime", default)]
    pub creation_time: i64,
}

impl Resource {
    /// The JSON stored in the value.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail; fall back to an empty object anyway.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// Decode a stored value.
    pub fn decode(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }

    /// The assigned worker's node id (before the `|`), or `None` while unassigned.
    pub fn assigned_id(&self) -> Option<&str> {
        split_assigned(&self.assigned_node).map(|(id, _)| id)
    }
}

/// Split `<node id>|<address>`; `None` for an empty or id-less value.
pub fn split_assigned(assigned: &str) -> Option<(&str, &str)> {
    let (id, addr) = match assigned.split_once('|') {
        Some((id, addr)) => (id, addr),
        None => (assigned, ""),
    };
    (!id.is_empty()).then_some((id, addr))
}

/// The `AssignedNode` value for a worker.
pub fn format_assigned(node_id: &str, address: &str) -> String {
    format!("{node_id}|{address}")
}

/// True when `r` is assigned to the worker node `node_id`: its `AssignedNode` starts with
/// `<node_id>|` (so `worker-2` never matches `worker-20|...`).
pub fn is_assigned_to(r: &Resource, node_id: &str) -> bool {
    r.assigned_node
        .strip_prefix(node_id)
        .is_some_and(|rest| rest.starts_with('|'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_the_go_shape() {
        let r = Resource {
            id: "1602250527540776960".into(),
            name: "douban_book_list".into(),
            assigned_node: "go.micro.server.worker-2|192.168.0.107:9089".into(),
            creation_time: 1670841268798763000,
        };
        let json = String::from_utf8(r.encode()).unwrap();
        assert_eq!(
            json,
            r#"{"ID":"1602250527540776960","Name":"douban_book_list","AssignedNode":"go.micro.server.worker-2|192.168.0.107:9089","CreationTime":1670841268798763000}"#
        );
        assert_eq!(Resource::decode(json.as_bytes()).unwrap(), r);
        assert_eq!(r.assigned_id(), Some("go.micro.server.worker-2"));
    }

    #[test]
    fn assigned_parsing() {
        assert_eq!(split_assigned(""), None);
        assert_eq!(split_assigned("|x"), None);
        assert_eq!(split_assigned("w-1|a:1"), Some(("w-1", "a:1")));
        assert_eq!(split_assigned("w-1"), Some(("w-1", "")));
        assert_eq!(format_assigned("w-1", "a:1"), "w-1|a:1");
    }

    #[test]
    fn resource_json_is_the_seeds() {
        let json = r#"{"ID":"1602250527540776960","Name":"douban_book_list","AssignedNode":"go.micro.server.worker-2|192.168.0.107:9089","CreationTime":1670841268798763000}"#;
        let r: Resource = serde_json::from_str(json).expect("decode");
        assert!(is_assigned_to(&r, "go.micro.server.worker-2"));
        assert!(!is_assigned_to(&r, "go.micro.server.worker-20"));
        assert!(!is_assigned_to(&r, "go.micro.server.worker"));
        assert_eq!(serde_json::to_string(&r).expect("encode"), json);
        let unassigned = Resource {
            name: "x".into(),
            ..Resource::default()
        };
        assert!(!is_assigned_to(&unassigned, "x"));
    }
}
