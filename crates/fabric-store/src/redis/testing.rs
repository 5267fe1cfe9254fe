//! A throwaway `redis-server` for tests and benchmarks (feature `conformance`):
//! its own loopback port and data dir, durable settings (`appendonly yes`,
//! `appendfsync always`), killed on drop.
//!
//! A missing `redis-server` is a test failure with a message saying how to
//! install it, never a silent skip (`scripts/test` installs it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Program started; override with `FABRIC_TEST_REDIS_SERVER`.
const PROGRAM: &str = "redis-server";
/// How long a start (including an AOF replay after a restart) may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `redis-server` child process. Panics (failing the test) when it cannot start.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    password: Option<String>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a durable server keeping its files in `dir` (created if needed).
    pub fn start(dir: &Path) -> RedisServer {
        Self::start_with(dir, None, &[])
    }

    /// Like [`RedisServer::start`], with `requirepass` and extra
    /// `--name value` arguments (which override the defaults).
    pub fn start_with(dir: &Path, password: Option<&str>, extra: &[&str]) -> RedisServer {
        if let Err(e) = std::fs::create_dir_all(dir) {
            panic!("cannot create the redis-server dir {}: {e}", dir.display());
        }
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir: dir.to_owned(),
            password: password.map(str::to_owned),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        // Another process may grab the free port before redis-server binds it.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn_and_wait() {
                return server;
            }
        }
        panic!(
            "redis-server did not start after 5 attempts; its log:\n{}",
            server.log()
        );
    }

    /// `redis://[:password@]127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// `kill -9`: nothing is flushed beyond what Redis already wrote.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and dir (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        // The old socket may linger briefly; retry until the port is free again.
        while !self.spawn_and_wait() {
            if Instant::now() > deadline {
                panic!(
                    "redis-server did not restart on port {}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the child and waits for PONG; `false` if it exited (port taken).
    fn spawn_and_wait(&mut self) -> bool {
        let program = std::env::var("FABRIC_TEST_REDIS_SERVER").unwrap_or_else(|_| PROGRAM.into());
        let mut cmd = Command::new(&program);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--dir"])
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
            .args(["--logfile", "redis.log"]);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{program} not found on PATH: the Redis store tests need a real Redis; install it (Debian: apt-get install redis-server; scripts/test does this)"
            ),
            Err(e) => panic!("cannot start {program}: {e}"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.answers_ping() {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}; its log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw RESP `PING` (after `AUTH`): `+PONG` once the data is loaded.
    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut request = String::new();
        if let Some(p) = &self.password {
            request.push_str(&format!("AUTH {p}\r\n"));
        }
        request.push_str("PING\r\nQUIT\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains("+PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("cannot find a free loopback port: {e}"),
    }
}
