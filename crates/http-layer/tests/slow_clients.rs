//! The server loop against clients that do not play along: 2,000 that never finish a request
//! line, one that stalls its head, one that stays idle, and a shutdown in the middle of a request.
//! Every wait is bounded by [`WAIT`]; nothing asserts how long anything took.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use http_layer::{HttpServer, RequestBody, ServerConfig};
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// The longest any single step of these tests may wait before the test fails.
const WAIT: Duration = Duration::from_secs(60);
const SLOW_CLIENTS: usize = 2000;

/// Raises the soft open-files limit towards the hard one if `needed` descriptors do not fit.
fn raise_fd_limit(needed: u64) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|current| current >= needed) {
        return Ok(());
    }
    let raised = limit.maximum.map_or(needed, |max| max.min(needed));
    setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(raised), ..limit })?;
    ensure!(
        raised >= needed,
        "open-files hard limit {raised} is below the {needed} this test needs"
    );
    Ok(())
}

async fn hello(req: Request<RequestBody>, _peer: SocketAddr) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(format!("hello {}\n", req.uri().path()))))
}

async fn start(config: ServerConfig) -> Result<SocketAddr> {
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve(hello));
    Ok(addr)
}

/// Sends one complete request with `Connection: close` and reads the whole answer.
async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8(answer)?)
}

/// Waits for the server to close `stream` (EOF or reset), reading and dropping what it sends.
async fn closed_by_server(mut stream: TcpStream, wait: Duration) -> bool {
    let mut sink = Vec::new();
    timeout(wait, stream.read_to_end(&mut sink)).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_clients_cannot_lock_out_a_normal_one() -> Result<()> {
    raise_fd_limit(3 * SLOW_CLIENTS as u64 + 512)?;
    // Timers far beyond the test: only the connection policy can make room.
    let config = ServerConfig {
        header_read_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(600),
        ..ServerConfig::default()
    };
    let max_connections = config.max_connections;
    assert!(max_connections < SLOW_CLIENTS);
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await?;
    let (addr, open) = (server.local_addr()?, server.open_connections());
    tokio::spawn(server.serve(hello));

    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    timeout(WAIT, async {
        for _ in 0..SLOW_CLIENTS / 100 {
            let mut batch = JoinSet::new();
            for _ in 0..100 {
                batch.spawn(async move {
                    let mut stream = TcpStream::connect(addr).await?;
                    stream.write_all(b"GET /slow HT").await?;
                    anyhow::Ok(stream)
                });
            }
            while let Some(stream) = batch.join_next().await {
                slow.push(stream??);
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("2,000 slow clients could not connect")??;

    let answer =
        timeout(WAIT, get(addr, "/normal")).await.context("normal client not served")??;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello /normal\n"), "{answer}");
    until_at_most(&open, max_connections).await?;

    // The cap held: the server made room by closing the oldest unfinished connections.
    let mut waits = JoinSet::new();
    for stream in slow {
        waits.spawn(closed_by_server(stream, Duration::from_secs(5)));
    }
    let mut closed = 0;
    while let Some(was_closed) = timeout(WAIT, waits.join_next()).await?.transpose()? {
        closed += usize::from(was_closed);
    }
    assert!(closed > SLOW_CLIENTS - max_connections, "only {closed} slow clients were closed");
    Ok(())
}

#[tokio::test]
async fn a_stalled_head_and_an_idle_connection_are_closed() -> Result<()> {
    let short = Duration::from_millis(200);
    let long = Duration::from_secs(600);
    let head = start(ServerConfig {
        header_read_timeout: short,
        idle_timeout: long,
        ..Default::default()
    });
    let head = head.await?;
    let idle = start(ServerConfig {
        header_read_timeout: long,
        idle_timeout: short,
        ..Default::default()
    });
    let idle = idle.await?;

    // Trickles a request line and never ends its head: the header timeout closes it.
    let mut trickle = TcpStream::connect(head).await?;
    trickle.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n").await?;
    assert!(closed_by_server(trickle, WAIT).await, "stalled head left open");

    // Connects and says nothing: the idle timeout closes it.
    assert!(
        closed_by_server(TcpStream::connect(idle).await?, WAIT).await,
        "silent client left open"
    );

    // Keeps a connection alive after one answer, then goes quiet: closed as idle too.
    let mut kept = TcpStream::connect(idle).await?;
    kept.write_all(b"GET /once HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    let mut answer = Vec::new();
    assert!(closed_by_server_into(&mut kept, &mut answer).await, "idle keep-alive left open");
    let answer = String::from_utf8(answer)?;
    assert!(answer.ends_with("\r\n\r\nhello /once\n"), "{answer}");
    Ok(())
}

async fn closed_by_server_into(stream: &mut TcpStream, into: &mut Vec<u8>) -> bool {
    matches!(timeout(WAIT, stream.read_to_end(into)).await, Ok(Ok(_)))
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight() -> Result<()> {
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), ServerConfig::default());
    let server = server.await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handler = {
        let (release, entered) = (release.clone(), entered.clone());
        move |_req: Request<RequestBody>, _peer: SocketAddr| {
            let (release, entered) = (release.clone(), entered.clone());
            async move {
                entered.notify_one();
                release.notified().await;
                Response::new(Full::new(Bytes::from_static(b"finished\n")))
            }
        }
    };
    let serving = tokio::spawn(server.serve_with_shutdown(handler, async {
        let _ = stopped.await;
    }));
    let client = tokio::spawn(get(addr, "/slow-answer"));
    timeout(WAIT, entered.notified()).await?;
    stop.send(()).map_err(|()| anyhow::anyhow!("server gone"))?;
    release.notify_one();
    let answer = timeout(WAIT, client).await???;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nfinished\n"), "{answer}");
    timeout(WAIT, serving).await???;
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
    Ok(())
}

/// Waits (at most [`WAIT`]) until `open` reads at most `cap` (evicted connections close
/// asynchronously).
async fn until_at_most(open: &http_layer::OpenConnections, cap: usize) -> Result<()> {
    timeout(WAIT, async {
        while open.get() > cap {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("{} connections open, more than {cap}", open.get()))
}

/// Waits (at most [`WAIT`]) until `open` reads `count`.
async fn until_open(open: &http_layer::OpenConnections, count: usize) -> Result<()> {
    timeout(WAIT, async {
        while open.get() != count {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("never {count} open connections"))
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() -> Result<()> {
    const BODY: usize = 64 << 20;
    let long = Duration::from_secs(600);
    let config = ServerConfig {
        header_read_timeout: long,
        idle_timeout: long,
        send_stall_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await?;
    let addr = server.local_addr()?;
    let open = server.open_connections();
    tokio::spawn(server.serve(|_req: Request<RequestBody>, _peer: SocketAddr| async {
        Response::new(Full::new(Bytes::from(vec![0u8; BODY])))
    }));
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n").await?;
    // Read nothing until the server has accepted us, then given up on us.
    until_open(&open, 1).await?;
    until_open(&open, 0).await?;
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match timeout(WAIT, stream.read(&mut buf)).await? {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(received < BODY, "the whole {BODY}-byte answer went to a client that did not read");
    Ok(())
}

#[tokio::test]
async fn a_body_that_never_arrives_times_out() -> Result<()> {
    use http_body_util::BodyExt;
    let config = ServerConfig { body_timeout: Duration::from_millis(200), ..Default::default() };
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve(|req: Request<RequestBody>, _peer: SocketAddr| async move {
        let (status, text) = match req.into_body().collect().await {
            Ok(body) => (200, format!("got {} bytes\n", body.to_bytes().len())),
            Err(e) => (408, format!("{e}\n")),
        };
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        response
    }));
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc").await?;
    let mut answer = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8(answer)?;
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nrequest body not received in time\n"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn a_head_over_the_size_cap_is_refused() -> Result<()> {
    let addr = start(ServerConfig::default()).await?;
    let mut stream = TcpStream::connect(addr).await?;
    let big = "a".repeat(ServerConfig::default().max_header_bytes * 2);
    let request = format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    // The server may answer and close before taking it all; what it answers is the point.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = timeout(WAIT, stream.read_to_end(&mut answer)).await?;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share() -> Result<()> {
    const CAP: usize = 10;
    let long = Duration::from_secs(600);
    let config = ServerConfig {
        max_connections_per_address: CAP,
        cap_loopback: true,
        header_read_timeout: long,
        idle_timeout: long,
        ..ServerConfig::default()
    };
    let server = HttpServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await?;
    let (addr, open) = (server.local_addr()?, server.open_connections());
    tokio::spawn(server.serve(hello));
    let mut slow = Vec::new();
    for _ in 0..5 * CAP {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"GET /slow HT").await?;
        slow.push(stream);
    }
    let answer =
        timeout(WAIT, get(addr, "/normal")).await.context("normal client not served")??;
    assert!(answer.ends_with("\r\n\r\nhello /normal\n"), "{answer}");
    until_at_most(&open, CAP).await?;
    Ok(())
}
