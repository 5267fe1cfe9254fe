//! `net`: the egress proxy and TCP forwards, served on listeners inside real sandboxes and reached by real clients (Python) running there.

use std::future::pending;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fabric_core::TaskFile;
use fabric_core::agent::parse_egress;
use fabric_runtime::net::{EgressDecision, EgressMethod, EgressProxy, forward_tcp, proxy_env};
use fabric_runtime::{RuntimeError, Sandbox, ShellJob, ShellOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::sandbox::{config, create, within};

/// An HTTP server on the host's loopback answering every request with
/// `body`, and recording the request heads it got.
struct HostServer {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn host_server(body: &'static str) -> HostServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    let task = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    HostServer { port, heads, task }
}

type Decisions = Arc<Mutex<Vec<EgressDecision>>>;

/// An egress proxy for agent "coder" with `rules`, serving `listener`.
struct RunningProxy {
    port: u16,
    decisions: Decisions,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), RuntimeError>>,
}

fn start_proxy(listener: std::net::TcpListener, rules: &[String], max: usize) -> RunningProxy {
    let port = listener.local_addr().unwrap().port();
    let decisions: Decisions = Arc::default();
    let seen = Arc::clone(&decisions);
    let rules = rules.iter().map(|r| parse_egress(r).unwrap()).collect();
    let proxy = EgressProxy::new(
        "coder",
        rules,
        Arc::new(move |d: &EgressDecision| seen.lock().unwrap().push(d.clone())),
    )
    .with_max_connections(max);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(proxy.serve(listener, async {
        let _ = stopped.await;
    }));
    RunningProxy {
        port,
        decisions,
        stop,
        task,
    }
}

impl RunningProxy {
    fn decisions(&self) -> Vec<(String, u16, EgressMethod, bool)> {
        self.decisions
            .lock()
            .unwrap()
            .iter()
            .map(|d| (d.host.clone(), d.port, d.method, d.allowed))
            .collect()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        within(10, self.task).await.unwrap().unwrap();
    }
}

/// Runs a Python script inside the sandbox (written as a task file: no quoting).
async fn python(sandbox: &Sandbox, script: &str) -> ShellOutcome {
    let mut job = ShellJob::new(
        vec!["python3 script.py".into()],
        sandbox.workdir().to_path_buf(),
    );
    job.files = vec![TaskFile {
        path: "script.py".into(),
        content: script.into(),
    }];
    let outcome = within(60, sandbox.run_shell(job, None, pending()))
        .await
        .unwrap();
    assert!(outcome.failure().is_none(), "{outcome:?}");
    outcome
}

#[tokio::test]
async fn the_egress_proxy_lets_allowlisted_http_through_and_refuses_and_audits_the_rest() {
    let allowed = host_server("hello from A").await;
    let other = host_server("hello from B").await;
    let (a, b) = (allowed.port, other.port);
    let (_tmp, config) = config("egress-http");
    let sandbox = create(config).await;
    let proxy = start_proxy(
        sandbox.bind_tcp(0).unwrap(),
        &[format!("localhost:{a}")],
        256,
    );

    let outcome = python(
        &sandbox,
        &format!(
            r#"
import socket, urllib.error, urllib.request
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({{"http": "http://127.0.0.1:{proxy}"}}))
for port in ({a}, {b}):
    try:
        response = opener.open(f"http://localhost:{{port}}/hello?x=1", timeout=20)
        print(port, response.status, response.read().decode())
    except urllib.error.HTTPError as err:
        print(port, err.code, err.read().decode().strip())
# Without the proxy: the host's loopback is not reachable from inside.
try:
    socket.create_connection(("127.0.0.1", {a}), timeout=5)
    print("raw", "connected")
except OSError as err:
    print("raw", type(err).__name__)
"#,
            proxy = proxy.port
        ),
    )
    .await;
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines[0], format!("{a} 200 hello from A"), "{outcome:?}");
    assert_eq!(
        lines[1],
        format!(
            "{b} 403 egress to localhost:{b} denied: localhost:{b} is not in the agent's egress \
             allowlist (agent \"coder\")"
        ),
        "{outcome:?}"
    );
    assert_eq!(lines[2], "raw ConnectionRefusedError", "{outcome:?}");

    assert_eq!(
        proxy.decisions(),
        vec![
            ("localhost".into(), a, EgressMethod::Http, true),
            ("localhost".into(), b, EgressMethod::Http, false),
        ]
    );
    let denial = proxy.decisions.lock().unwrap()[1].clone();
    assert_eq!(denial.agent_id, "coder");
    assert!(
        denial
            .reason
            .contains("not in the agent's egress allowlist")
    );
    // A got the one proxied request, in origin form, with the proxy's own
    // Host and Connection headers; B and the raw connect never reached the host.
    let heads = allowed.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /hello?x=1 HTTP/1.1\r\n"),
        "{heads:?}"
    );
    assert!(heads[0].contains(&format!("\r\nHost: localhost:{a}\r\n")));
    assert!(heads[0].contains("\r\nConnection: close\r\n"));
    assert!(other.heads.lock().unwrap().is_empty());

    proxy.stop().await;
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn connect_tunnels_reach_allowlisted_targets_only() {
    let allowed = host_server("tunnelled to A").await;
    let other = host_server("tunnelled to B").await;
    let (a, b) = (allowed.port, other.port);
    let (_tmp, config) = config("egress-connect");
    let sandbox = create(config).await;
    // A wildcard rule never admits a loopback address: `*.0.0.1` matches
    // the name "127.0.0.1" (no DNS needed to show it).
    let proxy = start_proxy(
        sandbox.bind_tcp(0).unwrap(),
        &[format!("localhost:{a}"), "*.0.0.1".into()],
        256,
    );

    let outcome = python(
        &sandbox,
        &format!(
            r#"
import http.client, socket
for host, port in (("localhost", {a}), ("localhost", {b}), ("127.0.0.1", {a})):
    conn = http.client.HTTPConnection("127.0.0.1", {proxy}, timeout=20)
    conn.set_tunnel(host, port)
    try:
        conn.request("GET", "/via-tunnel")
        response = conn.getresponse()
        print(port, response.status, response.read().decode())
    except OSError as err:
        print(port, "refused:", err)
# CONNECT and the first request in one write: bytes after the head go through.
s = socket.create_connection(("127.0.0.1", {proxy}), timeout=20)
s.sendall(b"CONNECT localhost:{a} HTTP/1.1\r\n\r\nGET /pipelined HTTP/1.1\r\nHost: localhost\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(repr(data.decode()))
"#,
            proxy = proxy.port
        ),
    )
    .await;
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines[0], format!("{a} 200 tunnelled to A"), "{outcome:?}");
    assert_eq!(
        lines[1],
        format!("{b} refused: Tunnel connection failed: 403 Forbidden"),
        "{outcome:?}"
    );
    assert_eq!(
        lines[2],
        format!("{a} refused: Tunnel connection failed: 403 Forbidden"),
        "{outcome:?}"
    );
    assert!(
        lines[3].starts_with("'HTTP/1.1 200 Connection established\\r\\n\\r\\nHTTP/1.1 200 OK"),
        "{outcome:?}"
    );
    assert!(lines[3].ends_with("tunnelled to A'"), "{outcome:?}");

    let decisions = proxy.decisions.lock().unwrap().clone();
    let summary: Vec<_> = decisions
        .iter()
        .map(|d| (d.host.as_str(), d.port, d.method, d.allowed))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("localhost", a, EgressMethod::Connect, true),
            ("localhost", b, EgressMethod::Connect, false),
            ("127.0.0.1", a, EgressMethod::Connect, false),
            ("localhost", a, EgressMethod::Connect, true),
        ]
    );
    assert!(
        decisions[2].reason.contains("non-public"),
        "{:?}",
        decisions[2]
    );
    let heads = allowed.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    assert!(heads[0].starts_with("GET /via-tunnel HTTP/1.1\r\n"));
    assert!(heads[1].starts_with("GET /pipelined HTTP/1.1\r\n"));
    assert!(other.heads.lock().unwrap().is_empty());

    proxy.stop().await;
    sandbox.destroy().await.unwrap();
}

#[tokio::test]
async fn an_empty_allowlist_means_no_network_even_through_the_proxy() {
    let server = host_server("unreachable").await;
    let (_tmp, config) = config("egress-none");
    let sandbox = create(config).await;
    let listener = sandbox.bind_tcp(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let proxy = start_proxy(listener, &[], 256);
    // The environment the fabric gives agents; curl reads it.
    let mut job = ShellJob::new(
        vec![format!(
            "curl -sS -o /dev/null -w '%{{http_code}}' --proxy \"$HTTP_PROXY\" --noproxy '' \
             http://localhost:{}/",
            server.port
        )],
        sandbox.workdir().to_path_buf(),
    );
    job.env = proxy_env(port);
    assert!(
        job.env
            .contains(&("HTTPS_PROXY".into(), format!("http://127.0.0.1:{port}")))
    );
    let outcome = within(30, sandbox.run_shell(job, None, pending()))
        .await
        .unwrap();
    assert_eq!(outcome.stdout, "403", "{outcome:?}");
    let decisions = proxy.decisions.lock().unwrap().clone();
    assert_eq!(decisions.len(), 1);
    assert!(!decisions[0].allowed);
    assert!(decisions[0].reason.contains("empty"), "{decisions:?}");
    assert!(server.heads.lock().unwrap().is_empty());
    proxy.stop().await;
    sandbox.destroy().await.unwrap();
}

/// Sends `request` to the proxy from the host and reads the answer to EOF.
async fn exchange(port: u16, request: Vec<u8>) -> String {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(&request).await.unwrap();
    let mut answer = String::new();
    within(10, conn.read_to_string(&mut answer)).await.unwrap();
    answer
}

#[tokio::test]
async fn bad_requests_get_400_and_are_not_decisions() {
    // The proxy's parsing does not need a sandbox: serve it on the host.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = start_proxy(listener, &["localhost".into()], 256);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"hello\r\n\r\n".to_vec(), "malformed request line"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "absolute"),
        (
            b"GET http://localhost@evil.test/ HTTP/1.1\r\n\r\n".to_vec(),
            "user info",
        ),
        (
            format!(
                "GET http://localhost/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(20_000)
            )
            .into_bytes(),
            "request head larger than 16 KiB",
        ),
    ];
    for (request, expected) in cases {
        let answer = exchange(proxy.port, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains(expected), "{answer}");
    }
    assert!(proxy.decisions().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn the_connection_cap_holds_further_clients_back_until_one_ends() {
    let server = host_server("capped").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = start_proxy(listener, &[format!("localhost:{}", server.port)], 2);
    // Two open CONNECT tunnels occupy both slots; each client knows its slot
    // is taken once it reads the proxy's 200.
    let tunnel = || async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
            .await
            .unwrap();
        let head = format!("CONNECT localhost:{} HTTP/1.1\r\n\r\n", server.port);
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut answer = [0u8; 12];
        within(10, conn.read_exact(&mut answer)).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200", "the tunnel was served");
        conn
    };
    let tunnel_one = tunnel().await;
    let _tunnel_two = tunnel().await;
    assert_eq!(proxy.decisions().len(), 2);
    let request = format!("GET http://localhost:{}/ HTTP/1.1\r\n\r\n", server.port);
    let third = tokio::spawn(exchange(proxy.port, request.into_bytes()));
    // A negative check needs a window: an uncapped proxy answers the third
    // client within milliseconds; half a second without an answer (and
    // without a decision) is the cap holding it back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served");
    assert_eq!(proxy.decisions().len(), 2, "the third was not decided");
    drop(tunnel_one);
    let answer = within(10, third).await.unwrap();
    assert!(answer.ends_with("\r\n\r\ncapped"), "{answer}");
    proxy.stop().await;
}

#[tokio::test]
async fn forward_tcp_brings_a_host_service_into_the_sandbox() {
    let server = host_server("the fabric's API").await;
    let (_tmp, config) = config("forward");
    let sandbox = create(config).await;
    let listener = sandbox.bind_tcp(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = SocketAddr::from(([127, 0, 0, 1], server.port));
    let (stop, stopped) = oneshot::channel::<()>();
    let forward = tokio::spawn(forward_tcp(listener, target, async {
        let _ = stopped.await;
    }));

    let script = format!(
        r#"
import urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
for _ in range(3):
    print(opener.open("http://127.0.0.1:{port}/v1/health", timeout=20).read().decode())
"#
    );
    let outcome = python(&sandbox, &script).await;
    assert_eq!(
        outcome.stdout,
        "the fabric's API\n".repeat(3),
        "{outcome:?}"
    );
    assert_eq!(server.heads.lock().unwrap().len(), 3);
    assert!(server.heads.lock().unwrap()[0].starts_with("GET /v1/health HTTP/1.1\r\n"));

    // After shutdown the listener is closed: nothing answers inside any more.
    stop.send(()).unwrap();
    within(10, forward).await.unwrap().unwrap();
    let outcome = python(
        &sandbox,
        &format!(
            r#"
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5)
    print("connected")
except OSError as err:
    print(type(err).__name__)
"#
        ),
    )
    .await;
    assert_eq!(outcome.stdout, "ConnectionRefusedError\n", "{outcome:?}");
    sandbox.destroy().await.unwrap();
}
