//! One webhook request: HTTP/1.1 over a fresh connection, TLS (rustls with ring, the
//! provider already in the tree through async-nats) for `https`, bounded in time as a
//! whole and in the bytes read back. Not reqwest: reqwest with rustls would make every
//! other client in the workspace need a crypto provider installed before it is built.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// The TLS client: the platform's roots, plus those of `ca_file` (PEM) when given.
pub fn connector(ca_file: Option<&str>) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("{path}: {e}"))?;
        for cert in certs {
            roots.add(cert.map_err(|e| format!("{path}: {e}"))?).map_err(|e| format!("{path}: {e}"))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// What an endpoint answered.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
}

/// Why a request got no HTTP answer. The cause is logged; what is stored (a dead
/// letter's `last_error`) is only whether the policy refused the host or the endpoint
/// could not be reached, so a webhook cannot be used to tell closed, open and filtered
/// ports of a host apart.
#[derive(Debug)]
pub enum Unanswered {
    /// The host, or every address it resolves to, is refused by the host policy.
    Denied,
    /// Resolution, connection, TLS, the HTTP exchange or the time-out failed.
    Unreachable(String),
}

/// The limits of one delivery: the whole exchange within `timeout`, the connection (and
/// TLS) up by `send_by` when the body reveals personal values (their keys' lease), and
/// at most `read_max` bytes of the answer read.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub timeout: Duration,
    pub send_by: Option<std::time::Instant>,
    pub read_max: usize,
}

/// POSTs `body` to `url` with `headers`; the whole exchange (resolution, connect, TLS,
/// request, status and at most `read_max` bytes of the body) within `timeout`. The
/// connection goes to an address of the host that `policy` allows, as resolved here.
pub async fn post(
    tls: &TlsConnector,
    policy: &super::hosts::HostPolicy,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    bounds: Bounds,
) -> Result<Answer, Unanswered> {
    let Bounds { timeout, send_by, read_max } = bounds;
    let unreachable = |why: &str| Unanswered::Unreachable(why.to_owned());
    if policy.check_url(url).is_err() {
        return Err(Unanswered::Denied);
    }
    let uri: hyper::Uri = url.parse().map_err(|_| unreachable("the URL does not parse"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(unreachable("not an http(s) URL")),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| unreachable("the URL names no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map_or(host.clone(), |a| a.as_str().to_owned());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut request = hyper::Request::post(path).header("host", authority);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| Unanswered::Unreachable(e.to_string()))?;
    // A body revealing personal values is sent only while their keys' lease lasts: the
    // look-up, the connection and TLS must be done by `send_by`, or the attempt fails
    // (and the next one reveals again), so no value goes out after its erasure answered.
    let ready_by = |send_by: Option<std::time::Instant>| async move {
        match send_by {
            Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
            None => std::future::pending().await,
        }
    };
    let exchange = async {
        let connect = async {
            let address = allowed_address(policy, &host, port).await?;
            let tcp = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| Unanswered::Unreachable(format!("connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            Ok::<_, Unanswered>(tcp)
        };
        let tcp = tokio::select! {
            tcp = connect => tcp?,
            () = ready_by(send_by) => return Err(unreachable("the personal values' lease ended before sending")),
        };
        if https {
            let name =
                ServerName::try_from(host.clone()).map_err(|e| Unanswered::Unreachable(format!("server name: {e}")))?;
            let stream = tokio::select! {
                stream = tls.connect(name, tcp) => stream.map_err(|e| Unanswered::Unreachable(format!("TLS: {e}")))?,
                () = ready_by(send_by) => return Err(unreachable("the personal values' lease ended before sending")),
            };
            exchange(TokioIo::new(stream), request, read_max).await.map_err(Unanswered::Unreachable)
        } else {
            exchange(TokioIo::new(tcp), request, read_max).await.map_err(Unanswered::Unreachable)
        }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| unreachable("timed out"))?
}

/// The first address `host` resolves to that the policy allows (a literal is its own
/// address, in any spelling the resolver reads; see `hosts::literal_ip`).
async fn allowed_address(
    policy: &super::hosts::HostPolicy,
    host: &str,
    port: u16,
) -> Result<std::net::SocketAddr, Unanswered> {
    let resolved: Vec<std::net::SocketAddr> = match super::hosts::literal_ip(host) {
        Some(ip) => vec![std::net::SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Unanswered::Unreachable(format!("resolve: {e}")))?
            .collect(),
    };
    let mut denied = false;
    for address in resolved {
        if policy.allows_resolved(host, address.ip()) {
            return Ok(address);
        }
        denied = true;
    }
    Err(if denied { Unanswered::Denied } else { Unanswered::Unreachable("the host resolves to no address".into()) })
}

async fn exchange<T>(io: T, request: hyper::Request<Full<Bytes>>, read_max: usize) -> Result<Answer, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let answered = async {
        let response = sender.send_request(request).await.map_err(|e| format!("request failed: {e}"))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = response.into_body();
        let mut read = 0usize;
        while read < read_max {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
        Ok(Answer { status, retry_after })
    }
    .await;
    driver.abort();
    answered
}
