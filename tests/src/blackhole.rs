//! A TCP proxy that a test can cut: the connections it carries then stop
//! passing bytes while their sockets stay open (a peer whose node died
//! without a word, a network that drops packets), and connections made
//! after the cut pass as before (the peer's replacement, reached anew).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The proxy; it stops, with every connection it carries, when dropped.
pub struct Blackhole {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    /// Connections numbered below this pass nothing more.
    cut_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    /// Listens on a free port; it carries nothing until [`Self::point_at`].
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let target = Arc::new(Mutex::new(None));
        let cut_below = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicU64::new(0));
        let accepting = {
            let (target, cut_below, next) = (target.clone(), cut_below.clone(), next.clone());
            tokio::spawn(async move {
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let to = *target.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(to) = to else { continue };
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    let cut_below = cut_below.clone();
                    connections.spawn(async move {
                        if let Ok(server) = TcpStream::connect(to).await {
                            carry(client, server, id, cut_below).await;
                        }
                    });
                    while connections.try_join_next().is_some() {}
                }
            })
        };
        Ok(Self {
            addr,
            target,
            cut_below,
            next,
            accepting,
        })
    }

    /// Where the proxy carries the connections made to it from now on.
    pub fn point_at(&self, target: SocketAddr) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Some(target);
    }

    /// `http://` and the proxy's address.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every connection open now passes nothing more, its sockets left
    /// open; new ones pass.
    pub fn cut(&self) {
        self.cut_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Connections made to the proxy so far.
    pub fn connections(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Passes bytes both ways until either side closes, or for ever holding
/// both sockets once the connection is cut.
async fn carry(client: TcpStream, server: TcpStream, id: u64, cut_below: Arc<AtomicU64>) {
    let (client_in, client_out) = client.into_split();
    let (server_in, server_out) = server.into_split();
    tokio::select! {
        () = pass(client_in, server_out, id, &cut_below) => {}
        () = pass(server_in, client_out, id, &cut_below) => {}
    }
}

async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    cut_below: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id < cut_below.load(Ordering::SeqCst) {
            // Silence: nothing passes and nothing is closed.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
