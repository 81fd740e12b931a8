//! The limiter batcher's own connection to Redis: one plain TCP stream
//! that carries one call at a time, as the batcher makes them.
//!
//! The Redis client's multiplexed connection serves any number of callers
//! at once: each call goes through a channel to the connection's task, and
//! each answer through a general RESP parser built from parser
//! combinators. The batcher needs none of that (it waits for each answer
//! before it sends the next call), and its answers are one flat array of
//! integers, so it writes the command's bytes itself and reads the answer
//! with `read_reply`: about a third of the gateway's own work per keyed
//! request with the limits in Redis (see `BENCHMARKS.md`).
//!
//! A stream is used again only after a complete answer: one taken out for
//! a call that fails or is cut short (a timeout drops the call) is dropped,
//! and the next call connects afresh, sending `AUTH` and `SELECT` as the
//! URL asks. Only TCP addresses are served; others keep the client's
//! connection.

use std::fmt;

use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most a reply may announce (elements of an array, bytes of a
/// string): far beyond any answer of the limiter's script, small enough
/// that a corrupt length cannot make it allocate without bound.
const MAX_REPLY_LENGTH: usize = 1 << 24;

/// Idle time before the kernel probes the connection, and the time
/// between probes.
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
#[cfg(any(target_os = "linux", target_os = "macos"))]
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What went wrong with a call on the line.
#[derive(Debug, Clone)]
pub(crate) enum LineError {
    /// No connection could be made (nothing was sent).
    Connect(String),
    /// The connection failed after the call was (perhaps partly) sent.
    Io(String),
    /// Redis answered with an error reply (`-ERR …`, `-NOSCRIPT …`).
    Server(String),
    /// The reply was not RESP, or not what the call expects.
    Protocol(String),
}

impl LineError {
    pub(crate) fn is_no_script(&self) -> bool {
        matches!(self, LineError::Server(message) if message.starts_with("NOSCRIPT"))
    }
}

impl fmt::Display for LineError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineError::Connect(error) => write!(formatter, "cannot connect: {error}"),
            LineError::Io(error) => write!(formatter, "connection failed: {error}"),
            LineError::Server(message) => write!(formatter, "Redis answered {message}"),
            LineError::Protocol(error) => write!(formatter, "unreadable reply: {error}"),
        }
    }
}

/// A RESP2 reply, as far as the limiter reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Integer(i64),
    Status(String),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Where the line connects, and what it says first.
#[derive(Clone)]
pub(crate) struct Target {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

/// Without the credentials.
impl fmt::Debug for Target {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// The target of a connection's settings; `None` for an address the
    /// line does not serve (a Unix socket, or TLS: `rediss://`).
    pub(crate) fn of(info: &ConnectionInfo) -> Option<Target> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        Some(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: *port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        })
    }
}

/// One connection, made when first needed and again after a failure.
#[derive(Debug)]
pub(crate) struct Line {
    target: Target,
    stream: Option<TcpStream>,
    /// Bytes read and not yet parsed (what follows a reply in a read).
    buffer: Vec<u8>,
}

impl Line {
    pub(crate) fn new(target: Target) -> Line {
        Line {
            target,
            stream: None,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Whether the next call reuses an open connection.
    pub(crate) fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Sends `command` (RESP-encoded) and reads its one reply.
    pub(crate) async fn call(&mut self, command: &[u8]) -> Result<Reply, LineError> {
        // Taken out for the call: a call that fails, or whose future is
        // dropped midway, leaves no stream holding half an exchange.
        let mut stream = match self.stream.take() {
            Some(stream) => stream,
            None => self.connect().await?,
        };
        let io = |error: std::io::Error| LineError::Io(error.to_string());
        stream.write_all(command).await.map_err(io)?;
        let reply = read_reply(&mut stream, &mut self.buffer).await?;
        if self.buffer.is_empty() {
            self.stream = Some(stream);
        }
        reply
    }

    /// A script call (`EVALSHA …`), as the client's connection makes it:
    /// sent once more when a connection kept from an earlier call turns
    /// out closed, and after loading the script (`SCRIPT LOAD` of
    /// `source`) when Redis does not have it. A failure that follows an
    /// attempt which may have reached Redis is reported as `Io`, so that
    /// the caller treats the call as perhaps applied.
    pub(crate) async fn call_script(
        &mut self,
        command: &[u8],
        source: &str,
    ) -> Result<Reply, LineError> {
        let may_have_reached = |reply: &Result<Reply, LineError>| {
            matches!(reply, Err(LineError::Io(_) | LineError::Protocol(_)))
        };
        let reused = self.is_open();
        let mut reply = self.call(command).await;
        let mut reached = may_have_reached(&reply);
        if reused && matches!(reply, Err(LineError::Io(_))) {
            reply = self.call(command).await;
            reached |= may_have_reached(&reply);
        }
        if matches!(&reply, Err(error) if error.is_no_script()) {
            let load = command_of(&[b"SCRIPT", b"LOAD", source.as_bytes()]);
            reply = match self.call(&load).await {
                Ok(_) => self.call(command).await,
                Err(error) => Err(error),
            };
            reached |= may_have_reached(&reply);
        }
        match reply {
            Err(error @ (LineError::Connect(_) | LineError::Server(_))) if reached => {
                Err(LineError::Io(format!(
                    "{error}, after an attempt that may have reached Redis"
                )))
            }
            other => other,
        }
    }

    async fn connect(&mut self) -> Result<TcpStream, LineError> {
        self.buffer.clear();
        let connect = |error: std::io::Error| LineError::Connect(error.to_string());
        let mut stream = TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(connect)?;
        stream.set_nodelay(true).map_err(connect)?;
        // A connection a middlebox dropped while it was idle is found out
        // by the kernel's probes, so the next call fails at once and is
        // sent again on a new one, instead of waiting out its timeout.
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
        #[cfg(any(target_os = "linux", target_os = "macos"))]
        let keepalive = keepalive.with_interval(KEEPALIVE_INTERVAL);
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&keepalive)
            .map_err(connect)?;
        // A refused password or database fails the connection: nothing of
        // a call was sent.
        let target = &self.target;
        let buffer = &mut self.buffer;
        if let Some(password) = &target.password {
            let password = password.as_bytes();
            let mut answer = match &target.username {
                Some(user) => {
                    greet(&mut stream, buffer, &[b"AUTH", user.as_bytes(), password]).await?
                }
                None => greet(&mut stream, buffer, &[b"AUTH", password]).await?,
            };
            // Redis before 6 knows no users: the password alone, as the
            // client's own connection retries it.
            if target.username.is_some()
                && matches!(&answer, Err(LineError::Server(message)) if message.contains("wrong number of arguments"))
            {
                answer = greet(&mut stream, buffer, &[b"AUTH", password]).await?;
            }
            answer.map_err(|error| LineError::Connect(error.to_string()))?;
        }
        if target.db != 0 {
            let mut digits = itoa::Buffer::new();
            let db = digits.format(target.db).as_bytes();
            greet(&mut stream, buffer, &[b"SELECT", db])
                .await?
                .map_err(|error| LineError::Connect(error.to_string()))?;
        }
        Ok(stream)
    }
}

/// One command of a new connection's greeting, and its reply. A failure
/// of the connection itself is a failure to connect.
async fn greet(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    command: &[&[u8]],
) -> Result<Result<Reply, LineError>, LineError> {
    stream
        .write_all(&command_of(command))
        .await
        .map_err(|error| LineError::Connect(error.to_string()))?;
    read_reply(stream, buffer)
        .await
        .map_err(|error| LineError::Connect(error.to_string()))
}

/// A command as a RESP array of bulk strings.
pub(crate) fn command_of(arguments: &[&[u8]]) -> Vec<u8> {
    let length: usize = arguments.iter().map(|argument| argument.len() + 16).sum();
    let mut out = Vec::with_capacity(length + 16);
    let mut digits = itoa::Buffer::new();
    out.push(b'*');
    out.extend_from_slice(digits.format(arguments.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for argument in arguments {
        out.push(b'$');
        out.extend_from_slice(digits.format(argument.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(argument);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one whole reply from `stream`, keeping what follows it in
/// `buffer`. The outer error is the connection's; the inner one an error
/// reply from Redis (the exchange itself completed).
async fn read_reply(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Result<Reply, LineError>, LineError> {
    loop {
        match parse(buffer) {
            Ok(Some((reply, used))) => {
                buffer.drain(..used);
                return Ok(reply);
            }
            Ok(None) => {}
            Err(error) => return Err(LineError::Protocol(error)),
        }
        // A reply that never ends (not Redis) stops here, not at the timeout.
        if buffer.len() > MAX_REPLY_LENGTH + 4096 {
            return Err(LineError::Protocol(
                "a reply longer than any expected".to_owned(),
            ));
        }
        buffer.reserve(4096);
        let read = stream
            .read_buf(buffer)
            .await
            .map_err(|error| LineError::Io(error.to_string()))?;
        if read == 0 {
            return Err(LineError::Io("Redis closed the connection".to_owned()));
        }
    }
}

/// One reply from the start of `bytes`, with the bytes it took; `None`
/// while it is incomplete.
type Parsed = Option<(Result<Reply, LineError>, usize)>;

fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let mut at = 0;
    match parse_at(bytes, &mut at, 0)? {
        Some(reply) => Ok(Some((reply, at))),
        None => Ok(None),
    }
}

/// How deep arrays may nest (the script's answers are flat).
const MAX_DEPTH: usize = 8;

fn parse_at(
    bytes: &[u8],
    at: &mut usize,
    depth: usize,
) -> Result<Option<Result<Reply, LineError>>, String> {
    let Some(line) = line_at(bytes, *at) else {
        return Ok(None);
    };
    if line == *at {
        return Err("an empty reply line".to_owned());
    }
    let (kind, text) = (bytes[*at], &bytes[*at + 1..line]);
    let next = line + 2;
    let text_str = || std::str::from_utf8(text).map_err(|_| "a reply line is not UTF-8".to_owned());
    let reply = match kind {
        b'+' => Ok(Reply::Status(text_str()?.to_owned())),
        b'-' => Err(LineError::Server(text_str()?.to_owned())),
        b':' => Ok(Reply::Integer(number(text)?)),
        b'$' => {
            let length = number(text)?;
            if length < 0 {
                *at = next;
                return Ok(Some(Ok(Reply::Bulk(None))));
            }
            let length = bounded(length)?;
            if bytes.len() < next + length + 2 {
                return Ok(None);
            }
            if &bytes[next + length..next + length + 2] != b"\r\n" {
                return Err("a bulk string does not end with CRLF".to_owned());
            }
            *at = next + length + 2;
            return Ok(Some(Ok(Reply::Bulk(Some(
                bytes[next..next + length].to_vec(),
            )))));
        }
        b'*' => {
            let count = number(text)?;
            if count < 0 {
                *at = next;
                return Ok(Some(Ok(Reply::Array(None))));
            }
            if depth >= MAX_DEPTH {
                return Err("arrays nest too deeply".to_owned());
            }
            let count = bounded(count)?;
            let mut cursor = next;
            let mut items = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                match parse_at(bytes, &mut cursor, depth + 1)? {
                    Some(Ok(item)) => items.push(item),
                    // An error inside an array (not sent by the script).
                    Some(Err(error)) => return Err(error.to_string()),
                    None => return Ok(None),
                }
            }
            *at = cursor;
            return Ok(Some(Ok(Reply::Array(Some(items)))));
        }
        other => return Err(format!("unknown reply type byte {other:#04x}")),
    };
    *at = next;
    Ok(Some(reply))
}

/// Where the line starting at `from` ends (its `\r`), if it is complete.
fn line_at(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    let end = rest.windows(2).position(|pair| pair == b"\r\n")?;
    Some(from + end)
}

fn number(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("{:?} is not a number", String::from_utf8_lossy(text)))
}

fn bounded(length: i64) -> Result<usize, String> {
    usize::try_from(length)
        .ok()
        .filter(|length| *length <= MAX_REPLY_LENGTH)
        .ok_or_else(|| format!("a length of {length} is out of bounds"))
}

/// The integers of a flat array reply (the script's answers).
pub(crate) fn integers(reply: Reply) -> Result<Vec<i64>, LineError> {
    let Reply::Array(Some(items)) = reply else {
        return Err(LineError::Protocol(format!("{reply:?} is not an array")));
    };
    items
        .into_iter()
        .map(|item| match item {
            Reply::Integer(value) => Ok(value),
            other => Err(LineError::Protocol(format!("{other:?} is not an integer"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Result<Reply, LineError> {
        let (reply, used) = parse(bytes).unwrap().expect("a whole reply");
        assert_eq!(used, bytes.len(), "{:?}", String::from_utf8_lossy(bytes));
        reply
    }

    #[test]
    fn replies_are_read_as_redis_writes_them() {
        assert_eq!(whole(b":-42\r\n").unwrap(), Reply::Integer(-42));
        assert_eq!(whole(b"+OK\r\n").unwrap(), Reply::Status("OK".to_owned()));
        assert_eq!(
            whole(b"$3\r\na\r\n\r\n").unwrap(),
            Reply::Bulk(Some(b"a\r\n".to_vec()))
        );
        assert_eq!(whole(b"$0\r\n\r\n").unwrap(), Reply::Bulk(Some(Vec::new())));
        assert_eq!(whole(b"$-1\r\n").unwrap(), Reply::Bulk(None));
        assert_eq!(whole(b"*-1\r\n").unwrap(), Reply::Array(None));
        assert_eq!(
            whole(b"*3\r\n:1\r\n:0\r\n:-1\r\n").unwrap(),
            Reply::Array(Some(vec![
                Reply::Integer(1),
                Reply::Integer(0),
                Reply::Integer(-1)
            ]))
        );
        assert_eq!(
            integers(whole(b"*2\r\n:7\r\n:9\r\n").unwrap()).unwrap(),
            vec![7, 9]
        );
        let error = whole(b"-NOSCRIPT No matching script.\r\n").unwrap_err();
        assert!(error.is_no_script(), "{error}");
        assert!(!whole(b"-ERR wrong\r\n").unwrap_err().is_no_script());
    }

    #[test]
    fn an_incomplete_reply_waits_for_more_and_the_rest_is_kept() {
        let reply = b"*2\r\n:7\r\n$2\r\nab\r\n";
        for cut in 0..reply.len() {
            assert!(parse(&reply[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let mut two = reply.to_vec();
        two.extend_from_slice(b":5\r\n");
        let (_, used) = parse(&two).unwrap().unwrap();
        assert_eq!(used, reply.len());
        assert_eq!(whole(&two[used..]).unwrap(), Reply::Integer(5));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            &b"?1\r\n"[..],
            b":x\r\n",
            b"$2\r\nabcd\r\n",
            b"*99999999999\r\n",
            b"$99999999999\r\n",
            b"*1\r\n-ERR inside\r\n",
            b"\r\n",
            b"*1\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        assert!(integers(Reply::Integer(1)).is_err());
        assert!(integers(Reply::Array(Some(vec![Reply::Bulk(None)]))).is_err());
    }

    /// A stand-in Redis on loopback: it reads each command (an array of
    /// bulk strings), notes it with its connection's number, and writes
    /// whatever `answer` returns for it; `None` closes the connection.
    struct FakeRedis {
        target: Target,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(usize, String)>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeRedis {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    type Answer = dyn Fn(usize, &str) -> Option<Vec<u8>> + Send + Sync;

    async fn fake_redis(url_auth: &str, answer: std::sync::Arc<Answer>) -> FakeRedis {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = 0;
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                connections += 1;
                let (number, log, answer) = (connections, log.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    loop {
                        let Ok(Some((Ok(Reply::Array(Some(items))), used))) = parse(&buffer) else {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                            }
                            continue;
                        };
                        buffer.drain(..used);
                        let words: Vec<String> = items
                            .into_iter()
                            .map(|item| match item {
                                Reply::Bulk(Some(bytes)) => {
                                    String::from_utf8_lossy(&bytes).into_owned()
                                }
                                other => format!("{other:?}"),
                            })
                            .collect();
                        let command = words.join(" ");
                        log.lock().unwrap().push((number, command.clone()));
                        match answer(number, &command) {
                            Some(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            None => return,
                        }
                    }
                });
            }
        });
        let url = format!("redis://{url_auth}127.0.0.1:{port}/3");
        let target = Target::of(redis::Client::open(url).unwrap().get_connection_info()).unwrap();
        FakeRedis { target, seen, task }
    }

    fn seen(fake: &FakeRedis) -> Vec<(usize, String)> {
        fake.seen.lock().unwrap().clone()
    }

    /// The commands the stand-in received, whatever the connection.
    fn commands(fake: &FakeRedis) -> Vec<String> {
        seen(fake).into_iter().map(|(_, command)| command).collect()
    }

    #[tokio::test]
    async fn a_redis_without_users_gets_the_password_alone() {
        let fake = fake_redis(
            "user:pw@",
            std::sync::Arc::new(|_, command: &str| {
                Some(match command {
                    "AUTH user pw" => {
                        b"-ERR wrong number of arguments for 'auth' command\r\n".to_vec()
                    }
                    "AUTH pw" | "SELECT 3" => b"+OK\r\n".to_vec(),
                    _ => b"*1\r\n:7\r\n".to_vec(),
                })
            }),
        )
        .await;
        let mut line = Line::new(fake.target.clone());
        let command = command_of(&[b"EVALSHA", b"x"]);
        assert_eq!(
            integers(line.call(&command).await.unwrap()).unwrap(),
            vec![7]
        );
        let commands = commands(&fake);
        assert_eq!(
            commands,
            ["AUTH user pw", "AUTH pw", "SELECT 3", "EVALSHA x"]
        );
        let socket = socket2::SockRef::from(line.stream.as_ref().expect("kept"));
        assert!(socket.keepalive().unwrap(), "probed while idle");
        #[cfg(target_os = "linux")]
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
    }

    #[tokio::test]
    async fn a_refused_password_fails_the_connection_before_any_call() {
        let fake = fake_redis(
            ":hunter2-secret@",
            std::sync::Arc::new(|_, command: &str| {
                Some(if command.starts_with("AUTH") {
                    b"-WRONGPASS invalid username-password pair\r\n".to_vec()
                } else {
                    b"*0\r\n".to_vec()
                })
            }),
        )
        .await;
        let mut line = Line::new(fake.target.clone());
        let command = command_of(&[b"EVALSHA", b"x"]);
        let error = line.call_script(&command, "return 1").await.unwrap_err();
        assert!(matches!(error, LineError::Connect(_)), "{error:?}");
        assert!(
            !error.to_string().contains("hunter2"),
            "no password in {error}"
        );
        assert!(
            commands(&fake)
                .iter()
                .all(|command| command.starts_with("AUTH"))
        );
    }

    #[tokio::test]
    async fn a_missing_script_is_loaded_and_the_call_sent_again() {
        let loaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = loaded.clone();
        let fake = fake_redis(
            "",
            std::sync::Arc::new(move |_, command: &str| {
                use std::sync::atomic::Ordering;
                Some(if command == "SELECT 3" {
                    b"+OK\r\n".to_vec()
                } else if command.starts_with("SCRIPT LOAD") {
                    flag.store(true, Ordering::SeqCst);
                    b"$3\r\nsha\r\n".to_vec()
                } else if flag.load(Ordering::SeqCst) {
                    b"*3\r\n:0\r\n:1\r\n:2\r\n".to_vec()
                } else {
                    b"-NOSCRIPT No matching script.\r\n".to_vec()
                })
            }),
        )
        .await;
        let mut line = Line::new(fake.target.clone());
        let command = command_of(&[b"EVALSHA", b"sha"]);
        let reply = line
            .call_script(&command, "return {0, 1, 2}")
            .await
            .unwrap();
        assert_eq!(integers(reply).unwrap(), vec![0, 1, 2]);
        assert!(loaded.load(std::sync::atomic::Ordering::SeqCst));
        let commands = commands(&fake);
        assert_eq!(
            commands,
            [
                "SELECT 3",
                "EVALSHA sha",
                "SCRIPT LOAD return {0, 1, 2}",
                "EVALSHA sha"
            ]
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_replaced_and_a_lost_answer_may_have_applied() {
        // The first connection answers one call and then closes at the
        // second; the second connection is refused its database: the call
        // reached Redis once, so it may have been applied.
        let fake = fake_redis(
            "",
            std::sync::Arc::new(|connection, command: &str| match (connection, command) {
                (1, "SELECT 3") => Some(b"+OK\r\n".to_vec()),
                (1, "EVALSHA one") => Some(b"*1\r\n:1\r\n".to_vec()),
                (1, _) => None,
                (_, "SELECT 3") => {
                    Some(b"-LOADING Redis is loading the dataset in memory\r\n".to_vec())
                }
                _ => Some(b"*1\r\n:2\r\n".to_vec()),
            }),
        )
        .await;
        let mut line = Line::new(fake.target.clone());
        let one = command_of(&[b"EVALSHA", b"one"]);
        assert_eq!(
            integers(line.call_script(&one, "").await.unwrap()).unwrap(),
            vec![1]
        );
        assert!(line.is_open(), "kept after a whole answer");
        let two = command_of(&[b"EVALSHA", b"two"]);
        let error = line.call_script(&two, "").await.unwrap_err();
        assert!(matches!(error, LineError::Io(_)), "{error:?}");
        assert!(!line.is_open());
        let connections: Vec<usize> = seen(&fake).into_iter().map(|(number, _)| number).collect();
        assert_eq!(
            connections,
            [1, 1, 1, 2],
            "retried once, on a new connection"
        );
    }

    #[tokio::test]
    async fn a_garbled_answer_drops_the_connection_and_the_next_call_reconnects() {
        let fake = fake_redis(
            "",
            std::sync::Arc::new(|connection, command: &str| {
                Some(match (connection, command) {
                    (_, "SELECT 3") => b"+OK\r\n".to_vec(),
                    (1, _) => b"*1\r\n:1\r\n:extra\r\n".to_vec(),
                    (2, _) => b"!garbled\r\n".to_vec(),
                    _ => b"*1\r\n:3\r\n".to_vec(),
                })
            }),
        )
        .await;
        let mut line = Line::new(fake.target.clone());
        let command = command_of(&[b"EVALSHA", b"x"]);
        // Bytes after a whole answer: the answer stands, the connection goes.
        assert_eq!(
            integers(line.call(&command).await.unwrap()).unwrap(),
            vec![1]
        );
        assert!(!line.is_open());
        let error = line.call(&command).await.unwrap_err();
        assert!(matches!(error, LineError::Protocol(_)), "{error:?}");
        assert!(!line.is_open());
        assert_eq!(
            integers(line.call(&command).await.unwrap()).unwrap(),
            vec![3]
        );
        assert!(line.is_open());
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let out = command_of(&[b"AUTH", b"user", b"p\r\nw"]);
        assert_eq!(out, b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$4\r\np\r\nw\r\n");
    }

    #[test]
    fn targets_carry_credentials_and_database() {
        let info = |url: &str| {
            redis::Client::open(url)
                .unwrap()
                .get_connection_info()
                .clone()
        };
        let target = Target::of(&info("redis://user:secret@127.0.0.1:6380/3")).unwrap();
        assert_eq!((target.host.as_str(), target.port), ("127.0.0.1", 6380));
        assert_eq!(target.username.as_deref(), Some("user"));
        assert_eq!(target.password.as_deref(), Some("secret"));
        assert_eq!(target.db, 3);
        let plain = Target::of(&info("redis://[::1]:6379")).unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("::1", 6379));
        assert!(plain.password.is_none() && plain.db == 0);
        assert!(Target::of(&info("redis+unix:///tmp/redis.sock")).is_none());
        assert!(!format!("{target:?}").contains("secret"), "{target:?}");
    }
}
