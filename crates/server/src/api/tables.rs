//! `regatta.v1.Tables`: Create, Delete, List — through the catalog Raft group.
//! With `--tables.token` set every call needs `authorization: Bearer <token>`.

use std::sync::Arc;

use armada_proto::regatta::v1::tables_server::Tables;
use armada_proto::regatta::v1::{
    CreateTableRequest, CreateTableResponse, DeleteTableRequest, DeleteTableResponse,
    ListTablesRequest, ListTablesResponse, TableInfo,
};
use tonic::{Request, Response, Status};

use super::{check_token, deadline, metered, validate};
use crate::error::ApiError;
use crate::follower::Follower;
use crate::node::Node;

const SERVICE: &str = "regatta.v1.Tables";

pub struct TablesService {
    node: Arc<Node>,
    /// On a follower cluster: the replication machinery (forwarding, lag, Reset).
    follower: Option<Arc<Follower>>,
}

impl TablesService {
    pub fn new(node: Arc<Node>, follower: Option<Arc<Follower>>) -> Self {
        TablesService { node, follower }
    }

    fn token(&self) -> &str {
        &self.node.config().tables.token
    }

    /// Tables are created and deleted on the leader cluster only.
    fn refuse_on_follower(&self, method: &str) -> Result<(), ApiError> {
        match &self.follower {
            None => Ok(()),
            Some(follower) => Err(ApiError::Unimplemented(format!(
                "method {method} is not implemented for a follower cluster: tables are created and deleted on the leader cluster ({})",
                follower.leader_cluster_addresses().join(", ")
            ))),
        }
    }
}

#[tonic::async_trait]
impl Tables for TablesService {
    async fn create(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<CreateTableResponse>, Status> {
        metered(SERVICE, "Create", async {
            check_token(&request, self.token())?;
            self.refuse_on_follower("Create")?;
            let deadline = deadline(&request);
            let name = request.into_inner().name;
            validate::new_table_name(&name)?;
            let id = self.node.create_table(&name, deadline).await?;
            Ok(CreateTableResponse { id: id.to_string() })
        })
        .await
        .map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<DeleteTableRequest>,
    ) -> Result<Response<DeleteTableResponse>, Status> {
        metered(SERVICE, "Delete", async {
            check_token(&request, self.token())?;
            self.refuse_on_follower("Delete")?;
            let deadline = deadline(&request);
            let name = request.into_inner().name;
            if name.is_empty() {
                return Err(ApiError::invalid("name must be set"));
            }
            self.node.delete_table(&name, deadline).await?;
            Ok(DeleteTableResponse {})
        })
        .await
        .map(Response::new)
    }

    async fn list(
        &self,
        request: Request<ListTablesRequest>,
    ) -> Result<Response<ListTablesResponse>, Status> {
        metered(SERVICE, "List", async {
            check_token(&request, self.token())?;
            let catalog = self.node.catalog_state();
            Ok(ListTablesResponse {
                tables: catalog
                    .tables
                    .values()
                    .map(|record| TableInfo {
                        name: record.name.clone(),
                        id: record.id.to_string(),
                        config: None,
                    })
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }
}
