//! One uTP flow between two hosts, for `scripts/bench-ledbat.sh`:
//! - `flow recv ADDR SECS` accepts one connection on ADDR and prints, every 500 ms until SECS
//!   have passed or the sender closed, the wall clock (ms since the Unix epoch) and the bytes
//!   received since the previous line;
//! - `flow send ADDR SECS` connects to ADDR and writes as fast as the connection takes for SECS.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use utp::driver::UtpSocket;

fn epoch_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: flow recv|send ADDR SECS";
    let (mode, addr, secs) = match &args[..] {
        [_, m, a, s] => (m.as_str(), a.parse().expect(usage), s.parse::<f64>().expect(usage)),
        _ => panic!("{usage}"),
    };
    let until = Instant::now() + Duration::from_secs_f64(secs);
    match mode {
        "recv" => {
            let socket = UtpSocket::bind(addr, Default::default()).await.unwrap();
            println!("listening");
            let accepted = tokio::time::timeout_at(until.into(), socket.accept()).await;
            let mut s = accepted.expect("no sender within SECS").unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            while Instant::now() < until {
                tokio::select! {
                    n = s.read(&mut buf) => match n {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    },
                    _ = tick.tick() => {
                        println!("{} {got}", epoch_ms());
                        got = 0;
                    }
                }
            }
            println!("{} {got}", epoch_ms());
        }
        "send" => {
            let any = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let socket = UtpSocket::bind(any.parse().unwrap(), Default::default()).await.unwrap();
            let mut s = socket.connect(addr).await.unwrap();
            let chunk = vec![0x5au8; 1 << 16];
            while Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, s.write_all(&chunk)).await.is_err() {
                    break;
                }
            }
            let _ = s.shutdown().await;
        }
        _ => panic!("{usage}"),
    }
}
