//! A lean HTTP/1.1 client: keep-alive connections, each owned by the request using it.
//!
//! The generator shares the cores with what it measures, so its cost per request is part of
//! every figure. hyper's pooled client drives each connection from a task of its own and hands
//! requests and answers over channels: two task wake-ups per request on top of the socket's.
//! Here the flow's own task writes the request and reads the answer, and the connection goes
//! back to an idle list. Only what the otpgate API answers is understood: a status line,
//! headers, and a body framed by `Content-Length` or chunked encoding.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Keep-alive connections to one `http://host:port` target.
pub struct Http {
    addr: SocketAddr,
    host: String,
    idle: Mutex<Vec<Conn>>,
}

struct Conn {
    stream: TcpStream,
    /// Bytes read past the last answer (none with a well-behaved server).
    buf: Vec<u8>,
    /// When it was last put back.
    idle_since: Instant,
}

/// An answer: status and body.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Http {
    /// `target` is `http://host:port` (no path); the host is resolved once.
    pub async fn new(target: &str) -> Result<Self, String> {
        let host = target
            .strip_prefix("http://")
            .ok_or_else(|| format!("{target}: only http:// targets are supported"))?
            .trim_end_matches('/')
            .to_string();
        if host.contains('/') {
            return Err(format!("{target}: give the base URL without a path"));
        }
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.clone()
        } else {
            format!("{host}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| format!("{target}: {e}"))?
            .next()
            .ok_or_else(|| format!("{target}: no address"))?;
        Ok(Self {
            addr,
            host,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one request on an idle connection (or a new one) and reads the whole answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Reply> {
        let mut conn = match self.idle_conn() {
            Some(conn) => conn,
            None => {
                let stream = TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                Conn {
                    stream,
                    buf: Vec::with_capacity(2048),
                    idle_since: Instant::now(),
                }
            }
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        );
        if !body.is_empty() {
            head.push_str("content-type: application/json\r\n");
        }
        for (name, value) in headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        conn.stream.write_all(&request).await?;
        let (reply, keep) = conn.read_reply().await?;
        if keep {
            conn.idle_since = Instant::now();
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        }
        Ok(reply)
    }

    /// The most recently used idle connection that the server has not closed. A request sent
    /// on a connection the server closed while it idled (nginx's `keepalive_timeout`, a
    /// replica restarted) would fail although the server is fine: such connections, and those
    /// idle longer than [`IDLE_LIMIT`], are dropped here.
    fn idle_conn(&self) -> Option<Conn> {
        loop {
            let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            let mut probe = [0u8; 1];
            let open = conn.idle_since.elapsed() < IDLE_LIMIT
                && matches!(conn.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if open {
                return Some(conn);
            }
        }
    }
}

/// Idle connections older than this are not reused (servers close theirs after a while).
const IDLE_LIMIT: Duration = Duration::from_secs(20);

impl Conn {
    /// Reads more bytes into the buffer; an end of stream is an error (an answer was due).
    async fn fill(&mut self) -> io::Result<()> {
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the answer ended",
            ));
        }
        Ok(())
    }

    /// One answer; `true` when the connection may carry another request.
    async fn read_reply(&mut self) -> io::Result<(Reply, bool)> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(bad("answer head over 64 KiB"));
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("head not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.strip_prefix("HTTP/1.1 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| bad("no HTTP/1.1 status line"))?;
        let (mut length, mut chunked, mut keep) = (None, false, true);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| bad("content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                keep = !value.eq_ignore_ascii_case("close");
            }
        }
        self.buf.drain(..head_end);
        let body = if chunked {
            self.read_chunked().await?
        } else if let Some(length) = length {
            while self.buf.len() < length {
                self.fill().await?;
            }
            self.buf.drain(..length).collect()
        } else if status == 204 || status == 304 {
            Vec::new()
        } else {
            // Framed by the end of the stream.
            while self.stream.read_buf(&mut self.buf).await? > 0 {}
            keep = false;
            std::mem::take(&mut self.buf)
        };
        Ok((Reply { status, body }, keep))
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(&self.buf, b"\r\n") {
                    break at;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[..line_end])
                .map_err(|_| bad("chunk size"))?
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
            while self.buf.len() < line_end + 2 + size + 2 {
                self.fill().await?;
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                // No trailers from otpgate: the last chunk is followed by the blank line.
                return Ok(body);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Serves `answers` in order on one connection, then closes it.
    async fn server(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await.unwrap();
                seen.extend_from_slice(&chunk[..n]);
                socket.write_all(answer).await.unwrap();
            }
            seen
        });
        (target, task)
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_kept_connection() {
        let (target, task) = server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"b\r\n4\r\n\":2}\r\n0\r\n\r\n",
        ])
        .await;
        let http = Http::new(&target).await.unwrap();
        let first = http.send("POST", "/x", &[("a", "b")], b"{}").await.unwrap();
        assert_eq!(
            (first.status, first.body.as_slice()),
            (200, &b"{\"a\":1}"[..])
        );
        let second = http.send("GET", "/y", &[], b"").await.unwrap();
        assert_eq!(
            (second.status, second.body.as_slice()),
            (400, &b"{\"b\":2}"[..])
        );
        let seen = String::from_utf8(task.await.unwrap()).unwrap();
        assert!(seen.starts_with("POST /x HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("content-length: 2\r\ncontent-type: application/json\r\na: b\r\n\r\n{}GET /y HTTP/1.1\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn a_closed_connection_is_an_error_and_not_reused() {
        let (target, task) =
            server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"]).await;
        let http = Http::new(&target).await.unwrap();
        assert!(http.send("GET", "/", &[], b"").await.is_err());
        task.await.unwrap();
        assert!(http.idle.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut chunk = [0u8; 4096];
                let _ = socket.read(&mut chunk).await.unwrap();
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
                // The kept connection is closed here, as an idle timeout would.
            }
        });
        let http = Http::new(&target).await.unwrap();
        assert_eq!(http.send("GET", "/", &[], b"").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(http.send("GET", "/", &[], b"").await.unwrap().status, 200);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let (target, _task) = server(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        ])
        .await;
        let http = Http::new(&target).await.unwrap();
        assert_eq!(http.send("GET", "/", &[], b"").await.unwrap().status, 200);
        assert!(http.idle.lock().unwrap().is_empty());
    }
}
