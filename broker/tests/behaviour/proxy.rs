//! A tiny TCP proxy to put between a broker and `redis-server`, so a test
//! can break the broker's connections without touching Redis itself or
//! its other clients: [`cut`](Proxy::cut) closes them (and refuses new ones
//! until [`restore`](Proxy::restore)); [`freeze`](Proxy::freeze) keeps them
//! open but silently drops every byte, like a network partition that sends
//! no FIN or RST.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// One forwarded connection.
struct Conn {
    task: AbortHandle,
    frozen: Arc<AtomicBool>,
}

struct Shared {
    upstream: SocketAddr,
    /// While set, accepted connections are closed at once.
    refusing: AtomicBool,
    /// Connections accepted and forwarded so far.
    forwarded: AtomicUsize,
    live: Mutex<Vec<Conn>>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A proxy listening on an ephemeral local port.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            refusing: AtomicBool::new(false),
            forwarded: AtomicUsize::new(0),
            live: Mutex::new(Vec::new()),
        });
        let acceptor = tokio::spawn(accept(listener, shared.clone()));
        Self {
            addr,
            shared,
            acceptor,
        }
    }

    /// The URL a broker connects to in order to go through the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Closes every current connection and refuses new ones until
    /// [`restore`](Self::restore).
    pub fn cut(&self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
        for conn in self.shared.live().drain(..) {
            conn.task.abort();
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.shared.refusing.store(false, Ordering::SeqCst);
    }

    /// Every current connection stays open but forwards nothing from now
    /// on; new connections work normally.
    pub fn freeze(&self) {
        for conn in self.shared.live().iter() {
            conn.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// How many connections were forwarded since the start.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for conn in self.shared.live().drain(..) {
            conn.task.abort();
        }
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
            continue;
        };
        shared.forwarded.fetch_add(1, Ordering::SeqCst);
        let frozen = Arc::new(AtomicBool::new(false));
        let (client_read, client_write) = client.into_split();
        let (upstream_read, upstream_write) = upstream.into_split();
        let (up, down) = (frozen.clone(), frozen.clone());
        // When either direction ends, the task ends and drops both sockets;
        // aborting it does the same: both peers see the connection close.
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = pump(client_read, upstream_write, up) => {}
                _ = pump(upstream_read, client_write, down) => {}
            }
        });
        let mut live = shared.live();
        live.retain(|c| !c.task.is_finished());
        // A cut that raced this accept must not miss the new connection.
        if shared.refusing.load(Ordering::SeqCst) {
            task.abort();
        } else {
            live.push(Conn {
                task: task.abort_handle(),
                frozen,
            });
        }
    }
}

/// Copies one direction; once frozen, reads and discards.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
