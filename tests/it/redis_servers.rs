//! The Redis servers the cluster and Sentinel tests start on loopback: a
//! six-node Redis Cluster, and a guard that stops a child server on drop.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::common::*;

/// Six redis-server processes made one cluster with `redis-cli --cluster
/// create`; each stopped by its PID when dropped.
pub struct RedisCluster {
    ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("sbtest-cluster-{}", uuid::Uuid::new_v4().simple()));
        // Each node is in `cluster` from its spawn on: a panic part-way
        // stops those already started.
        let mut cluster = Self {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for _ in 0..6 {
            // A node also binds its port + 10000 (the cluster bus): a node
            // that cannot bind either exits, and is started on other ports.
            let (child, port) = spawn_listening(
                "redis-server (cluster node)",
                Duration::from_secs(10),
                |port| node_command(&cluster.dir, port),
                is_redis_child,
            );
            cluster.nodes.push(Some(child));
            cluster.ports.push(port);
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let started = Instant::now();
        while !cluster.live_ports().iter().all(|p| {
            cluster
                .cli(*p, &["cluster", "info"])
                .contains("cluster_state:ok")
        }) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the cluster did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// fred's cluster URL: one node, the others as `node=` parameters.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.ports[0]);
        for (i, port) in self.ports[1..].iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{port}"));
        }
        url
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, n)| n.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port of the primary serving the slot of hash tag `tag`, once a
    /// live one does (after a crash, when a replica took over).
    pub fn primary_of(&self, tag: &str) -> u16 {
        let started = Instant::now();
        loop {
            if let Some(port) = self.live_primary_of(tag) {
                return port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no live primary for {tag}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn live_primary_of(&self, tag: &str) -> Option<u16> {
        let ask = self.live_ports()[0];
        let slot: u16 = self
            .cli(ask, &["cluster", "keyslot", tag])
            .trim()
            .parse()
            .unwrap();
        for line in self.cli(ask, &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    (a.parse().unwrap_or(u16::MAX)..=b.parse().unwrap_or(0)).contains(&slot)
                }
                None => range.parse::<u16>().ok() == Some(slot),
            });
            let address = fields[1].split('@').next().unwrap();
            let port: u16 = address.rsplit_once(':').unwrap().1.parse().unwrap();
            if serves && self.live_ports().contains(&port) {
                return Some(port);
            }
        }
        None
    }

    /// Starts a killed node again: it rejoins the cluster as a replica of
    /// the primary that took over from it.
    pub fn restart(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        assert!(self.nodes[i].is_none(), "node {port} is running");
        let child = node_command(&self.dir, port)
            .spawn()
            .expect("redis-server on PATH (make test installs it)");
        // In `nodes` at once, so that a failed start is stopped on drop.
        self.nodes[i] = Some(child);
        wait_redis(port, self.nodes[i].as_ref().unwrap());
    }

    /// The port of the replica of the primary on `primary`, once the node
    /// asked has heard of it (roles spread through the cluster by gossip).
    pub fn replica_of(&self, primary: u16) -> u16 {
        let port_of = |f: &[&str]| -> Option<u16> {
            f.get(1)?
                .split('@')
                .next()?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        };
        let started = Instant::now();
        loop {
            let nodes = self.cli(self.live_ports()[0], &["cluster", "nodes"]);
            let lines: Vec<Vec<&str>> = nodes
                .lines()
                .map(|l| l.split_whitespace().collect())
                .collect();
            let id = lines
                .iter()
                .find(|f| f.len() > 3 && port_of(f) == Some(primary))
                .map(|f| f[0]);
            let replica = lines
                .iter()
                .find(|f| f.len() > 3 && f[2].contains("slave") && Some(f[3]) == id)
                .and_then(|f| port_of(f));
            if let Some(port) = replica {
                return port;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no replica of {primary} in:\n{nodes}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` (STOP, CONT) to the node on `port`.
    pub fn signal(&self, port: u16, signal: &str) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        let pid = self.nodes[i].as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGKILL: a crash, not a shutdown.
    pub fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        if let Some(mut child) = self.nodes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // SIGKILL: a node a failed test left stopped (SIGSTOP) would not act
        // on SIGTERM, and waiting for it would hang the test run.
        for mut child in self.nodes.iter_mut().filter_map(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed (by its PID) when dropped, so that a failing test
/// leaves no server running.
pub struct Guarded(pub Option<Child>);

impl Guarded {
    /// SIGTERM, then its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        child.wait().unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One cluster node on `port`, its files in `dir/<port>` (a restart finds
/// its nodes.conf there and rejoins).
fn node_command(dir: &std::path::Path, port: u16) -> Command {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut cmd = redis_command(port, &[]);
    cmd.args([
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ])
    // Failover within seconds of a primary's death, but not for a node
    // that a busy test machine left unscheduled for a moment.
    .args(["--cluster-node-timeout", "2000"])
    // Replicas in sync at once, not after the default 5 s.
    .args(["--repl-diskless-sync-delay", "0"])
    .args(["--save", "", "--appendonly", "no", "--dir"])
    .arg(&node_dir);
    cmd
}

/// Waits until the redis-server on `port` answers and is `child` (a server
/// started again on the port it had).
fn wait_redis(port: u16, child: &Child) {
    let started = Instant::now();
    while !is_redis_child(port, child) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
