//! The one port's connections, plain or TLS, as axum's `Listener`.
//!
//! A task accepts TCP connections and, with TLS, runs each handshake in its own task with a
//! deadline, so a client that never finishes its handshake holds up nobody. Finished
//! connections wait in a bounded queue for axum. Each carries a [`Remote`]: its address and
//! whether it presented a client certificate that verified (mutual TLS), which the peer
//! routes require when the node has a CA.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

/// How long a client may take to complete its TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the HTTP server; the accept loop waits when it is full.
const QUEUE: usize = 128;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote {
    /// The peer's address.
    pub addr: SocketAddr,
    /// It presented a client certificate that chains to the node's CA.
    pub verified_client: bool,
}

/// A connection: plain TCP or TLS over TCP.
pub(crate) enum Stream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// HTTPS.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Accepted connections for axum.
pub(crate) struct Listener {
    ready: mpsc::Receiver<(Stream, Remote)>,
    local: Remote,
}

impl Listener {
    /// Starts accepting on `tcp`, with TLS if `tls` is given.
    pub(crate) fn new(tcp: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        let local = Remote {
            addr: tcp.local_addr()?,
            verified_client: false,
        };
        let (tx, ready) = mpsc::channel(QUEUE);
        tokio::spawn(accept_loop(tcp, tls.map(TlsAcceptor::from), tx));
        Ok(Listener { ready, local })
    }
}

async fn accept_loop(tcp: TcpListener, tls: Option<TlsAcceptor>, tx: mpsc::Sender<(Stream, Remote)>) {
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                debug!(cause = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = tls.clone() else {
            let remote = Remote {
                addr,
                verified_client: false,
            };
            if tx.send((Stream::Plain(stream), remote)).await.is_err() {
                return;
            }
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let verified_client = tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                    let _ = tx
                        .send((
                            Stream::Tls(Box::new(tls)),
                            Remote {
                                addr,
                                verified_client,
                            },
                        ))
                        .await;
                }
                Ok(Err(e)) => debug!(%addr, cause = %e, "TLS handshake failed"),
                Err(_) => debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = Remote;

    async fn accept(&mut self) -> (Stream, Remote) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends with the runtime; nothing more will arrive.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Remote> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, Listener>> for Remote {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        *stream.remote_addr()
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
