//! One node of a transfer test: an engine, its node and its transfer
//! service, closed in the order that lets the directory go last.

use super::TempDir;
use keel::engine::Engine;
use keel::fs::FileSystem;
use keel::node::{Node, NodeOptions};
use keel::shard::Options;
use keel::transfer::Transfers;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Options of node `id` for transfer tests: frames up to 1 MiB, and a
/// heartbeat that never ends a connection a busy machine was slow on.
pub fn node_options(id: u64) -> NodeOptions {
    NodeOptions {
        node_id: id,
        max_frame_bytes: 1 << 20,
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_misses: 50,
        ..NodeOptions::default()
    }
}

pub struct Side {
    pub engine: Arc<Engine>,
    pub node: Arc<Node>,
    pub transfers: Arc<Transfers>,
    // Last: the engine closes before its directory is removed.
    temp: Option<TempDir>,
}

impl Side {
    /// An engine in `dir` opening shards with `shard_opts`, a node with
    /// `node_opts`, and the transfer service between them.
    pub fn open(dir: &Path, node_opts: NodeOptions, shard_opts: Options) -> Side {
        Side::with_engine(Engine::open(dir, shard_opts).unwrap(), node_opts)
    }

    fn with_engine(engine: Engine, node_opts: NodeOptions) -> Side {
        let engine = Arc::new(engine);
        let node = Arc::new(Node::open(node_opts).unwrap());
        let transfers = Transfers::attach(node.clone(), engine.clone()).unwrap();
        Side { engine, node, transfers, temp: None }
    }

    /// The same in a fresh temporary directory, removed with the side.
    pub fn temp(tag: &str, node_opts: NodeOptions, shard_opts: Options) -> Side {
        let dir = TempDir::new(tag);
        let mut side = Side::open(dir.path(), node_opts, shard_opts);
        side.temp = Some(dir);
        side
    }

    /// As `open`, on the file system `fs`.
    pub fn open_on(dir: &Path, node_opts: NodeOptions, shard_opts: Options, fs: Arc<dyn FileSystem>) -> Side {
        Side::with_engine(Engine::open_with_fs(dir, shard_opts, fs).unwrap(), node_opts)
    }

    /// The same on the file system `fs`.
    pub fn temp_on(tag: &str, node_opts: NodeOptions, shard_opts: Options, fs: Arc<dyn FileSystem>) -> Side {
        let dir = TempDir::new(tag);
        let mut side = Side::open_on(dir.path(), node_opts, shard_opts, fs);
        side.temp = Some(dir);
        side
    }

    /// The temporary directory of a side made by `temp`.
    pub fn dir(&self) -> &Path {
        self.temp.as_ref().expect("a side made by Side::temp").path()
    }
}

impl Drop for Side {
    /// Stops the node and the transfer service's thread (which holds the
    /// engine) so that the engine closes here, before the directory goes.
    fn drop(&mut self) {
        let _ = self.node.close();
        self.transfers.close();
    }
}
