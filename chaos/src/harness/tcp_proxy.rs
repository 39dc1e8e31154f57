//! A TCP proxy of the harness, put between onceflow and what it talks to (a
//! Kafka broker's listener, PostgreSQL), whose network condition a scenario
//! changes while traffic flows. No root, no packet filter: onceflow is
//! simply given the proxy's address.
//!
//! Conditions ([`NetworkCondition`]):
//! - **open**: bytes pass as they come;
//! - **delayed(d)**: every chunk is forwarded `d` after the proxy read it, in
//!   order (latency, not a bandwidth cap: chunks in flight overlap);
//! - **black-holed**: nothing is forwarded in either direction and nothing
//!   is refused, as when packets are dropped on the way: the bytes wait in
//!   the proxy (and, once its small buffer is full, in the kernel's), new
//!   connections are accepted and wait too. A heal delivers what was held,
//!   in order, as TCP's retransmissions would, unless an endpoint gave up
//!   and closed first;
//! - **refused**: every open connection is reset on both sides, and new
//!   ones are reset as soon as they arrive, as a host that answers with RST.
//!
//! Guarantee: bytes are never reordered, duplicated or altered; a condition
//! applies to every byte not yet forwarded when it is set. The counters
//! ([`ProxyCounters`]) say what a condition met (connections reset, stalls at
//! a black hole), so a scenario can prove that its fault bit. The proxy stops
//! (and resets what it still carries) when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Context, Result};

type Outcome = std::result::Result<(), Interrupted>;

/// What the network between a client and its server does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum NetworkCondition {
    /// bytes pass as they come
    Open,
    /// every chunk arrives this much later
    Delayed(Duration),
    /// nothing arrives, nothing is refused
    BlackHoled,
    /// connections are reset
    Refused,
}

impl std::fmt::Display for NetworkCondition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkCondition::Open => formatter.write_str("open"),
            NetworkCondition::Delayed(delay) => {
                write!(formatter, "delayed {} ms", delay.as_millis())
            }
            NetworkCondition::BlackHoled => formatter.write_str("black-holed"),
            NetworkCondition::Refused => formatter.write_str("refused"),
        }
    }
}

/// What a proxy carried and what its conditions did, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyCounters {
    /// connections accepted from clients
    pub accepted: u64,
    /// connections reset by the proxy (refused, or an endpoint failed)
    pub reset: u64,
    /// stalls at a black hole: a direction of a connection whose next chunk
    /// had to wait, or a new connection that waited to reach upstream
    pub held: u64,
    /// bytes forwarded, both directions
    pub forwarded_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    reset: AtomicU64,
    held: AtomicU64,
    forwarded_bytes: AtomicU64,
}

/// One listening address forwarding to one upstream address.
#[derive(Debug)]
pub struct TcpProxy {
    listen_addr: SocketAddr,
    upstream: SocketAddr,
    condition: watch::Sender<NetworkCondition>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

/// Bytes read in one go.
const CHUNK: usize = 64 * 1024;
/// Chunks read ahead of the writer per direction (the proxy's own buffer).
const CHUNKS_IN_FLIGHT: usize = 16;

impl TcpProxy {
    /// A proxy on a free loopback port to `upstream`, open.
    pub async fn start(upstream: SocketAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot bind a loopback port for a TCP proxy")?;
        let listen_addr = listener
            .local_addr()
            .context("a TCP proxy's listener has no address")?;
        let (condition, _) = watch::channel(NetworkCondition::Open);
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            condition.clone(),
            Arc::clone(&counters),
            stop.clone(),
        ));
        Ok(TcpProxy {
            listen_addr,
            upstream,
            condition,
            counters,
            stop,
        })
    }

    /// Where clients connect.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Where the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Applies `condition` from now on, to every connection.
    pub fn set(&self, condition: NetworkCondition) {
        self.condition.send_replace(condition);
    }

    /// The condition now.
    pub fn condition(&self) -> NetworkCondition {
        *self.condition.borrow()
    }

    /// What the proxy carried and did so far.
    pub fn counters(&self) -> ProxyCounters {
        ProxyCounters {
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            reset: self.counters.reset.load(Ordering::Relaxed),
            held: self.counters.held.load(Ordering::Relaxed),
            forwarded_bytes: self.counters.forwarded_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    condition: watch::Sender<NetworkCondition>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            // EMFILE and the like: the next accept may succeed.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let connection = Connection {
            upstream,
            condition: condition.subscribe(),
            counters: Arc::clone(&counters),
        };
        tokio::spawn(connection.serve(client, stop.clone()));
    }
}

/// Resets a connection: a zero linger makes the close an RST.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Why a connection ended early.
enum Interrupted {
    /// the condition turned to refused
    Refused,
    /// an endpoint failed (reset, broken pipe)
    Failed,
    /// the proxy was dropped
    Stopped,
}

struct Connection {
    upstream: SocketAddr,
    condition: watch::Receiver<NetworkCondition>,
    counters: Arc<Counters>,
}

impl Connection {
    /// Carries one client connection until both sides closed, or resets it.
    async fn serve(mut self, mut client: TcpStream, stop: CancellationToken) {
        // A new connection waits out a black hole before it reaches upstream.
        loop {
            let now = *self.condition.borrow_and_update();
            match now {
                NetworkCondition::Refused => {
                    self.counters.reset.fetch_add(1, Ordering::Relaxed);
                    reset(&client);
                    return;
                }
                NetworkCondition::BlackHoled => {
                    self.counters.held.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = stop.cancelled() => return reset(&client),
                        changed = self.condition.changed() => if changed.is_err() { return },
                    }
                }
                NetworkCondition::Open | NetworkCondition::Delayed(_) => break,
            }
        }
        let Ok(mut upstream) = TcpStream::connect(self.upstream).await else {
            self.counters.reset.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            return;
        };
        let _ = upstream.set_nodelay(true);
        let _ = client.set_nodelay(true);
        let outcome = {
            // Split by borrow, so both sockets stay here to be reset.
            let (client_read, client_write) = client.split();
            let (upstream_read, upstream_write) = upstream.split();
            let mut refused = self.condition.clone();
            tokio::select! {
                carried = async {
                    tokio::try_join!(
                        self.pump(client_read, upstream_write),
                        self.pump(upstream_read, client_write),
                    )
                } => carried.map(|_| ()),
                () = wait_refused(&mut refused) => Err(Interrupted::Refused),
                () = stop.cancelled() => Err(Interrupted::Stopped),
            }
        };
        if let Err(interrupted) = outcome {
            if !matches!(interrupted, Interrupted::Stopped) {
                self.counters.reset.fetch_add(1, Ordering::Relaxed);
            }
            reset(&client);
            reset(&upstream);
        }
    }

    /// Forwards one direction until its reader sees the end, then passes the
    /// end on (half close).
    async fn pump(&self, mut from: ReadHalf<'_>, mut to: WriteHalf<'_>) -> Outcome {
        let (chunks, mut to_write) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
        let reader = async move {
            let mut buffer = vec![0_u8; CHUNK];
            loop {
                let read = from
                    .read(&mut buffer)
                    .await
                    .map_err(|_| Interrupted::Failed)?;
                if read == 0 {
                    return Ok::<(), Interrupted>(());
                }
                let chunk = buffer.get(..read).unwrap_or_default().to_vec();
                if chunks.send((Instant::now(), chunk)).await.is_err() {
                    return Ok(());
                }
            }
        };
        let mut condition = self.condition.clone();
        let counters = &self.counters;
        let writer = async move {
            while let Some((read_at, chunk)) = to_write.recv().await {
                wait_until_deliverable(&mut condition, read_at, counters).await?;
                to.write_all(&chunk)
                    .await
                    .map_err(|_| Interrupted::Failed)?;
                counters
                    .forwarded_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            let _ = to.shutdown().await;
            Ok::<(), Interrupted>(())
        };
        tokio::try_join!(reader, writer).map(|_| ())
    }
}

/// Waits until a chunk read at `read_at` may be written under the
/// condition, which may change while it waits.
async fn wait_until_deliverable(
    condition: &mut watch::Receiver<NetworkCondition>,
    read_at: Instant,
    counters: &Counters,
) -> Outcome {
    let mut counted_held = false;
    loop {
        let now = *condition.borrow_and_update();
        match now {
            NetworkCondition::Open => return Ok(()),
            NetworkCondition::Refused => return Err(Interrupted::Refused),
            NetworkCondition::Delayed(delay) => {
                let due = read_at + delay;
                if Instant::now() >= due {
                    return Ok(());
                }
                tokio::select! {
                    () = tokio::time::sleep_until(due) => return Ok(()),
                    changed = condition.changed() => if changed.is_err() { return Ok(()) },
                }
            }
            NetworkCondition::BlackHoled => {
                if !counted_held {
                    counters.held.fetch_add(1, Ordering::Relaxed);
                    counted_held = true;
                }
                if condition.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Returns once the condition is (or becomes) refused.
async fn wait_refused(condition: &mut watch::Receiver<NetworkCondition>) {
    loop {
        if *condition.borrow_and_update() == NetworkCondition::Refused {
            return;
        }
        if condition.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back; its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("binds");
        let addr = listener.local_addr().expect("has an address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.expect("writes");
        let mut echoed = vec![0_u8; message.len()];
        stream
            .read_exact(&mut echoed)
            .await
            .expect("reads the echo");
        echoed
    }

    #[tokio::test]
    async fn open_carries_bytes_unchanged_in_order() {
        let proxy = TcpProxy::start(echo_server().await).await.expect("starts");
        let mut client = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("connects");
        // More than one chunk, with a pattern that shows any reordering.
        let message: Vec<u8> = (0..300_000_u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&mut client, &message).await, message);
        let counters = proxy.counters();
        assert_eq!(counters.accepted, 1);
        assert_eq!(counters.forwarded_bytes, 2 * message.len() as u64);
        assert_eq!(counters.reset, 0);
    }

    #[tokio::test]
    async fn delayed_holds_each_direction_back_at_least_the_delay() {
        let proxy = TcpProxy::start(echo_server().await).await.expect("starts");
        let mut client = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("connects");
        assert_eq!(round_trip(&mut client, b"warm").await, b"warm");
        proxy.set(NetworkCondition::Delayed(Duration::from_millis(150)));
        let sent = Instant::now();
        assert_eq!(round_trip(&mut client, b"slow").await, b"slow");
        // Once on the way there, once on the way back: a lower bound that
        // holds on any machine.
        assert!(
            sent.elapsed() >= Duration::from_millis(300),
            "took {:?}",
            sent.elapsed()
        );
    }

    #[tokio::test]
    async fn a_black_hole_holds_bytes_and_a_heal_delivers_them_in_order() {
        let proxy = TcpProxy::start(echo_server().await).await.expect("starts");
        let mut client = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("connects");
        assert_eq!(round_trip(&mut client, b"before").await, b"before");
        proxy.set(NetworkCondition::BlackHoled);
        client.write_all(b"held-1").await.expect("writes");
        client.write_all(b"held-2").await.expect("writes");
        let mut buffer = [0_u8; 12];
        let nothing =
            tokio::time::timeout(Duration::from_millis(400), client.read_exact(&mut buffer)).await;
        assert!(nothing.is_err(), "bytes crossed a black hole");
        // A connection made during the black hole is accepted and waits.
        let mut late = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("accepted");
        late.write_all(b"late").await.expect("writes");
        // The kernel completes the connect; the proxy's accept comes after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.counters().held < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(proxy.counters().held, 2, "{:?}", proxy.counters());
        proxy.set(NetworkCondition::Open);
        client
            .read_exact(&mut buffer)
            .await
            .expect("delivered after the heal");
        assert_eq!(&buffer, b"held-1held-2");
        let mut echoed = [0_u8; 4];
        late.read_exact(&mut echoed)
            .await
            .expect("the late one too");
        assert_eq!(&echoed, b"late");
        assert_eq!(proxy.counters().reset, 0);
    }

    #[tokio::test]
    async fn refused_resets_open_connections_and_new_ones() {
        let proxy = TcpProxy::start(echo_server().await).await.expect("starts");
        let mut client = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("connects");
        assert_eq!(round_trip(&mut client, b"before").await, b"before");
        proxy.set(NetworkCondition::Refused);
        let mut buffer = [0_u8; 1];
        let ended = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer))
            .await
            .expect("the open connection ends at once");
        assert!(
            matches!(ended, Err(ref error) if error.kind() == std::io::ErrorKind::ConnectionReset),
            "{ended:?}"
        );
        let mut refused = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("accepted");
        let ended = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buffer))
            .await
            .expect("a new connection ends at once");
        assert!(ended.is_err() || ended.is_ok_and(|read| read == 0));
        assert!(proxy.counters().reset >= 2, "{:?}", proxy.counters());
        proxy.set(NetworkCondition::Open);
        let mut healed = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("connects");
        assert_eq!(round_trip(&mut healed, b"after").await, b"after");
    }

    #[tokio::test]
    async fn a_dropped_proxy_resets_what_it_carries() {
        let proxy = TcpProxy::start(echo_server().await).await.expect("starts");
        let mut client = TcpStream::connect(proxy.listen_addr())
            .await
            .expect("connects");
        assert_eq!(round_trip(&mut client, b"x").await, b"x");
        drop(proxy);
        let mut buffer = [0_u8; 1];
        let ended = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer))
            .await
            .expect("the connection ends");
        assert!(ended.is_err() || ended.is_ok_and(|read| read == 0));
    }
}
