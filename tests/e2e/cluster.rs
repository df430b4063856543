//! The shared fixture for a production-shaped install: `allot server` on a
//! fixed loopback port and N `allot agent` processes, each with its own
//! agent token and state dir, all under one test dir. Tests kill and
//! restart either side (`kill_server`, `start_server`, `kill_agent`,
//! `start_agent`) and talk to the controller as its admin or its tenant.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use allot_sdk::{Client, proto};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::*;

/// Heartbeats in these tests: the bound on what the ledger may bill beyond
/// what an agent measured.
pub const HEARTBEAT_MS: i64 = 250;

/// A controller on a fixed loopback port (so agents find it again after a
/// restart) and agents in their own processes.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub server: Option<Child>,
    pub agents: HashMap<String, Child>,
    pub admin_token: String,
    pub tenant_token: String,
    /// Each node's agent token (bound to it), issued on its first start.
    pub agent_tokens: HashMap<String, String>,
    pub extra: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Drop for Cluster {
    /// Agents first, gracefully, so that they stop their jobs; then the
    /// controller.
    fn drop(&mut self) {
        for agent in self.agents.values_mut() {
            terminate(agent);
        }
        if let Some(server) = self.server.as_mut() {
            terminate(server);
        }
    }
}

impl Cluster {
    pub async fn start(dir: &Path, extra: &[&str]) -> Cluster {
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            port: free_port(),
            server: None,
            agents: HashMap::new(),
            admin_token: String::new(),
            tenant_token: String::new(),
            agent_tokens: HashMap::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.start_server().await;
        c.admin_token = std::fs::read_to_string(dir.join("controller/admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let admin = c.admin().await;
        admin.admin().create_tenant("crash").await.unwrap();
        c.tenant_token = admin
            .admin()
            .issue_token(proto::Role::Tenant, Some("crash"), "")
            .await
            .unwrap()
            .token;
        c
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["server", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--heartbeat", &format!("{HEARTBEAT_MS}ms"), "--data-dir"])
            .arg(self.dir.join("controller"))
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the server starts in time")
            .unwrap()
            .unwrap_or_default();
        assert!(line.starts_with("allot server listening on"), "{line}");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.server = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    /// SIGKILL: no shutdown, no flush.
    pub async fn kill_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            c.start_kill().unwrap();
            c.wait().await.unwrap();
        }
    }

    pub async fn start_agent(&mut self, node: &str, gpus: &str) {
        self.start_agent_with(node, gpus, &[]).await;
    }

    pub async fn start_agent_with(&mut self, node: &str, gpus: &str, extra: &[&str]) {
        if !self.agent_tokens.contains_key(node) {
            let token = self
                .admin()
                .await
                .admin()
                .issue_agent_token(node, "")
                .await
                .unwrap()
                .token;
            self.agent_tokens.insert(node.to_string(), token);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("agent-{node}.log")))
            .unwrap();
        let child = Command::new(BIN)
            .args([
                "agent",
                "--controller",
                &self.addr(),
                "--node",
                node,
                "--gpus",
                gpus,
            ])
            .arg("--state-dir")
            .arg(self.dir.join(format!("agent-{node}")))
            .args(extra)
            .env("ALLOT_TOKEN", &self.agent_tokens[node])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.agents.insert(node.to_string(), child);
    }

    pub async fn kill_agent(&mut self, node: &str) {
        let mut c = self.agents.remove(node).expect("agent runs");
        c.start_kill().unwrap();
        c.wait().await.unwrap();
    }

    pub async fn admin(&self) -> Client {
        connect_retrying(&self.addr(), &self.admin_token).await
    }

    pub async fn client(&self) -> Client {
        connect_retrying(&self.addr(), &self.tenant_token).await
    }

    pub async fn wait_nodes(&self, n: usize) {
        let client = self.client().await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ready = client
                .nodes()
                .await
                .map(|ns| ns.iter().filter(|x| x.state() == proto::NodeState::Ready).count())
                .unwrap_or(0);
            if ready >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} nodes never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn connect_retrying(addr: &str, token: &str) -> Client {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match Client::connect(addr.to_string(), token).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "cannot connect: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
