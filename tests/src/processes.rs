//! The four services as separate processes: their real binaries, built on
//! first use, each configured by a TOML file written from the test's
//! settings (the same loader the binaries use in production), logging to a
//! file. A test can SIGKILL one, restart it (with a crash point armed, say),
//! and see how it ended. A set may run several instances of each service
//! (competing for the same streams and databases), each on ports of its own.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use sagactl::poll::Poll;
use sagactl::system::{Endpoints, SystemConfig};
use serde::Serialize;

/// One of the four services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Order,
    Inventory,
    Payment,
    Reservation,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Order,
        Service::Inventory,
        Service::Payment,
        Service::Reservation,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Service::Order => "order-svc",
            Service::Inventory => "inventory-svc",
            Service::Payment => "payment-svc",
            Service::Reservation => "reservation-svc",
        }
    }

    /// The variable naming its TOML file.
    fn config_var(self) -> &'static str {
        match self {
            Service::Order => "ORDER_SVC_CONFIG",
            Service::Inventory => "INVENTORY_SVC_CONFIG",
            Service::Payment => "PAYMENT_SVC_CONFIG",
            Service::Reservation => "RESERVATION_SVC_CONFIG",
        }
    }
}

/// One process of a service: instance 0 is the one every set has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub service: Service,
    pub index: usize,
}

impl From<Service> for Instance {
    fn from(service: Service) -> Self {
        Self { service, index: 0 }
    }
}

impl Instance {
    /// Its file names: `order-svc` for instance 0, `order-svc-1` after.
    fn stem(self) -> String {
        match self.index {
            0 => self.service.binary().to_owned(),
            i => format!("{}-{i}", self.service.binary()),
        }
    }
}

/// Where the service binaries are, building them on first use (with the
/// cargo and target directory that built this test).
pub fn binaries() -> anyhow::Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("building the service binaries: {e}"))
}

fn build_binaries() -> anyhow::Result<PathBuf> {
    // .../target/<profile>/deps/e2e-<hash>
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the target directory")?
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `cargo test` gives the test its package's variables (manifest
    // directory, name, version...); build scripts that watch them (ring's)
    // would see them change and rebuild, with everything above them, at
    // every switch between this build and the developer's own.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
        {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd.args(["build", "--bins"]);
    for s in Service::ALL {
        cmd.args(["-p", s.binary()]);
    }
    if dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let out = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for s in Service::ALL {
        let bin = dir.join(s.binary());
        if !bin.exists() {
            bail!("{} not found after building", bin.display());
        }
    }
    Ok(dir)
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

/// The service processes of a test.
pub struct Processes {
    dir: PathBuf,
    bin: &'static Path,
    children: HashMap<Instance, Child>,
    /// Instance 0 of each service.
    pub endpoints: HashMap<Service, Endpoints>,
    /// Every instance's.
    pub instances: HashMap<Instance, Endpoints>,
}

impl Processes {
    /// Fixes the services' ports in `cfg` (the order service is pointed at
    /// the others) and writes each one's TOML file; starts nothing.
    pub fn prepare(cfg: &mut SystemConfig, ns: &str) -> anyhow::Result<Self> {
        Self::prepare_instances(cfg, ns, 1)
    }

    /// Like [`Processes::prepare`], for `count` instances of every service;
    /// `cfg` ends up with instance 0's ports. Instance i of order-svc calls
    /// instance i of inventory and reservation, whose repair loops call it.
    pub fn prepare_instances(
        cfg: &mut SystemConfig,
        ns: &str,
        count: usize,
    ) -> anyhow::Result<Self> {
        let bin = binaries()?;
        let dir = std::env::temp_dir().join(format!("saga-{ns}"));
        std::fs::create_dir_all(&dir)?;
        let mut set = Self {
            dir,
            bin,
            children: HashMap::new(),
            endpoints: HashMap::new(),
            instances: HashMap::new(),
        };
        for index in (0..count.max(1)).rev() {
            let endpoints = set.write_configs(cfg, index)?;
            for (service, e) in endpoints {
                set.instances.insert(Instance { service, index }, e);
                if index == 0 {
                    set.endpoints.insert(service, e);
                }
            }
        }
        Ok(set)
    }

    /// Gives instance `index` of every service free ports in `cfg` and
    /// writes their TOML files.
    fn write_configs(
        &self,
        cfg: &mut SystemConfig,
        index: usize,
    ) -> anyhow::Result<HashMap<Service, Endpoints>> {
        let mut endpoints = HashMap::new();
        for s in Service::ALL {
            let e = Endpoints {
                grpc: ([127, 0, 0, 1], crate::ports::free_port()?).into(),
                admin: ([127, 0, 0, 1], crate::ports::free_port()?).into(),
                tls: false,
            };
            endpoints.insert(s, e);
        }
        let set = |l: &mut saga_shared::config::ListenConfig, addr| l.listen = addr;
        cfg.order.grpc.listen = endpoints[&Service::Order].grpc;
        set(&mut cfg.order.admin, endpoints[&Service::Order].admin);
        cfg.inventory.grpc.listen = endpoints[&Service::Inventory].grpc;
        set(
            &mut cfg.inventory.admin,
            endpoints[&Service::Inventory].admin,
        );
        cfg.payment.grpc.listen = endpoints[&Service::Payment].grpc;
        set(&mut cfg.payment.admin, endpoints[&Service::Payment].admin);
        cfg.reservation.grpc.listen = endpoints[&Service::Reservation].grpc;
        set(
            &mut cfg.reservation.admin,
            endpoints[&Service::Reservation].admin,
        );
        cfg.order.order.inventory_url = endpoints[&Service::Inventory].grpc_url();
        cfg.order.order.reservation_url = endpoints[&Service::Reservation].grpc_url();
        cfg.point_repair_at(&endpoints[&Service::Order].grpc_url());

        let write = |s: Service, config: &dyn erased::Toml| -> anyhow::Result<()> {
            let stem = Instance { service: s, index }.stem();
            std::fs::write(self.dir.join(format!("{stem}.toml")), config.to_toml()?)?;
            Ok(())
        };
        write(Service::Order, &cfg.order)?;
        write(Service::Inventory, &cfg.inventory)?;
        write(Service::Payment, &cfg.payment)?;
        write(Service::Reservation, &cfg.reservation)?;
        Ok(endpoints)
    }

    pub fn log_path(&self, s: impl Into<Instance>) -> PathBuf {
        self.dir.join(format!("{}.log", s.into().stem()))
    }

    /// The last lines of a service's log (for failure messages).
    pub fn log_tail(&self, s: impl Into<Instance>, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(s)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts a service (with extra environment, e.g. a crash point) and
    /// waits until its `/readyz` answers 200.
    pub async fn start(
        &mut self,
        s: impl Into<Instance>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let s = s.into();
        self.spawn(s, env)?;
        self.wait_ready(s).await
    }

    /// Starts a service without waiting for it.
    pub fn spawn(&mut self, s: impl Into<Instance>, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let s = s.into();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(s))?;
        let mut cmd = Command::new(self.bin.join(s.service.binary()));
        cmd.env(
            s.service.config_var(),
            self.dir.join(format!("{}.toml", s.stem())),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", s.stem()))?;
        self.children.insert(s, child);
        Ok(())
    }

    /// Waits until a service's `/readyz` answers 200.
    pub async fn wait_ready(&mut self, s: impl Into<Instance>) -> anyhow::Result<()> {
        let s = s.into();
        let admin = self.instances[&s].admin;
        let polled = Poll::new(Duration::from_millis(50), Duration::from_secs(60))
            .until((), |()| {
                let exited = self.ended(s).map(|ended| (ended, self.log_tail(s, 30)));
                async move {
                    if let Some((ended, log)) = exited {
                        bail!("{} exited ({ended:?}) while starting:\n{log}", s.stem());
                    }
                    Ok(match crate::http_get(admin, "/readyz").await {
                        Ok((200, _)) => ControlFlow::Break(()),
                        _ => ControlFlow::Continue(()),
                    })
                }
            })
            .await?;
        if polled.is_continue() {
            bail!(
                "{} not ready after 60s:\n{}",
                s.stem(),
                self.log_tail(s, 30)
            );
        }
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self, s: impl Into<Instance>) {
        if let Some(mut child) = self.children.remove(&s.into()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: a graceful stop, which the caller may wait for with
    /// [`Processes::wait_ended`].
    pub fn terminate(&mut self, s: impl Into<Instance>) {
        if let Some(child) = self.children.get(&s.into()) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// How the service's process ended, if it has.
    pub fn ended(&mut self, s: impl Into<Instance>) -> Option<Ended> {
        let s = s.into();
        let child = self.children.get_mut(&s)?;
        let status = child.try_wait().ok()??;
        self.children.remove(&s);
        Some(match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Code(code),
            (None, Some(sig)) => Ended::Signal(sig),
            (None, None) => Ended::Code(-1),
        })
    }

    /// Waits until the service's process ends by itself.
    pub async fn wait_ended(
        &mut self,
        s: impl Into<Instance>,
        timeout: Duration,
    ) -> anyhow::Result<Ended> {
        let s = s.into();
        let polled = Poll::new(Duration::from_millis(20), timeout)
            .until((), |()| {
                std::future::ready(Ok(match self.ended(s) {
                    Some(ended) => ControlFlow::Break(ended),
                    None => ControlFlow::Continue(()),
                }))
            })
            .await?;
        match polled {
            ControlFlow::Break(ended) => Ok(ended),
            ControlFlow::Continue(()) => bail!("{} still running after {timeout:?}", s.stem()),
        }
    }

    /// SIGTERM to every service (a graceful stop), then waits for them;
    /// SIGKILL for any still running after 20 s.
    pub async fn stop(&mut self) {
        for child in self.children.values() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let children = &mut self.children;
        // Those still running after 20 s are killed below.
        let _all_ended = Poll::new(Duration::from_millis(20), Duration::from_secs(20))
            .until((), |()| {
                children.retain(|_, child| !matches!(child.try_wait(), Ok(Some(_))));
                std::future::ready(Ok(if children.is_empty() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }))
            })
            .await;
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writing any of the four configuration structs as TOML.
mod erased {
    pub trait Toml {
        fn to_toml(&self) -> anyhow::Result<String>;
    }

    impl<T: super::Serialize> Toml for T {
        fn to_toml(&self) -> anyhow::Result<String> {
            Ok(toml::to_string(self)?)
        }
    }
}
