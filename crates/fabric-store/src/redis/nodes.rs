//! Worker nodes, their join tokens and the node config: two hashes and a
//! string, read whole at start (new keys, so a store written by an earlier
//! release needs no migration: it simply has none).

use std::future::Future;

use ::redis::cmd;
use fabric_core::StoreError;
use fabric_core::node::{JoinTokenRecord, NodeConfig, NodeRecord, NodeStore};

use super::codec::{self, encode_json};
use super::{RedisStore, ignore, writer};

impl NodeStore for RedisStore {
    fn put_node(
        &self,
        record: NodeRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let name = record.name.clone();
        self.hset_json(
            self.inner.keys.nodes(),
            name.clone(),
            format!("node {name:?}"),
            record,
        )
    }

    fn list_nodes(
        &self,
    ) -> impl Future<Output = Result<Vec<NodeRecord>, StoreError>> + Send + 'static {
        let c = cmd("HGETALL").arg(self.inner.keys.nodes()).clone();
        self.read(c, "cannot list nodes".to_owned(), |value| {
            codec::json_pairs("node", value)
        })
    }

    fn delete_node(
        &self,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let what = format!("node {name:?}");
        self.hdel(self.inner.keys.nodes(), name, what)
    }

    fn put_join_token(
        &self,
        record: JoinTokenRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let id = record.id.clone();
        self.hset_json(
            self.inner.keys.node_join_tokens(),
            id.clone(),
            format!("join token {id:?}"),
            record,
        )
    }

    fn list_join_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<JoinTokenRecord>, StoreError>> + Send + 'static {
        let c = cmd("HGETALL")
            .arg(self.inner.keys.node_join_tokens())
            .clone();
        self.read(c, "cannot list join tokens".to_owned(), |value| {
            codec::json_pairs("join token", value)
        })
    }

    fn delete_join_token(
        &self,
        id: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let what = format!("join token {id:?}");
        self.hdel(self.inner.keys.node_join_tokens(), id, what)
    }

    fn put_node_config(
        &self,
        config: NodeConfig,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let op = encode_json(|| "node config", &config).map(|body| {
            let c = cmd("SET")
                .arg(self.inner.keys.node_config())
                .arg(body)
                .clone();
            writer::op(Some(c), "cannot store the node config".to_owned(), ignore)
        });
        self.submit(op)
    }

    fn get_node_config(
        &self,
    ) -> impl Future<Output = Result<Option<NodeConfig>, StoreError>> + Send + 'static {
        let c = cmd("GET").arg(self.inner.keys.node_config()).clone();
        self.read(c, "cannot read the node config".to_owned(), |value| {
            codec::optional_json("node config", value)
        })
    }
}
