//! Who this member is: its id and cluster id, from its data dir, from `--initial-cluster` for
//! a new cluster, or asked of the other members when joining an existing one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::ids::normalize_url;
use crate::network::{PeerClients, Rpc};
use crate::wire::{decode, encode, MembersReply};
use crate::{ids, meta, ClusterState, NodeConfig, NodeId, PeerNode, RaftError};

/// What startup decided about this member's identity.
pub(crate) struct Identity {
    pub(crate) id: NodeId,
    pub(crate) cluster_id: u64,
    /// Initial membership to bootstrap with, when this is an initial member of a new cluster.
    pub(crate) bootstrap: Option<BTreeMap<NodeId, PeerNode>>,
}

/// Ids of the initial members from `--initial-cluster`.
fn initial_members(cfg: &NodeConfig) -> BTreeMap<NodeId, PeerNode> {
    members_of(&cfg.initial_cluster, &cfg.cluster_token)
}

fn members_of(initial_cluster: &[(String, String)], token: &str) -> BTreeMap<NodeId, PeerNode> {
    ids::group_initial_cluster(initial_cluster)
        .into_iter()
        .map(|(name, urls)| {
            let id = ids::initial_member_id(&urls, token);
            (
                id,
                PeerNode {
                    name,
                    peer_urls: urls,
                },
            )
        })
        .collect()
}

fn own_initial_id(
    cfg: &NodeConfig,
    members: &BTreeMap<NodeId, PeerNode>,
) -> Result<NodeId, RaftError> {
    let found = members
        .iter()
        .find(|(_, n)| n.name == cfg.name)
        .map(|(id, _)| *id);
    let Some(id) = found else {
        return Err(RaftError::Config(format!(
            "couldn't find local name '{}' in the initial cluster configuration",
            cfg.name
        )));
    };
    let listed: BTreeSet<String> = members
        .get(&id)
        .map(|n| n.peer_urls.iter().map(|u| normalize_url(u)).collect())
        .unwrap_or_default();
    let advertised: BTreeSet<String> = cfg
        .advertise_peer_urls
        .iter()
        .map(|u| normalize_url(u))
        .collect();
    if !advertised.is_empty() && listed != advertised {
        tracing::warn!(
            ?listed,
            ?advertised,
            "--initial-cluster peer urls of this member differ from --initial-advertise-peer-urls"
        );
    }
    Ok(id)
}

/// The member id of `name` and the cluster id that the first start of an initial member of a
/// new cluster computes from `--initial-cluster` and `--initial-cluster-token`.
pub(crate) fn new_cluster_ids(
    name: &str,
    initial_cluster: &[(String, String)],
    token: &str,
) -> Result<(NodeId, u64), RaftError> {
    let members = members_of(initial_cluster, token);
    let id = members
        .iter()
        .find(|(_, n)| n.name == name)
        .map(|(id, _)| *id)
        .ok_or_else(|| {
            RaftError::Config(format!(
                "couldn't find local name '{name}' in the initial cluster configuration"
            ))
        })?;
    let all: Vec<NodeId> = members.keys().copied().collect();
    Ok((id, ids::cluster_id(&all, token)))
}

/// This member's identity, stored in its data dir at first start and checked at every start.
pub(crate) async fn resolve_identity(
    cfg: &NodeConfig,
    clients: &PeerClients,
) -> Result<Identity, RaftError> {
    let stored = meta::load(&cfg.data_dir)?;
    if let Some(m) = stored {
        meta::check(&cfg.data_dir, &m, &cfg.name, &cfg.cluster_token)?;
        // A crash between writing meta.json and bootstrapping leaves an uninitialized log:
        // keep the bootstrap config around so startup can finish the job.
        let bootstrap = if cfg.initial_cluster_state == ClusterState::New {
            let members = initial_members(cfg);
            members.contains_key(&m.member_id).then_some(members)
        } else {
            None
        };
        return Ok(Identity {
            id: m.member_id,
            cluster_id: m.cluster_id,
            bootstrap,
        });
    }
    let ident = match cfg.initial_cluster_state {
        ClusterState::New => {
            let members = initial_members(cfg);
            let id = own_initial_id(cfg, &members)?;
            let all: Vec<NodeId> = members.keys().copied().collect();
            Identity {
                id,
                cluster_id: ids::cluster_id(&all, &cfg.cluster_token),
                bootstrap: Some(members),
            }
        }
        ClusterState::Existing => {
            let (id, cluster_id) = learn_identity(cfg, clients).await?;
            Identity {
                id,
                cluster_id,
                bootstrap: None,
            }
        }
    };
    meta::store(
        &cfg.data_dir,
        &meta::Meta {
            name: cfg.name.clone(),
            member_id: ident.id,
            cluster_id: ident.cluster_id,
            cluster_token: cfg.cluster_token.clone(),
        },
    )?;
    Ok(ident)
}

/// A member joining an existing cluster asks the others which id the leader gave its peer URLs.
async fn learn_identity(
    cfg: &NodeConfig,
    clients: &PeerClients,
) -> Result<(NodeId, u64), RaftError> {
    let own: BTreeSet<String> = cfg
        .advertise_peer_urls
        .iter()
        .map(|u| normalize_url(u))
        .collect();
    let peers: Vec<String> = cfg
        .initial_cluster
        .iter()
        .map(|(_, u)| normalize_url(u))
        .filter(|u| !own.contains(u))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if own.is_empty() {
        return Err(RaftError::Config(
            "--initial-advertise-peer-urls is required to join an existing cluster".into(),
        ));
    }
    if peers.is_empty() {
        return Err(RaftError::Config(
            "--initial-cluster-state existing needs at least one other member in --initial-cluster"
                .into(),
        ));
    }
    let deadline = Instant::now()
        + Duration::from_millis(cfg.election_timeout_ms.saturating_mul(10))
            .max(Duration::from_secs(30));
    let mut last_err = String::from("no answer yet");
    loop {
        for url in &peers {
            let payload = encode(&()).map_err(RaftError::Internal)?;
            match clients
                .call(url, Rpc::Members, payload, Duration::from_secs(2))
                .await
            {
                Ok(bytes) => match decode::<MembersReply>(&bytes) {
                    Ok(reply) => {
                        let me = reply
                            .members
                            .iter()
                            .find(|m| m.peer_urls.iter().any(|u| own.contains(&normalize_url(u))));
                        match me {
                            Some(m) => return Ok((m.id, reply.cluster_id)),
                            None => {
                                last_err =
                                    format!("{url} does not list peer urls {own:?} as a member")
                            }
                        }
                    }
                    Err(e) => last_err = format!("bad members reply from {url}: {e}"),
                },
                Err(e) => last_err = format!("{url}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Err(RaftError::Config(format!(
                "cannot join the existing cluster at {peers:?}: {last_err} \
                 (add this member with `member add` first)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
