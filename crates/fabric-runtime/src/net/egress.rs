//! [`EgressProxy`]: the one way out of a sandbox, limited to the agent's egress allowlist.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fabric_core::agent::EgressRule;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::{self, EgressMethod, HeadError, Request};
use super::{
    CONNECT_TIMEOUT, ClientStream, DEFAULT_MAX_CONNECTIONS, HEAD_TIMEOUT, into_tokio,
    serve_connections,
};
use crate::RuntimeError;

/// Called with every decision the proxy makes; must be quick (it runs on
/// the connection's task), e.g. push to a channel or write a log record.
pub type AuditHook = Arc<dyn Fn(&EgressDecision) + Send + Sync>;

/// A second gate after the allowlist (the fabric's policy engine,
/// `net:connect:<host>:<port>`): resolves to `Ok(())` to let the target
/// through, `Err` to refuse it with the reason. Awaited on the connection's
/// task for targets the allowlist admits: in process on the orchestrator,
/// one request to it from a worker node.
pub type PolicyGate = Arc<dyn Fn(&str, u16) -> GateFuture + Send + Sync>;

/// What a [`PolicyGate`] answers with.
pub type GateFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// One decision of an [`EgressProxy`]: may this agent reach `host:port`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressDecision {
    pub agent_id: String,
    /// As requested, lowercased (an IPv6 literal without brackets).
    pub host: String,
    pub port: u16,
    pub method: EgressMethod,
    pub allowed: bool,
    /// Why: the rule that allowed it, or why nothing did.
    pub reason: String,
}

/// An HTTP proxy for one agent, served on a listener inside its sandbox
/// (agents are pointed at it with [`proxy_env`](super::proxy_env)).
///
/// It takes `CONNECT host:port` (a tunnel: HTTPS and anything else over
/// TCP) and absolute-form plain HTTP requests (`GET http://host:port/path`,
/// forwarded in origin form with `Host` set to the target and
/// `Connection: close`, then spliced). Each target is checked against the
/// agent's allowlist ([`EgressRule::allows`]; an empty list allows nothing):
///
/// - allowed: the name is resolved and connected to on the host side within
///   [`CONNECT_TIMEOUT`] (502 or 504 if that fails), then bytes flow both ways
///   until either side closes;
/// - denied: `403` with a one-line text body naming the target and the
///   reason, and no DNS query for it.
///
/// Every decision goes to the audit hook and is a `tracing` event with target
/// `audit` and fields `agent_id`, `host`, `port`, `method`, `decision`
/// (`allow`/`deny`) and `reason`: `warn` for denials, `info` otherwise.
/// A malformed request line or a head over 16 KiB gets `400`, a head not
/// complete within [`HEAD_TIMEOUT`] gets `408`; neither is a decision.
///
/// A wildcard rule (`*.example.com`) never admits a name that resolves only
/// to loopback, private, link-local or otherwise non-public addresses (and
/// only public ones are connected to): whoever controls DNS for the domain
/// could otherwise point it at the host's own services. An exact rule
/// (`localhost:8080`, `10.0.0.5:443`) admits whatever its name resolves to:
/// the operator named that host. For `CONNECT`, what flows in the tunnel is
/// not inspected (TLS SNI and `Host` may name another site served at the
/// same address); for plain HTTP the proxy sets `Host` itself.
pub struct EgressProxy {
    agent_id: String,
    rules: Vec<EgressRule>,
    audit: AuditHook,
    policy: Option<PolicyGate>,
    max_connections: usize,
    connect_timeout: Duration,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("agent_id", &self.agent_id)
            .field("rules", &self.rules)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Which rule let a target through.
enum Verdict<'a> {
    Allowed(&'a EgressRule),
    Denied(String),
}

impl EgressProxy {
    /// A proxy for `agent_id` with its allowlist (from
    /// [`parse_egress`](fabric_core::agent::parse_egress)) and audit hook;
    /// at most [`DEFAULT_MAX_CONNECTIONS`] connections at once.
    pub fn new(agent_id: impl Into<String>, rules: Vec<EgressRule>, audit: AuditHook) -> Self {
        Self {
            agent_id: agent_id.into(),
            rules,
            audit,
            policy: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// Adds a policy gate after the allowlist: a target must pass both.
    pub fn with_policy(mut self, gate: PolicyGate) -> Self {
        self.policy = Some(gate);
        self
    }

    /// Connections served at once (at least 1); more wait in the backlog.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// Serves `listener` (typically [`Sandbox::bind_tcp`](crate::Sandbox::bind_tcp))
    /// until `shutdown` completes; then stops accepting and drops the open
    /// connections (the sandbox is going away). Needs a tokio runtime; spawn
    /// it as a task. Returns early only if the listener cannot be used.
    pub async fn serve(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RuntimeError> {
        let listener = into_tokio(listener, "egress proxy")?;
        let max = self.max_connections;
        let proxy = Arc::new(self);
        serve_connections(listener, max, shutdown, move |client| {
            Arc::clone(&proxy).handle(client)
        })
        .await;
        Ok(())
    }

    /// [`serve`](EgressProxy::serve) on a Unix socket: how a container agent's
    /// sidecar reaches the proxy (the container has no network of its own).
    pub async fn serve_unix(
        self,
        listener: tokio::net::UnixListener,
        shutdown: impl Future<Output = ()>,
    ) {
        let max = self.max_connections;
        let proxy = Arc::new(self);
        serve_connections(listener, max, shutdown, move |client| {
            Arc::clone(&proxy).handle(client)
        })
        .await;
    }

    /// Whether the allowlist lets `host:port` through, before any resolving.
    /// An exact rule is preferred to a wildcard one (see the type's docs).
    fn check(&self, host: &str, port: u16) -> Verdict<'_> {
        let exact = self
            .rules
            .iter()
            .find(|r| !is_wildcard(r) && r.allows(host, port));
        match exact.or_else(|| self.rules.iter().find(|r| r.allows(host, port))) {
            Some(rule) => Verdict::Allowed(rule),
            None if self.rules.is_empty() => Verdict::Denied(
                "the agent's egress allowlist is empty: it has no network access".into(),
            ),
            None => Verdict::Denied(format!(
                "{} is not in the agent's egress allowlist",
                http::authority(host, port)
            )),
        }
    }

    /// One client connection: head, decision, upstream, splice.
    async fn handle(self: Arc<Self>, mut client: impl ClientStream) {
        let read = tokio::time::timeout(HEAD_TIMEOUT, http::read_head(&mut client)).await;
        let (head, early_bytes) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::TooLarge)) => {
                let body = format!(
                    "request head larger than {} KiB\n",
                    http::MAX_HEAD_BYTES / 1024
                );
                return refuse(client, 400, &body).await;
            }
            Err(_) => {
                let body = format!("no complete request head within {HEAD_TIMEOUT:?}\n");
                return refuse(client, 408, &body).await;
            }
        };
        let request = match http::parse_head(&head) {
            Ok(request) => request,
            Err(reason) => return refuse(client, 400, &format!("bad request: {reason}\n")).await,
        };
        let target = http::authority(&request.host, request.port);

        let mut verdict = self.check(&request.host, request.port);
        if let (Verdict::Allowed(_), Some(gate)) = (&verdict, &self.policy)
            && let Err(reason) = gate(&request.host, request.port).await
        {
            verdict = Verdict::Denied(reason);
        }
        let addrs = match verdict {
            Verdict::Denied(reason) => {
                self.record(&request, false, &reason);
                let body = format!(
                    "egress to {target} denied: {reason} (agent {:?})\n",
                    self.agent_id
                );
                return refuse(client, 403, &body).await;
            }
            Verdict::Allowed(rule) => {
                let resolved = tokio::time::timeout(
                    self.connect_timeout,
                    tokio::net::lookup_host((request.host.as_str(), request.port)),
                )
                .await;
                let allowed_by = format!("allowed by egress rule {:?}", rule_text(rule));
                let addrs: Vec<SocketAddr> = match resolved {
                    Ok(Ok(addrs)) => addrs.collect(),
                    Ok(Err(err)) => {
                        self.record(&request, true, &allowed_by);
                        let body = format!("cannot resolve {}: {err}\n", request.host);
                        return refuse(client, 502, &body).await;
                    }
                    Err(_) => {
                        self.record(&request, true, &allowed_by);
                        let body = format!("resolving {} timed out\n", request.host);
                        return refuse(client, 504, &body).await;
                    }
                };
                if is_wildcard(rule) {
                    let public: Vec<SocketAddr> = addrs
                        .iter()
                        .copied()
                        .filter(|a| is_public(a.ip()))
                        .collect();
                    if public.is_empty() && !addrs.is_empty() {
                        let reason = format!(
                            "{} resolves only to non-public addresses, which the wildcard \
                             rule {:?} does not admit; allow the host by its exact name",
                            request.host,
                            rule_text(rule)
                        );
                        self.record(&request, false, &reason);
                        let body = format!(
                            "egress to {target} denied: {reason} (agent {:?})\n",
                            self.agent_id
                        );
                        return refuse(client, 403, &body).await;
                    }
                    self.record(&request, true, &allowed_by);
                    public
                } else {
                    self.record(&request, true, &allowed_by);
                    addrs
                }
            }
        };

        let mut upstream = match self.connect(&addrs).await {
            Ok(upstream) => upstream,
            Err(Some(err)) => {
                tracing::info!(agent_id = %self.agent_id, %target, error = %err, "egress: cannot connect");
                return refuse(client, 502, &format!("cannot connect to {target}: {err}\n")).await;
            }
            Err(None) => {
                let body = format!(
                    "connecting to {target} timed out after {:?}\n",
                    self.connect_timeout
                );
                return refuse(client, 504, &body).await;
            }
        };
        client.no_delay();
        let _ = upstream.set_nodelay(true);
        let started = match request.method {
            EgressMethod::Connect => client.write_all(http::CONNECT_ESTABLISHED).await,
            EgressMethod::Http => upstream.write_all(&request.upstream_head).await,
        };
        if started.is_err() || upstream.write_all(&early_bytes).await.is_err() {
            return;
        }
        // Errors are one side resetting: the connection is over either way.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }

    /// Tries the addresses in turn, all within the connect timeout; `None`
    /// for running out of time.
    async fn connect(&self, addrs: &[SocketAddr]) -> Result<TcpStream, Option<io::Error>> {
        let attempt = async {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no addresses");
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(err) => last = err,
                }
            }
            Err(Some(last))
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or(Err(None))
    }

    /// The audit hook and the `audit` tracing event, for one decision.
    fn record(&self, request: &Request, allowed: bool, reason: &str) {
        let decision = EgressDecision {
            agent_id: self.agent_id.clone(),
            host: request.host.clone(),
            port: request.port,
            method: request.method,
            allowed,
            reason: reason.to_string(),
        };
        if allowed {
            tracing::info!(
                target: "audit",
                agent_id = %decision.agent_id,
                host = %decision.host,
                port = decision.port,
                method = %decision.method,
                decision = "allow",
                reason = %decision.reason,
                "egress allowed"
            );
        } else {
            tracing::warn!(
                target: "audit",
                agent_id = %decision.agent_id,
                host = %decision.host,
                port = decision.port,
                method = %decision.method,
                decision = "deny",
                reason = %decision.reason,
                "egress denied"
            );
        }
        (self.audit)(&decision);
    }
}

/// Answers with a plain-text error and closes. The client's unread bytes (a
/// request body) are drained for a moment first: closing with them unread
/// would reset the connection, and the client might lose the answer.
async fn refuse(mut client: impl ClientStream, status: u16, body: &str) {
    if client
        .write_all(&http::text_response(status, body))
        .await
        .is_err()
    {
        return;
    }
    let _ = client.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let drain = async {
        while drained < 64 * 1024 {
            match client.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

fn is_wildcard(rule: &EgressRule) -> bool {
    rule.host.starts_with("*.")
}

/// The rule as an agent config writes it.
fn rule_text(rule: &EgressRule) -> String {
    match rule.port {
        Some(port) => format!("{}:{port}", rule.host),
        None => rule.host.clone(),
    }
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local, shared (CGNAT), unspecified, broadcast or multicast.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use fabric_core::agent::parse_egress;

    use super::*;

    fn proxy(rules: &[&str]) -> EgressProxy {
        let rules = rules.iter().map(|r| parse_egress(r).unwrap()).collect();
        EgressProxy::new("a1", rules, Arc::new(|_: &EgressDecision| {}))
    }

    #[test]
    fn exact_rules_win_over_wildcards_and_an_empty_list_denies_all() {
        let p = proxy(&["*.example.com", "api.example.com:443"]);
        match p.check("api.example.com", 443) {
            Verdict::Allowed(rule) => assert_eq!(rule_text(rule), "api.example.com:443"),
            Verdict::Denied(reason) => panic!("{reason}"),
        }
        match p.check("x.example.com", 8080) {
            Verdict::Allowed(rule) => assert_eq!(rule_text(rule), "*.example.com"),
            Verdict::Denied(reason) => panic!("{reason}"),
        }
        match p.check("example.org", 443) {
            Verdict::Denied(reason) => {
                assert!(reason.contains("example.org:443 is not in"), "{reason}")
            }
            Verdict::Allowed(_) => panic!("allowed"),
        }
        match proxy(&[]).check("example.com", 443) {
            Verdict::Denied(reason) => assert!(reason.contains("empty"), "{reason}"),
            Verdict::Allowed(_) => panic!("allowed"),
        }
    }

    #[test]
    fn only_public_addresses_count_as_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "140.82.112.3", "2606:4700::1111", "100.128.0.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
