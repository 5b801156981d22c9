//! A lean HTTP/1.1 client for `--mode transfers`: one keep-alive connection per worker,
//! each request written as one buffer of bytes, and the answer's status, `Retry-After`
//! and body read back. No URL parsing, header maps or middleware per request: the load
//! generator shares the machine's two cores with the service it measures, and through
//! the typed client (reqwest) it spent 45–70 µs of CPU per transfer, about a sixth of
//! the machine's whole cost of one. The service receives what any client sends: the
//! same method, path, headers and JSON body.

use std::io::{Error, ErrorKind, Write};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer: its status, whether it said when to come back, and its body.
pub struct Answer {
    pub status: u16,
    pub retry_after: bool,
    pub body: Vec<u8>,
}

/// The largest answer head or body read (a transfer's answer is under 1 KB).
const ANSWER_BYTES_MAX: usize = 1 << 20;

/// One connection to the service, opened again after a failure or a `Connection: close`.
pub struct Connection {
    addr: SocketAddr,
    host: String,
    token: String,
    prefix: String,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    read: Vec<u8>,
}

impl Connection {
    /// A connection to `url` (`http://host:port`) for the ledger whose routes start with
    /// `prefix` (`/v1`, `/v1/ledgers/NAME`), opened now.
    pub async fn open(url: &str, token: &str, prefix: String) -> anyhow::Result<Connection> {
        let host = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let with_port = if host.contains(':') && !host.ends_with(']') { host.clone() } else { format!("{host}:80") };
        let addr = tokio::net::lookup_host(with_port.as_str())
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{host} does not resolve"))?;
        let mut connection = Connection {
            addr,
            host,
            token: token.to_owned(),
            prefix,
            stream: None,
            request: Vec::with_capacity(1024),
            read: Vec::with_capacity(4096),
        };
        connection.connect().await?;
        Ok(connection)
    }

    /// The path prefix of the connection's ledger.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    async fn connect(&mut self) -> std::io::Result<()> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        self.stream = Some(stream);
        Ok(())
    }

    /// `POST path` with `Idempotency-Key: key` and the JSON `body`. A failure drops the
    /// connection (the next request opens another); it is never retried here.
    pub async fn post(&mut self, path: &str, key: &str, body: &[u8]) -> std::io::Result<Answer> {
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\nidempotency-key: {key}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.host,
            self.token,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        if self.stream.is_none() {
            self.connect().await?;
        }
        match self.exchange().await {
            Ok((answer, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Ok(answer)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    /// Writes the request and reads one answer; says whether the connection stays open.
    async fn exchange(&mut self) -> std::io::Result<(Answer, bool)> {
        let stream = self.stream.as_mut().ok_or_else(|| Error::from(ErrorKind::NotConnected))?;
        stream.write_all(&self.request).await?;
        self.read.clear();
        let head_end = loop {
            if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if self.read.len() > ANSWER_BYTES_MAX {
                return Err(Error::new(ErrorKind::InvalidData, "an answer's head past 1 MiB"));
            }
            if stream.read_buf(&mut self.read).await? == 0 {
                return Err(Error::from(ErrorKind::UnexpectedEof));
            }
        };
        let head = std::str::from_utf8(&self.read[..head_end]).map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no status line"))?;
        let (mut length, mut retry_after, mut keep) = (None, false, true);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("retry-after") {
                retry_after = true;
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                keep = false;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(Error::new(ErrorKind::InvalidData, "a chunked answer (only sized ones are read)"));
            }
        }
        let length = length.ok_or_else(|| Error::new(ErrorKind::InvalidData, "an answer without content-length"))?;
        if length > ANSWER_BYTES_MAX {
            return Err(Error::new(ErrorKind::InvalidData, "an answer's body past 1 MiB"));
        }
        let total = head_end + 4 + length;
        while self.read.len() < total {
            if stream.read_buf(&mut self.read).await? == 0 {
                return Err(Error::from(ErrorKind::UnexpectedEof));
            }
        }
        // Nothing is pipelined: bytes past this answer would be a broken exchange.
        if self.read.len() > total {
            return Err(Error::new(ErrorKind::InvalidData, "bytes past the answer"));
        }
        Ok((Answer { status, retry_after, body: self.read[head_end + 4..total].to_vec() }, keep))
    }
}
