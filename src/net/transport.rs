//! The byte streams MQTT runs over: plain TCP, TLS, WebSocket and WebSocket over TLS.
//!
//! A connection reads and writes through one [`Stream`]. Plain TCP keeps its fast path:
//! the socket is read on readiness, so an idle connection holds no read buffer, and while
//! the connection is parked the socket is taken off the runtime's I/O driver altogether
//! ([`Stream::detach`]: the parking lot watches it instead), so it holds no registration
//! either. A detached socket is read and written directly (non-blocking) until it would
//! block; only then is it registered with the driver. A new connection starts detached, so
//! the usual moments of a chat device's connection need no registration and
//! deregistration (two `epoll_ctl` each): connecting (CONNECT read, CONNACK written,
//! parked: 5 system calls instead of 7), a heartbeat while parked (4 instead of 6), and
//! hanging up (3 instead of 5).
//!
//! TLS and WebSocket streams are boxed behind `AsyncRead + AsyncWrite`; they buffer inside
//! rustls and tungstenite anyway, and are never parked.
//!
//! [`upgrade`] turns an accepted TCP socket into the listener's transport (TLS handshake,
//! WebSocket upgrade on the configured path with subprotocol `mqtt`).
//! [`WsStream`] carries MQTT's byte stream in WebSocket binary messages, as the MQTT
//! spec requires (section 6): a text frame closes the connection.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_sink::Sink;
use futures_util::Stream as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// What a TLS or WebSocket connection is behind its box.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Io for T {}

pub type BoxedIo = Box<dyn Io>;

/// A client connection's byte stream. One value for both directions: a connection never
/// reads and writes at the same moment (it writes between reads), so nothing is split
/// and no half is shared behind an `Arc` or a lock.
///
/// Every variant holds at most one thin pointer, so a `Stream` is 16 bytes: it is part of
/// every idle connection, which holds it `Detached` (a bare descriptor).
///
/// A plain TCP socket also records whether it is in the parking lot's epoll set from an
/// earlier park (`in_lot_set`, see `net::parking`): it stays there, disarmed, while the
/// connection works, and is armed again at the next park.
pub enum Stream {
    /// Plain TCP, registered with the runtime's I/O driver (boxed: 32 bytes only a
    /// working connection needs).
    Tcp {
        socket: Box<TcpStream>,
        in_lot_set: bool,
    },
    /// Plain TCP off the I/O driver (non-blocking), a new connection's or a parked one's:
    /// nothing but the descriptor (a registration is a 256-byte allocation, the largest
    /// thing an idle connection held). Reads and writes go straight to the socket; the
    /// first that would block registers it. `drained`: the last direct read took all the
    /// socket had, so the next read registers without trying (it would find nothing).
    Detached {
        socket: std::net::TcpStream,
        drained: bool,
        in_lot_set: bool,
    },
    /// TLS, WebSocket, WebSocket over TLS (boxed twice: a thin pointer).
    Other(Box<BoxedIo>),
    /// The socket was lost: registering or deregistering it failed (it is closed).
    Lost,
}

impl Stream {
    /// Plain TCP.
    pub fn tcp(socket: TcpStream) -> Stream {
        Stream::Tcp {
            socket: Box::new(socket),
            in_lot_set: false,
        }
    }

    /// Plain TCP not registered with the runtime (a socket just accepted, non-blocking):
    /// read and written directly until it would block.
    pub fn detached(socket: std::net::TcpStream) -> Stream {
        Stream::Detached {
            socket,
            drained: false,
            in_lot_set: false,
        }
    }

    /// A stream layered on TCP (TLS, WebSocket).
    pub fn other(io: impl Io + 'static) -> Stream {
        Stream::Other(Box::new(Box::new(io)))
    }

    /// Plain TCP (which can be detached while its connection is parked).
    pub fn is_tcp(&self) -> bool {
        matches!(self, Stream::Tcp { .. } | Stream::Detached { .. })
    }

    /// Whether the socket is in the parking lot's epoll set (plain TCP only).
    pub fn in_lot_set(&self) -> bool {
        match self {
            Stream::Tcp { in_lot_set, .. } | Stream::Detached { in_lot_set, .. } => *in_lot_set,
            Stream::Other(_) | Stream::Lost => false,
        }
    }

    /// Records whether the socket is in the parking lot's epoll set.
    pub fn set_in_lot_set(&mut self, in_set: bool) {
        if let Stream::Tcp { in_lot_set, .. } | Stream::Detached { in_lot_set, .. } = self {
            *in_lot_set = in_set;
        }
    }

    /// The descriptor of a detached socket, for the parking lot to watch.
    pub fn detached_fd(&self) -> Option<RawFd> {
        match self {
            Stream::Detached { socket, .. } => Some(socket.as_raw_fd()),
            _ => None,
        }
    }

    /// Takes a plain TCP socket off the runtime's I/O driver; other streams stay as they
    /// are. Whoever watches the socket meanwhile must register it themselves (and do so
    /// in a way that reports input already waiting: epoll does on `EPOLL_CTL_ADD`).
    pub fn detach(&mut self) -> io::Result<()> {
        *self = match std::mem::replace(self, Stream::Lost) {
            Stream::Tcp { socket, in_lot_set } => Stream::Detached {
                socket: socket.into_std()?,
                drained: false,
                in_lot_set,
            },
            // Whoever watches it wakes the connection when there is input: try it then.
            Stream::Detached {
                socket, in_lot_set, ..
            } => Stream::Detached {
                socket,
                drained: false,
                in_lot_set,
            },
            other => other,
        };
        Ok(())
    }

    /// One non-blocking read from a detached socket into `buf`: `Ok(None)` when it has
    /// nothing, `Ok(Some(0))` at end of stream; an error for any other stream.
    pub fn read_detached(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        use std::io::Read;
        let Stream::Detached {
            socket, drained, ..
        } = self
        else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let read = try_recv(|| (&*socket).read(buf))?;
        if let Some(n) = read {
            *drained = n > 0 && n < buf.len();
        }
        Ok(read)
    }

    /// Writes to a detached socket what it takes at once: the bytes written; an error for
    /// any other stream.
    pub fn write_detached(&self, bytes: &[u8]) -> io::Result<usize> {
        let Stream::Detached { socket, .. } = self else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let rest = write_direct(socket, bytes)?;
        Ok(bytes.len() - rest.len())
    }

    /// Registers a detached socket with the runtime's I/O driver again.
    fn attach(&mut self) -> io::Result<()> {
        if let Stream::Detached { .. } = self {
            if let Stream::Detached {
                socket, in_lot_set, ..
            } = std::mem::replace(self, Stream::Lost)
            {
                *self = Stream::Tcp {
                    socket: Box::new(TcpStream::from_std(socket)?),
                    in_lot_set,
                };
            }
        }
        Ok(())
    }

    /// Waits for input and appends it to `buf`; 0 at end of stream. Reserves `reserve`
    /// bytes when `buf` is nearly full. On TCP the reservation happens only once the
    /// socket is readable, so a connection waiting for input holds no buffer.
    ///
    /// Cancel safe: if the future is dropped before it completes, nothing was read.
    pub async fn read(&mut self, buf: &mut BytesMut, reserve: usize) -> io::Result<usize> {
        if let Stream::Detached {
            socket,
            drained: drained @ false,
            ..
        } = self
        {
            if let Some(n) = read_direct(socket, buf, reserve, drained)? {
                return Ok(n);
            }
        }
        self.attach()?;
        match self {
            // A poll_fn rather than `readable().await`: an idle connection waits here, and
            // this future is part of its task's size (a few dozen bytes instead of 200).
            Stream::Tcp { socket, .. } => {
                let socket = &*socket;
                std::future::poll_fn(|cx| poll_read_tcp(socket, cx, buf, reserve)).await
            }
            Stream::Other(io) => {
                make_room(buf, reserve);
                io.read_buf(buf).await
            }
            Stream::Detached { .. } | Stream::Lost => Err(lost()),
        }
    }

    /// Writes all of `bytes` and flushes them (TLS records and WebSocket frames are sent
    /// only on flush).
    pub async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if let Stream::Detached { socket, .. } = self {
            bytes = write_direct(socket, bytes)?;
            if bytes.is_empty() {
                return Ok(());
            }
        }
        self.attach()?;
        match self {
            Stream::Tcp { socket, .. } => socket.write_all(bytes).await,
            Stream::Other(io) => {
                io.write_all(bytes).await?;
                io.flush().await
            }
            Stream::Detached { .. } | Stream::Lost => Err(lost()),
        }
    }

    /// Closes the sending direction (TLS and WebSocket send their close first).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp { socket, .. } => socket.shutdown().await,
            Stream::Detached { socket, .. } => socket.shutdown(std::net::Shutdown::Write),
            Stream::Other(io) => io.shutdown().await,
            Stream::Lost => Err(lost()),
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the socket was lost while its connection was parked",
    )
}

/// One read straight from a detached (non-blocking) socket: `Some(n)` when it read `n`
/// bytes (0 at end of stream), setting `drained` when they were all it had; `None` when
/// it had nothing yet (the caller registers it and waits). Holds no buffer then.
fn read_direct(
    socket: &std::net::TcpStream,
    buf: &mut BytesMut,
    reserve: usize,
    drained: &mut bool,
) -> io::Result<Option<usize>> {
    make_room(buf, reserve);
    let room = buf.capacity() - buf.len();
    match try_recv(|| socket2::SockRef::from(socket).recv(buf.spare_capacity_mut()))? {
        Some(n) => {
            // SAFETY: recv initialised the first `n` bytes of the spare capacity.
            unsafe { buf.advance_mut(n) };
            // Less than the room it had: the socket had no more (as in poll_read_tcp).
            *drained = n > 0 && n < room;
            Ok(Some(n))
        }
        None => {
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
            Ok(None)
        }
    }
}

/// One receive from a non-blocking socket, again if a signal interrupted it: `Ok(None)`
/// when it has nothing now.
fn try_recv(mut recv: impl FnMut() -> io::Result<usize>) -> io::Result<Option<usize>> {
    loop {
        match recv() {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Writes what a detached (non-blocking) socket takes at once; returns the rest (empty
/// when it took everything).
fn write_direct<'a>(socket: &std::net::TcpStream, mut bytes: &'a [u8]) -> io::Result<&'a [u8]> {
    use std::io::Write;
    while !bytes.is_empty() {
        match (&*socket).write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(bytes)
}

fn poll_read_tcp(
    socket: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    reserve: usize,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(socket.poll_read_ready(cx))?;
        make_room(buf, reserve);
        let room = buf.capacity() - buf.len();
        let mut read = None;
        // Through `try_io`, so that the read can say the socket is drained: tokio keeps
        // readiness set until a read fails with WouldBlock, which costs a `recv` per
        // wake-up that finds nothing (nearly one per delivery to a subscriber that acks
        // each message). A read that filled less than the room it had took everything
        // the socket held; clearing readiness then is safe, because readiness is cleared
        // only if no newer event arrived since it was sampled, and data arriving later
        // raises a new edge-triggered event.
        let result = socket.try_io(Interest::READABLE, || {
            let n = socket.try_read_buf(buf)?;
            read = Some(n);
            if n > 0 && n < room {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        if let Some(n) = read {
            return Poll::Ready(Ok(n));
        }
        match result {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Readiness was stale (it stays set after a read that filled the buffer);
                // the failed read cleared it, and the next poll_read_ready registers for
                // the real thing. Wait without holding the buffer just reserved.
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

fn make_room(buf: &mut BytesMut, reserve: usize) {
    if buf.capacity() - buf.len() < reserve / 4 {
        buf.reserve(reserve);
    }
}

/// Why a TLS listener's certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the certificate chain {}: {message}", path.display())]
    Certificates {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("cannot read the private key {}: {message}", path.display())]
    Key {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("the certificate and key do not make a TLS server configuration: {0}")]
    Config(String),
}

/// A rustls acceptor for the PEM certificate chain and private key files.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsSetupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::Certificates {
            path: cert_file.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Certificates {
            path: cert_file.to_path_buf(),
            message: "no CERTIFICATE block in the file".to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsSetupError::Key {
        path: key_file.to_path_buf(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How an accepted socket becomes an MQTT byte stream.
#[derive(Clone)]
pub struct Upgrade {
    pub tls: Option<TlsAcceptor>,
    /// The WebSocket upgrade path, for WS and WSS.
    pub ws_path: Option<Arc<str>>,
    /// Largest WebSocket message accepted (the MQTT packet limit plus framing slack).
    pub max_ws_message: usize,
}

impl Upgrade {
    /// Plain TCP: nothing to do before MQTT.
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.ws_path.is_none()
    }
}

/// Runs the listener's handshakes on an accepted socket (the caller bounds the time).
pub async fn upgrade(stream: TcpStream, how: &Upgrade) -> io::Result<Stream> {
    match (&how.tls, &how.ws_path) {
        (None, None) => Ok(Stream::tcp(stream)),
        (Some(tls), None) => {
            let stream = tls.accept(stream).await?;
            Ok(Stream::other(stream))
        }
        (None, Some(path)) => {
            let ws = accept_ws(stream, path, how.max_ws_message).await?;
            Ok(Stream::other(ws))
        }
        (Some(tls), Some(path)) => {
            let stream = tls.accept(stream).await?;
            let ws = accept_ws(stream, path, how.max_ws_message).await?;
            Ok(Stream::other(ws))
        }
    }
}

/// The WebSocket upgrade: the request must be for `path`; the subprotocol `mqtt` is chosen
/// when offered (MQTT 3.1's `mqttv3.1` too). A client offering only other subprotocols is
/// refused; one offering none is accepted, as most brokers do.
// The error type is the callback signature tungstenite asks for.
#[allow(clippy::result_large_err)]
async fn accept_ws<S>(stream: S, path: &str, max_message: usize) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let check = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != path {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "no MQTT endpoint at this path",
            ));
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        if offered.is_empty() {
            return Ok(response);
        }
        match offered.iter().find(|p| **p == "mqtt" || **p == "mqttv3.1") {
            Some(chosen) => {
                if let Ok(value) = HeaderValue::from_str(chosen) {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", value);
                }
                Ok(response)
            }
            None => Err(refuse(
                StatusCode::BAD_REQUEST,
                "the WebSocket subprotocol must be mqtt",
            )),
        }
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config))
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {e}")))?;
    Ok(WsStream::new(ws))
}

fn refuse(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_string()));
    *response.status_mut() = status;
    response
}

/// MQTT's byte stream over WebSocket binary messages: reads concatenate the messages (a
/// packet may span several, or a message hold several packets), each flush sends what was
/// written as one message.
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the last binary message read.
    pending: Bytes,
    /// Written, not yet sent.
    out: BytesMut,
}

impl<S> WsStream<S> {
    /// Wraps an upgraded WebSocket (either side: tests use it as a client).
    pub fn new(ws: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            ws,
            pending: Bytes::new(),
            out: BytesMut::new(),
        }
    }
}

fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {other}")),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Pings are answered by tungstenite itself while it reads.
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(WsMessage::Binary(data))) => this.pending = data,
                Some(Ok(WsMessage::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(WsMessage::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a WebSocket text frame: MQTT travels in binary frames only",
                    )))
                }
                Some(Ok(_)) => {} // ping, pong, raw frame
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Collected until flush, which sends it as one message. The connection writes its
        // whole batch and then flushes, so this never grows beyond one batch.
        self.get_mut().out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.out.is_empty() {
            ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(ws_error)?;
            let message = WsMessage::Binary(this.out.split().freeze());
            Pin::new(&mut this.ws)
                .start_send(message)
                .map_err(ws_error)?;
        }
        Pin::new(&mut this.ws).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut *this).poll_flush(cx))?;
        Pin::new(&mut this.ws).poll_close(cx).map_err(ws_error)
    }
}
