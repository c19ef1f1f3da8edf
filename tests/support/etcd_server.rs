//! A real etcd server for the discovery tests: Debian's `etcd-server`
//! (installed by .ci/run), started on free loopback ports with its data in a
//! temporary directory, stopped by its PID (the child is killed on drop).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd.
pub struct EtcdServer {
    pub url: String,
    data: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The etcd binary, or why the tests cannot run: in CI (`CI=true`) a
/// missing binary fails the test loudly; elsewhere the test is skipped with
/// the same message.
pub fn etcd_binary() -> Option<&'static str> {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("etcd");
    }
    let message =
        "etcd is not installed: `apt-get install etcd-server` (the README and .ci/run do this)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl EtcdServer {
    /// Starts etcd on free ports, with a fresh data directory; `None` when
    /// the binary is missing outside CI.
    pub async fn start() -> Option<Self> {
        let binary = etcd_binary()?;
        for attempt in 0..5 {
            let data = std::env::temp_dir().join(format!(
                "tower-lb-etcd-{}-{attempt}-{}",
                std::process::id(),
                free_port()
            ));
            let mut server = EtcdServer {
                url: String::new(),
                data,
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            };
            server.url = format!("http://127.0.0.1:{}", server.client_port);
            if server.spawn(binary).await {
                return Some(server);
            }
            server.kill();
        }
        panic!("etcd did not start in 5 attempts");
    }

    /// Starts the process; true once it answers.
    async fn spawn(&mut self, binary: &str) -> bool {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(binary)
            .args(["--name", "tower-lb-test"])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("tower-lb-test={peer}"))
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            return false;
        };
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: a port clash, most likely
            }
            if let Ok(mut client) = self.client().await {
                if client.get("probe", None).await.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A client of this server.
    pub async fn client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        let options =
            etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
        etcd_client::Client::connect([self.url.as_str()], Some(options)).await
    }

    /// The port clients connect to.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Kills the process (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        for _ in 0..20 {
            if self.spawn("etcd").await {
                return;
            }
            self.kill();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not come back");
    }

    /// Puts `key` = `value`.
    pub async fn put(&self, key: &str, value: &str) {
        let mut client = self.client().await.expect("etcd answers");
        client.put(key, value, None).await.expect("put");
    }

    /// Puts every pair, a hundred to a transaction (etcd's default limit
    /// is 128 operations and 1.5 MiB per request).
    pub async fn put_all(&self, pairs: &[(String, String)]) {
        let mut client = self.client().await.expect("etcd answers");
        for chunk in pairs.chunks(100) {
            let puts: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|(key, value)| etcd_client::TxnOp::put(key.as_str(), value.as_str(), None))
                .collect();
            client
                .txn(etcd_client::Txn::new().and_then(puts))
                .await
                .expect("a transaction of puts");
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) {
        let mut client = self.client().await.expect("etcd answers");
        client.delete(key, None).await.expect("delete");
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
