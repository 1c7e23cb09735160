//! A tiny blocking HTTP/1.1 client over a Unix socket, for tests that talk to the engine as the
//! gateway does: one request per connection, `Content-Length` or chunked responses, and
//! streamed bodies read line by line as they arrive.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

/// How long a test waits for any one read before it fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<UnixStream>,
    body: BodyFraming,
    /// Decoded body bytes not yet returned as lines.
    pending: Vec<u8>,
}

#[derive(Debug)]
enum BodyFraming {
    Length(usize),
    Chunked { done: bool },
    UntilClose,
}

/// Sends one request with `Connection: close` and reads the response head.
pub fn send(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    let stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    send_on(stream, method, path, body)
}

pub fn send_on(mut stream: UnixStream, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    if let Some(body) = body
        && let Err(err) = stream.write_all(body)
    {
        // A server that refuses on the head alone (404, 405, 413) may answer and close before
        // the body is written: its answer is still there to read.
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write body: {err}"
        );
    }
    read_response(stream)
}

pub fn read_response(stream: UnixStream) -> Response {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("header has a colon");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        BodyFraming::Chunked { done: false }
    } else if let Some(length) = header("content-length") {
        BodyFraming::Length(length.parse().expect("content-length"))
    } else {
        BodyFraming::UntilClose
    };
    Response {
        status,
        headers,
        reader,
        body,
        pending: Vec::new(),
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Reads more of the body into `pending`; false at its end.
    fn fill(&mut self) -> bool {
        match &mut self.body {
            BodyFraming::Length(0) | BodyFraming::Chunked { done: true } => false,
            BodyFraming::Length(remaining) => {
                let mut buffer = vec![0; (*remaining).min(64 * 1024)];
                let n = self.reader.read(&mut buffer).expect("read body");
                assert!(n > 0, "connection closed inside the body");
                *remaining -= n;
                self.pending.extend_from_slice(&buffer[..n]);
                true
            }
            BodyFraming::UntilClose => {
                let mut buffer = vec![0; 64 * 1024];
                let n = self.reader.read(&mut buffer).expect("read body");
                self.pending.extend_from_slice(&buffer[..n]);
                if n == 0 {
                    self.body = BodyFraming::Length(0);
                }
                n > 0
            }
            BodyFraming::Chunked { done } => {
                let mut size = String::new();
                self.reader.read_line(&mut size).expect("chunk size");
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
                if size == 0 {
                    *done = true;
                    let mut trailer = String::new();
                    while self.reader.read_line(&mut trailer).expect("trailer") > 2 {
                        trailer.clear();
                    }
                    return false;
                }
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).expect("chunk");
                assert_eq!(&chunk[size..], b"\r\n", "chunk ends with CRLF");
                self.pending.extend_from_slice(&chunk[..size]);
                true
            }
        }
    }

    /// The next line of the body (without its newline), `None` at the end.
    pub fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if !self.fill() {
                if self.pending.is_empty() {
                    return None;
                }
                let rest = std::mem::take(&mut self.pending);
                return Some(String::from_utf8_lossy(&rest).into_owned());
            }
        }
    }

    /// The next line parsed as JSON.
    pub fn next_json(&mut self) -> Option<serde_json::Value> {
        self.next_line().map(|line| {
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"))
        })
    }

    pub fn body(mut self) -> Vec<u8> {
        while self.fill() {}
        self.pending
    }

    pub fn json(self) -> serde_json::Value {
        let body = self.body();
        serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("bad JSON body {:?}: {e}", String::from_utf8_lossy(&body)))
    }

    /// Hangs up mid-body, as a client that goes away does.
    pub fn hang_up(self) {
        let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

/// `GET path` → (status, JSON body).
pub fn get_json(socket: &Path, path: &str) -> (u16, serde_json::Value) {
    let response = send(socket, "GET", path, None);
    let status = response.status;
    (status, response.json())
}
