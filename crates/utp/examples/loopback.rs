//! Throughput of one uTP stream on loopback: `cargo run --release -p utp --example loopback
//! [MiB] [MSS]` sends MiB (default 256) from one UtpSocket to another in packets of MSS payload
//! bytes (default `utp::conn::DEFAULT_MSS`, 1,176) and prints the rate.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utp::conn::Config;
use utp::driver::UtpSocket;

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let mss: usize =
        std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(utp::conn::DEFAULT_MSS);
    let any = "127.0.0.1:0".parse().unwrap();
    let config = Config { mss, ..Config::default() };
    let server = UtpSocket::bind(any, config.clone()).await.unwrap();
    let client = UtpSocket::bind(any, config).await.unwrap();
    let to = server.local_addr();
    let reader = tokio::spawn(async move {
        let mut s = server.accept().await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let chunk = vec![0x5au8; 1 << 16];
    let start = Instant::now();
    let mut s = client.connect(to).await.unwrap();
    for _ in 0..mib * 16 {
        s.write_all(&chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let got = reader.await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, mib << 20);
    println!("{mib} MiB over uTP on loopback in {secs:.2} s: {:.1} MiB/s", mib as f64 / secs);
}
