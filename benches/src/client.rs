//! A raw MQTT client on `tern-codec` over a tokio `TcpStream`, made for load: packets are
//! encoded into one buffer and written in batches, and the socket splits into a
//! [`Reader`] and a [`Writer`] so one task can read while another publishes.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_codec::{
    ByteString, Connect, Disconnect, Packet, Properties, Protocol, PubResponse, Publish, QoS,
    ReasonCode, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::{Error, Result};

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 1 << 20;
/// How long the handshake (CONNACK, SUBACK) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Buffer size of a default client (and how much its read buffer grows at a time).
const BUFFER: usize = 64 * 1024;

/// Keep alive of a default client, in seconds: long enough that no run needs a PINGREQ
/// (the broker closes a connection silent for 1.5 times it), and not 0, which some
/// brokers refuse (rumqttd: `ZeroKeepAlive`).
pub const DEFAULT_KEEP_ALIVE: u16 = 600;

/// The receiving half of a connection.
pub struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
    /// How much the read buffer grows by when it runs short.
    chunk: usize,
    protocol: Protocol,
    id: String,
}

/// The sending half of a connection: packets are queued into a buffer and sent by
/// [`Writer::flush`].
pub struct Writer {
    half: OwnedWriteHalf,
    buf: BytesMut,
    protocol: Protocol,
}

/// A connected client (CONNACK received), before it is split.
pub struct Client {
    pub reader: Reader,
    pub writer: Writer,
}

/// How a client connects, beyond the broker's address and the protocol.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub client_id: String,
    /// MQTT user name (without a password: an anonymous client acting as that user, where
    /// the broker allows it).
    pub username: Option<String>,
    /// MQTT password (a user's password, or a token).
    pub password: Option<Bytes>,
    /// Keep alive in seconds (0: none). The client must then send something (PINGREQ) at
    /// least this often.
    pub keep_alive: u16,
    /// Local address to bind before connecting (port chosen by the system), to spread many
    /// connections over several source addresses.
    pub bind: Option<IpAddr>,
    /// Initial size of the read and write buffers (the read buffer grows by this much).
    /// Small for the thousands of idle clients of a broadcast run.
    pub buffer: usize,
    /// Clean session (3.1.1) / Clean Start (5.0). `false` resumes or creates a persistent
    /// session (with MQTT 5 the session then never expires: Session Expiry Interval
    /// 0xFFFFFFFF, which the broker may lower).
    pub clean_start: bool,
}

impl ConnectOptions {
    /// Client ID `client_id`, no user name, keep alive [`DEFAULT_KEEP_ALIVE`], no bind,
    /// 64 KiB buffers, clean session.
    pub fn new(client_id: &str) -> ConnectOptions {
        ConnectOptions {
            client_id: client_id.to_string(),
            username: None,
            password: None,
            keep_alive: DEFAULT_KEEP_ALIVE,
            bind: None,
            buffer: BUFFER,
            clean_start: true,
        }
    }
}

impl Client {
    /// Connects with a clean session and the default keep alive, and awaits a successful
    /// CONNACK.
    pub async fn connect(addr: SocketAddr, protocol: Protocol, client_id: &str) -> Result<Client> {
        Client::connect_with(addr, protocol, &ConnectOptions::new(client_id)).await
    }

    /// Connects as `opts` says, and awaits a successful CONNACK.
    pub async fn connect_with(
        addr: SocketAddr,
        protocol: Protocol,
        opts: &ConnectOptions,
    ) -> Result<Client> {
        let client_id = opts.client_id.as_str();
        let stream = match opts.bind {
            None => TcpStream::connect(addr).await,
            Some(local) => {
                let socket = if local.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket
                    .bind(SocketAddr::new(local, 0))
                    .map_err(|e| Error::new(format!("cannot bind to {local}: {e}")))?;
                socket.connect(addr).await
            }
        }
        .map_err(|e| Error::new(format!("cannot connect to {addr}: {e}")))?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let buffer = opts.buffer.max(256);
        let mut client = Client {
            reader: Reader {
                half: r,
                buf: BytesMut::with_capacity(buffer),
                chunk: buffer,
                protocol,
                id: client_id.to_string(),
            },
            writer: Writer {
                half: w,
                buf: BytesMut::with_capacity(buffer),
                protocol,
            },
        };
        let mut properties = Properties::default();
        if !opts.clean_start && protocol == Protocol::V5 {
            properties.session_expiry_interval = Some(u32::MAX);
        }
        let connect = Connect {
            protocol,
            clean_start: opts.clean_start,
            keep_alive: opts.keep_alive,
            properties,
            client_id: ByteString::from(client_id.to_string()),
            will: None,
            username: opts.username.clone().map(ByteString::from),
            password: opts.password.clone(),
        };
        client.writer.queue(&Packet::Connect(Box::new(connect)))?;
        client.writer.flush().await?;
        match client.reader.next_timeout(HANDSHAKE_TIMEOUT).await? {
            Packet::ConnAck(ack) if !ack.code.is_error() => Ok(client),
            Packet::ConnAck(ack) => Err(Error::new(format!(
                "{client_id}: broker refused the connection: {:?}",
                ack.code
            ))),
            other => Err(Error::new(format!(
                "{client_id}: expected CONNACK, got {}",
                other.name()
            ))),
        }
    }

    /// Subscribes to one filter and awaits a SUBACK granting it.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<()> {
        self.writer.queue_subscribe(1, filter, qos)?;
        self.writer.flush().await?;
        let id = self.reader.id.clone();
        match self.reader.next_timeout(HANDSHAKE_TIMEOUT).await? {
            Packet::SubAck(ack) if ack.reasons.iter().all(|r| !r.is_error()) => Ok(()),
            Packet::SubAck(ack) => Err(Error::new(format!(
                "{id}: subscription to {filter} refused: {:?}",
                ack.reasons
            ))),
            other => Err(Error::new(format!(
                "{id}: expected SUBACK, got {}",
                other.name()
            ))),
        }
    }
}

impl Reader {
    /// The next packet; a closed connection is an error.
    pub async fn next(&mut self) -> Result<Packet> {
        loop {
            if let Some(p) = tern_codec::decode(&mut self.buf, self.protocol, MAX_PACKET)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }

    /// Reads whatever the socket has into the buffer (waiting for at least one byte); a
    /// closed connection is an error. Cancel-safe: nothing is lost if the future is dropped.
    pub async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        let n = self.half.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(Error::new(format!(
                "{}: broker closed the connection",
                self.id
            )));
        }
        Ok(())
    }

    /// A packet already complete in the read buffer, without waiting for the socket.
    pub fn try_next(&mut self) -> Result<Option<Packet>> {
        Ok(tern_codec::decode(
            &mut self.buf,
            self.protocol,
            MAX_PACKET,
        )?)
    }

    /// [`Reader::next`] with a time limit.
    pub async fn next_timeout(&mut self, limit: Duration) -> Result<Packet> {
        match tokio::time::timeout(limit, self.next()).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(format!(
                "{}: no answer from broker in {limit:?}",
                self.id
            ))),
        }
    }

    /// The client ID this connection uses.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Writer {
    /// Encodes a packet into the send buffer.
    pub fn queue(&mut self, p: &Packet) -> Result<()> {
        p.encode(self.protocol, &mut self.buf)?;
        Ok(())
    }

    /// Encodes a SUBSCRIBE of one filter into the send buffer.
    pub fn queue_subscribe(&mut self, packet_id: u16, filter: &str, qos: QoS) -> Result<()> {
        let sub = Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec![(
                ByteString::from(filter.to_string()),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
        };
        self.queue(&Packet::Subscribe(sub))
    }

    /// Encodes a PUBLISH into the send buffer.
    pub fn queue_publish(
        &mut self,
        topic: &ByteString,
        qos: QoS,
        packet_id: u16,
        payload: Bytes,
    ) -> Result<()> {
        self.queue_publish_retain(topic, qos, false, packet_id, payload)
    }

    /// Encodes a PUBLISH with the given retain flag into the send buffer.
    pub fn queue_publish_retain(
        &mut self,
        topic: &ByteString,
        qos: QoS,
        retain: bool,
        packet_id: u16,
        payload: Bytes,
    ) -> Result<()> {
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.clone(),
            packet_id,
            properties: Properties::default(),
            payload,
        };
        self.queue(&Packet::Publish(publish))
    }

    /// Encodes a PUBACK into the send buffer.
    pub fn queue_puback(&mut self, packet_id: u16) -> Result<()> {
        self.queue(&Packet::PubAck(PubResponse::new(packet_id)))
    }

    /// Bytes waiting in the send buffer.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes the whole send buffer to the socket.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Closes the connection at once with a TCP reset (SO_LINGER 0) once the reading half
    /// is dropped too, discarding whatever the socket still has to send: for a publisher
    /// the broker has fallen far behind, so that the broker does not go on reading its
    /// backlog after the run.
    pub fn reset(self) {
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let fd = self.half.as_ref().as_raw_fd();
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live struct, on
            // a descriptor this half keeps open.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
    }

    /// Sends DISCONNECT (normal) and shuts the socket down; errors are ignored, the run is
    /// over.
    pub async fn disconnect(mut self) {
        let _ = self.queue(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
        let _ = self.flush().await;
        let _ = self.half.shutdown().await;
    }
}

/// Keeps a subscriber connected until `stop` changes: after every read, `handle` takes the
/// packets that arrived (it drains `reader` with `try_next`, queueing any answers on
/// `writer`), queued bytes are flushed, and a PINGREQ goes out every half `keep_alive`
/// (seconds; 0 = none). Returns `Ok` on `stop`, the error when the connection fails.
pub async fn stay_connected(
    reader: &mut Reader,
    writer: &mut Writer,
    keep_alive: u16,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    mut handle: impl FnMut(&mut Reader, &mut Writer) -> Result<()>,
) -> Result<()> {
    let ping_every = Duration::from_secs(u64::from(keep_alive / 2).max(1));
    let mut next_ping = tokio::time::Instant::now() + ping_every;
    loop {
        handle(reader, writer)?;
        writer.flush().await?;
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            read = reader.fill() => read?,
            _ = tokio::time::sleep_until(next_ping), if keep_alive > 0 => {
                writer.queue(&Packet::PingReq)?;
                next_ping = tokio::time::Instant::now() + ping_every;
            }
        }
    }
}
