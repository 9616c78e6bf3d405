//! The `CrawlerMaster` gRPC service: a thin translation to [`super::ops`].

use std::sync::Arc;

use crawler_proto::crawler::crawler_master_server::{CrawlerMaster, CrawlerMasterServer};
use crawler_proto::crawler::{
    AddResourceResponse, Empty, LeaderSpec, NodeSpec, ResourceList, ResourceSpec, TaskReply,
    TaskRequest, WorkerList,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::forward::{to_spec, FORWARDED};
use super::state::Inner;
use super::task_api::TaskCommand;

/// The service over the master's shared state.
pub struct Service {
    inner: Arc<Inner>,
}

fn forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

fn node_spec(n: crate::coord::registry::Node) -> NodeSpec {
    NodeSpec {
        id: n.id,
        address: n.address,
    }
}

#[tonic::async_trait]
impl CrawlerMaster for Service {
    async fn add_resource(
        &self,
        request: Request<ResourceSpec>,
    ) -> Result<Response<AddResourceResponse>, Status> {
        let fwd = forwarded(&request);
        let name = request.into_inner().name;
        let out = self.inner.add_resource(&name, fwd).await?;
        Ok(Response::new(AddResourceResponse {
            resource: Some(to_spec(out.resource)),
            node: out.node.map(node_spec),
        }))
    }

    async fn delete_resource(
        &self,
        request: Request<ResourceSpec>,
    ) -> Result<Response<Empty>, Status> {
        let fwd = forwarded(&request);
        let name = request.into_inner().name;
        self.inner.delete_resource(&name, fwd).await?;
        Ok(Response::new(Empty {}))
    }

    async fn get_resource(
        &self,
        request: Request<ResourceSpec>,
    ) -> Result<Response<ResourceSpec>, Status> {
        let r = self.inner.get_resource(&request.into_inner().name).await?;
        Ok(Response::new(to_spec(r)))
    }

    async fn list_resources(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<ResourceList>, Status> {
        let rs = self.inner.list_resources().await?;
        Ok(Response::new(ResourceList {
            resources: rs.into_iter().map(to_spec).collect(),
        }))
    }

    async fn list_workers(&self, _request: Request<Empty>) -> Result<Response<WorkerList>, Status> {
        let ws = self.inner.list_workers().await?;
        Ok(Response::new(WorkerList {
            workers: ws.into_iter().map(node_spec).collect(),
        }))
    }

    async fn leader(&self, _request: Request<Empty>) -> Result<Response<LeaderSpec>, Status> {
        let l = self.inner.leader_view().await?;
        Ok(Response::new(LeaderSpec {
            value: l.value,
            master_id: l.master_id,
            address: l.address,
            create_revision: l.create_revision,
            is_self: l.is_self,
        }))
    }

    async fn task_command(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<TaskReply>, Status> {
        let fwd = forwarded(&request);
        let req = request.into_inner();
        let cmd = TaskCommand::decode(&req.action, req.spec_json.as_bytes(), req.purge)?;
        let out = self.inner.task_command(&req.name, cmd, fwd).await?;
        let json = match out {
            Some(t) => serde_json::to_string(&t),
            None => Ok("{}".to_string()),
        };
        Ok(Response::new(TaskReply {
            json: json.map_err(|e| Status::internal(e.to_string()))?,
        }))
    }

    async fn get_task(&self, request: Request<TaskRequest>) -> Result<Response<TaskReply>, Status> {
        let t = self.inner.get_task(&request.into_inner().name).await?;
        Ok(Response::new(TaskReply {
            json: serde_json::to_string(&t).map_err(|e| Status::internal(e.to_string()))?,
        }))
    }

    async fn list_tasks(&self, _request: Request<Empty>) -> Result<Response<TaskReply>, Status> {
        let tasks = self.inner.list_tasks().await?;
        let json = serde_json::to_string(&serde_json::json!({ "tasks": tasks }))
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(TaskReply { json }))
    }
}

/// Serve the service on `listener` until `stop` turns true.
pub async fn serve(
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let token = inner.api_token.clone();
    let svc = CrawlerMasterServer::with_interceptor(Service { inner }, move |req: Request<()>| {
        match &token {
            Some(t) => {
                let auth = req
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok());
                if super::http_body::bearer_ok(auth, t) {
                    Ok(req)
                } else {
                    Err(Status::unauthenticated(
                        "missing or wrong API token (authorization: Bearer <token>)",
                    ))
                }
            }
            None => Ok(req),
        }
    });
    let r = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "master gRPC server failed");
    }
}
