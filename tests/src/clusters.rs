//! Clusters a test owns, on loopback: a Redis Cluster (masters with a
//! replica each) and a JetStream cluster of nats-servers. A test may kill
//! any node (SIGKILL) and start it again; nothing here touches the machine's
//! shared servers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::ports::free_port;

/// A process of a cluster, with the ports it listens on.
struct Node {
    port: u16,
    /// The cluster bus (Redis) or route (NATS) port.
    peer_port: u16,
    child: Option<Child>,
}

impl Node {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            port: free_port()?,
            peer_port: free_port()?,
            child: None,
        })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A cluster's processes and their scratch directory: every node is
/// killed, and the directory removed, when it is dropped.
struct Nodes {
    dir: PathBuf,
    list: Vec<Node>,
}

impl Nodes {
    fn new(what: &str, count: usize) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "saga-{what}-{}-{}",
            std::process::id(),
            free_port()?
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let list = (0..count)
            .map(|_| Node::new())
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { dir, list })
    }
}

impl std::ops::Deref for Nodes {
    type Target = [Node];
    fn deref(&self) -> &[Node] {
        &self.list
    }
}

impl std::ops::DerefMut for Nodes {
    fn deref_mut(&mut self) -> &mut [Node] {
        &mut self.list
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &mut self.list {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of `masters` masters, each with one replica, that fails
/// a master over after one second without an answer.
pub struct RedisCluster {
    nodes: Nodes,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> anyhow::Result<Self> {
        let mut cluster = Self {
            nodes: Nodes::new("redis-cluster", masters * 2)?,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_answers(i).await?;
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in cluster.nodes.iter() {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// The URL the services take: `redis-cluster://` with every node.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port));
        }
        url
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let conf = self.nodes.dir.join(format!("nodes-{}.conf", node.port));
        let child = Command::new("redis-server")
            .args(["--port", &node.port.to_string()])
            .args(["--cluster-port", &node.peer_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            // A replica takes over however long it has not heard from its
            // master: on a loaded machine the link can starve past the
            // default bound, and the cluster would stay down.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-config-file", &conf.to_string_lossy()])
            .args(["--dir", &self.nodes.dir.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    fn cli(&self, port: u16, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .context("running redis-cli")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn wait_answers(&self, i: usize) -> anyhow::Result<()> {
        crate::servers::wait_redis(self.nodes[i].port, Duration::from_secs(10)).await
    }

    /// Which node (index) is the master of `key`'s hash slot now.
    pub fn master_of(&self, key: &str) -> anyhow::Result<usize> {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(text) = self.cli(node.port, &["cluster", "nodes"]) else {
                continue;
            };
            for line in text.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let serves = fields[8..].iter().any(|range| {
                    let mut ends = range.split('-').filter_map(|n| n.parse::<u16>().ok());
                    match (ends.next(), ends.next()) {
                        (Some(a), Some(b)) => (a..=b).contains(&slot),
                        (Some(a), None) => a == slot,
                        _ => false,
                    }
                });
                let port = fields[1]
                    .split([':', '@'])
                    .nth(1)
                    .and_then(|p| p.parse::<u16>().ok());
                if serves && let Some(index) = self.nodes.iter().position(|n| Some(n.port) == port)
                {
                    return Ok(index);
                }
            }
            break;
        }
        bail!("no master found for slot {slot} of {key:?}")
    }

    /// SIGKILL: the node dies with everything it held.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts a killed node again (empty; it rejoins from its nodes file).
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill();
        self.spawn(i)?;
        self.wait_answers(i).await
    }

    /// Waits until every running node says the cluster is OK and every
    /// slot is served by a master that runs.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        crate::eventually("the Redis Cluster to be healthy", timeout, || {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                self.cli(n.port, &["cluster", "info"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            async move { Ok(ok) }
        })
        .await
    }
}

/// A JetStream cluster of `size` nats-servers on loopback, each with its
/// own store; a killed node restarts on the same store and rejoins.
pub struct NatsCluster {
    nodes: Nodes,
    /// Extra lines for every node's configuration file.
    extra: String,
}

impl NatsCluster {
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        Self::start_with(size, "").await
    }

    /// A cluster whose nodes' `jetstream { }` block also has `jetstream`
    /// (e.g. `sync_interval: always`, nats-server 2.10+).
    pub async fn start_with(size: usize, jetstream: &str) -> anyhow::Result<Self> {
        let mut cluster = Self {
            nodes: Nodes::new("nats-cluster", size)?,
            extra: jetstream.to_owned(),
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// Every node's client URL, comma-separated (what the services take).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node's server name (`n0`, `n1`, ...).
    pub fn name(i: usize) -> String {
        format!("n{i}")
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.peer_port))
            .collect();
        let node = &self.nodes[i];
        let store = self.nodes.dir.join(Self::name(i));
        std::fs::create_dir_all(&store)?;
        let conf = self.nodes.dir.join(format!("{}.conf", Self::name(i)));
        std::fs::write(
            &conf,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  {extra}\n}}\n\
                 cluster {{\n  name: saga\n  listen: 127.0.0.1:{peer}\n  routes: [{routes}]\n}}\n",
                name = Self::name(i),
                port = node.port,
                store = store.display(),
                extra = self.extra,
                peer = node.peer_port,
                routes = routes.join(", "),
            ),
        )?;
        let log = std::fs::File::create(self.nodes.dir.join(format!("{}.log", Self::name(i))))?;
        let child = Command::new(crate::servers::nats_server_binary())
            .args(["-c", &conf.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server (is it installed?)")?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Waits until node `i` answers JetStream requests (a meta leader is
    /// elected and knows it).
    async fn wait_ready(&self, i: usize) -> anyhow::Result<()> {
        let client = saga_shared::config::NatsConfig {
            url: format!("nats://127.0.0.1:{}", self.nodes[i].port),
            ..Default::default()
        };
        if !crate::servers::jetstream_answers(&client, Duration::from_secs(60)).await? {
            bail!(
                "nats-server {} not ready within 60s; log:\n{}",
                Self::name(i),
                std::fs::read_to_string(self.nodes.dir.join(format!("{}.log", Self::name(i))))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The index of the node leading `stream` now.
    pub async fn stream_leader(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> anyhow::Result<usize> {
        let mut stream = js.get_stream(stream).await?;
        let info = stream.info().await?;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .context("the stream has no leader")?;
        (0..self.nodes.len())
            .find(|&i| Self::name(i) == leader)
            .with_context(|| format!("leader {leader:?} is not a node of this cluster"))
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts a killed node again on its store and waits until it answers.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill();
        self.spawn(i)?;
        self.wait_ready(i).await
    }
}
