//! A fault proxy for the tests (issue 31): a loopback TCP proxy in front of a dependency
//! (Postgres, NATS, the provider) whose connections can be made to hang (sockets kept
//! open, nothing forwarded either way: what a network that swallows packets looks
//! like), be reset, or pass again. What was held back while hanging is forwarded when
//! they pass again, so the streams stay whole.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Keep every socket open and forward nothing (new connections are accepted and
    /// hang too).
    Hang,
    /// Close every connection, and each new one at once.
    Reset,
}

/// A running proxy; dropping it stops it and closes its connections.
pub struct FaultProxy {
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Reset);
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port to `upstream` (`host:port`, loopback only).
    pub async fn start(upstream: &str) -> FaultProxy {
        assert!(upstream.starts_with("127.0.0.1:") || upstream.starts_with("localhost:"), "loopback only");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let (mode, _) = watch::channel(Mode::Pass);
        let mode = Arc::new(mode);
        let upstream = upstream.to_owned();
        let modes = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, modes) = (upstream.clone(), modes.clone());
                tokio::spawn(async move {
                    if *modes.borrow() == Mode::Reset {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, modes.subscribe()), pipe(sr, cw, modes.subscribe()));
                });
            }
        });
        FaultProxy { port, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        // `send` would keep the old mode while no connection listens: a connection made
        // later must see this one.
        self.mode.send_replace(mode);
    }

    /// `url` (a `postgres://…` or `nats://…` URL naming `127.0.0.1:PORT`) through this proxy.
    pub fn url_for(&self, url: &str, upstream_port: u16) -> String {
        url.replace(&format!("127.0.0.1:{upstream_port}"), &format!("127.0.0.1:{}", self.port))
    }
}

/// Copies one direction while the mode passes; waits (holding the bytes back) while it
/// hangs; stops on reset or end of stream.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        loop {
            let now = *mode.borrow_and_update();
            match now {
                Mode::Pass => break,
                Mode::Reset => return,
                Mode::Hang => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                // Bytes read before a hang began are held until it ends.
                while *mode.borrow() == Mode::Hang {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                if *mode.borrow() == Mode::Reset || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
