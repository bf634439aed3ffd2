//! A TCP relay between two processes whose link a test can cut and heal.
//!
//! While cut, the relay accepts connections but forwards nothing (packets vanish, as in a
//! network partition) and the connections that were open are dropped. Healing drops the
//! black-holed connections, so clients notice at once and reconnect through a working link.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct LinkProxy {
    /// `http://127.0.0.1:<port>`: give this to the client instead of the upstream.
    pub address: String,
    cut: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
    acceptor: AbortHandle,
}

impl LinkProxy {
    /// Relays to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> LinkProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = format!("http://{}", listener.local_addr().expect("addr"));
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<std::sync::Mutex<Vec<AbortHandle>>> = Arc::default();
        let acceptor = {
            let cut = cut.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    let cut = cut.load(Ordering::SeqCst);
                    let upstream = upstream.clone();
                    let task = tokio::spawn(async move {
                        if cut {
                            // Hold the connection open and forward nothing.
                            std::future::pending::<()>().await;
                        }
                        if let Ok(mut server) = TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    connections.lock().expect("lock").push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        LinkProxy {
            address,
            cut,
            connections,
            acceptor,
        }
    }

    fn drop_connections(&self) {
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    /// Partitions the link.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.drop_connections();
    }

    /// Restores the link.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.drop_connections();
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.drop_connections();
    }
}
