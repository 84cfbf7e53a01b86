//! A TCP proxy that can stop forwarding without closing anything: the network
//! fault where a link goes silent (a partition, a dead NAT entry) and neither
//! side is told.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards 127.0.0.1:`port` to a target port until [`Proxy::cut`].
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    forwarding: Arc<watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarding = Arc::new(watch::Sender::new(true));
        let accept = {
            let forwarding = forwarding.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        continue;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, forwarding.subscribe()));
                    tokio::spawn(pump(server_read, client_write, forwarding.subscribe()));
                }
            })
        };
        Proxy {
            port,
            forwarding,
            accept,
        }
    }

    /// A `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding in both directions; connections stay open.
    pub fn cut(&self) {
        self.forwarding.send_replace(false);
    }

    /// Forwards again what waited and what comes.
    pub fn heal(&self) {
        self.forwarding.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to` while forwarding is on; while it is off, reads
/// nothing (so the sender's buffers fill and nothing is closed).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut forwarding: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if forwarding.wait_for(|on| *on).await.is_err() {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = forwarding.wait_for(|on| !*on) => continue,
        };
        let Ok(n) = read else { return };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        // Bytes read before a cut are still delivered only after the heal.
        if forwarding.wait_for(|on| *on).await.is_err() || to.write_all(&buffer[..n]).await.is_err()
        {
            return;
        }
    }
}
