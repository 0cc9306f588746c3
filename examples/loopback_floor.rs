//! The kernel's floor under SSE fan-out on this machine: what one small write to a loopback TCP
//! socket costs the writing thread, with nothing else of a server around it.
//!
//! One thread writes a frame-sized message (by default 260 bytes, three `IoSlice`s like a chunked
//! SSE frame) to each of N loopback connections, `rate` times per second, as kavach-stream does
//! at N clients x `rate` events/s; a tokio runtime on other threads reads every connection. The
//! writer's user and system CPU time come from `/proc/thread-self/stat`. Each write to loopback
//! also runs the receiving side's TCP processing and wakes the reader, in the writer's context, so
//! the system time per write is a floor no server writing one event per write can go below.
//!
//!     cargo run --release --example loopback_floor -- [connections] [rate] [seconds] [per_write]
//!     cargo run --release --example loopback_floor -- 1000 100 10 1
//!
//! `per_write` > 1 puts that many frames in each write (the same bytes per second in fewer
//! writes), to show the cost is per write, not per byte. Loopback only, bounded in time.

use std::io::{IoSlice, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

const FRAME: usize = 260;

fn main() -> std::io::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| {
            arg.parse()
                .expect("numbers: connections rate seconds per_write")
        })
        .collect();
    let connections = args.first().copied().unwrap_or(1000);
    let rate = args.get(1).copied().unwrap_or(100).max(1);
    let seconds = args.get(2).copied().unwrap_or(10).min(120);
    let per_write = args.get(3).copied().unwrap_or(1).max(1);

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let mut servers = Vec::with_capacity(connections);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = TcpStream::connect(address)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        socket2::SockRef::from(&server).set_send_buffer_size(64 * 1024)?;
        client.set_nonblocking(true)?;
        servers.push(server);
        clients.push(client);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .build()?;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|client| {
            runtime.spawn(async move {
                let mut client = tokio::net::TcpStream::from_std(client)?;
                let mut buffer = vec![0u8; 16 * 1024];
                let mut total = 0u64;
                loop {
                    match client.read(&mut buffer).await? {
                        0 => return Ok::<u64, std::io::Error>(total),
                        read => total += read as u64,
                    }
                }
            })
        })
        .collect();

    // A chunk-size line, the frame's bytes and CRLF: FRAME * per_write bytes in all.
    let total = FRAME * per_write;
    let mut body_len = total - 6;
    let chunk_size = loop {
        let line = format!("{body_len:x}\r\n");
        if line.len() + body_len + 2 == total {
            break line;
        }
        body_len = total - line.len() - 2;
    };
    let body = vec![b'x'; body_len];
    let ticks = rate * seconds;
    let period = Duration::from_secs(1) / rate as u32;
    let writer = std::thread::spawn(move || -> std::io::Result<(u64, Duration, Duration)> {
        let (user_before, system_before) = thread_cpu();
        let started = Instant::now();
        let mut writes = 0u64;
        for tick in 0..ticks {
            if tick % per_write == 0 {
                for server in &mut servers {
                    let slices = [
                        IoSlice::new(chunk_size.as_bytes()),
                        IoSlice::new(&body),
                        IoSlice::new(b"\r\n"),
                    ];
                    let written = server.write_vectored(&slices)?;
                    assert_eq!(
                        written,
                        FRAME * per_write,
                        "a short write: raise the send buffer"
                    );
                    writes += 1;
                }
            }
            // Pacing of the workload, as a server sees events arrive.
            let next = started + period * (tick as u32 + 1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        let (user_after, system_after) = thread_cpu();
        drop(servers);
        Ok((
            writes,
            user_after - user_before,
            system_after - system_before,
        ))
    });

    let (writes, user, system) = writer.join().expect("the writer thread")?;
    let received: u64 = runtime.block_on(async {
        let mut total = 0;
        for reader in readers {
            total += reader.await.expect("a reader task")?;
        }
        Ok::<u64, std::io::Error>(total)
    })?;
    assert_eq!(
        received,
        writes * (FRAME * per_write) as u64,
        "every byte arrived"
    );

    let per = |time: Duration| time.as_secs_f64() * 1e6 / writes as f64;
    let frames = writes * per_write as u64;
    println!(
        "loopback floor: {connections} connections x {rate}/s for {seconds} s, {per_write} frame(s) of {FRAME} B per write: \
         {writes} writes, writer thread per write: system {:.2} us + user {:.2} us; per frame: {:.2} us",
        per(system),
        per(user),
        (user + system).as_secs_f64() * 1e6 / frames as f64,
    );
    Ok(())
}

/// This thread's user and system CPU time so far.
fn thread_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..]
        .split(' ')
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks = |index: usize| -> Duration {
        let ticks: u64 = fields[index].parse().expect("clock ticks");
        Duration::from_millis(ticks * 10)
    };
    (ticks(11), ticks(12))
}
