//! A fault proxy for the tests (issue 31): a loopback TCP proxy in front of a dependency
//! (Postgres, NATS, the provider) whose connections can be made to hang (sockets kept
//! open, nothing forwarded either way: what a network that swallows packets looks
//! like), be reset, or pass again. What was held back while hanging is forwarded when
//! they pass again, so the streams stay whole. [`FaultProxy::cut`] loses the connections
//! open now for good (a partition that outlives them: nothing forwarded, nothing closed,
//! ever), while new ones pass: a client must notice by itself that a session is dead.

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
    /// How many times the connections open then were cut; a connection made at cut `n`
    /// is lost once this passes `n`.
    cuts: Arc<watch::Sender<u64>>,
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
        let cuts = Arc::new(watch::channel(0u64).0);
        let upstream = upstream.to_owned();
        let (modes, cut) = (mode.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, modes, cut) = (upstream.clone(), modes.clone(), cut.clone());
                tokio::spawn(async move {
                    if *modes.borrow() == Mode::Reset {
                        return;
                    }
                    let born = *cut.borrow();
                    let Ok(server) = TcpStream::connect(&upstream).await else { return };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = Link { mode: modes.subscribe(), cuts: cut.subscribe(), born };
                    let down = Link { mode: modes.subscribe(), cuts: cut.subscribe(), born };
                    tokio::join!(pipe(cr, sw, up), pipe(sr, cw, down));
                });
            }
        });
        FaultProxy { port, mode, cuts, task }
    }

    pub fn set(&self, mode: Mode) {
        // `send` would keep the old mode while no connection listens: a connection made
        // later must see this one.
        self.mode.send_replace(mode);
    }

    /// Hangs every connection for `fault` (a fault's duration, deliberately slept), then
    /// passes again.
    pub async fn hang_for(&self, fault: std::time::Duration) {
        self.set(Mode::Hang);
        tokio::time::sleep(fault).await;
        self.set(Mode::Pass);
    }

    /// Loses every connection open now, for good: from here on they forward nothing
    /// either way and are never closed (until the proxy is dropped), as when the network
    /// between a client and its server stays broken longer than the session. Connections
    /// made after pass as the mode says.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// `url` (a `postgres://…` or `nats://…` URL naming `127.0.0.1:PORT`) through this proxy.
    pub fn url_for(&self, url: &str, upstream_port: u16) -> String {
        url.replace(&format!("127.0.0.1:{upstream_port}"), &format!("127.0.0.1:{}", self.port))
    }
}

/// What one direction of a connection follows: the proxy's mode, and its cuts.
struct Link {
    mode: watch::Receiver<Mode>,
    cuts: watch::Receiver<u64>,
    /// The cut count when the connection was made.
    born: u64,
}

impl Link {
    fn lost(&self) -> bool {
        *self.cuts.borrow() > self.born
    }

    /// A lost connection's end: it waits, forwarding nothing and closing nothing, until
    /// the proxy resets or is dropped.
    async fn lost_for_good(&mut self) {
        while *self.mode.borrow_and_update() != Mode::Reset {
            if self.mode.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Copies one direction while the mode passes; waits (holding the bytes back) while it
/// hangs; stops on reset or end of stream; once the connection is cut, forwards nothing
/// and keeps it open.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mut link: Link) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if link.lost() {
            // Held: the socket stays open, what arrives is never read.
            let _held = (from, to);
            link.lost_for_good().await;
            return;
        }
        loop {
            let now = *link.mode.borrow_and_update();
            match now {
                Mode::Pass => break,
                Mode::Reset => return,
                Mode::Hang => {
                    if link.mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                // Bytes read before a hang began are held until it ends.
                while *link.mode.borrow() == Mode::Hang {
                    if link.mode.changed().await.is_err() {
                        return;
                    }
                }
                if link.lost() {
                    continue;
                }
                if *link.mode.borrow() == Mode::Reset || to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = link.mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = link.cuts.changed() => {}
        }
    }
}
