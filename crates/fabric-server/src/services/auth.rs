//! Authentication: users with argon2id password hashes, bearer tokens stored
//! only as SHA-256, scopes, and the [`Principal`] a token stands for (the HTTP
//! layer extracts it from a request in `crate::extract`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use fabric_core::{
    AgentId, ApiToken, AuthStore, Clock, Identity, Role, Scope, StoreError, Tenant, TenantId,
    Timestamp, TokenKind, User,
};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::store::Store;

/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often a token's `last_used_at` is written at most (a write per
/// request would double the store traffic of every read).
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("invalid or revoked token: log in again with 'reactor-fabric auth login'")]
    InvalidToken,
    #[error("token expired: log in again with 'reactor-fabric auth login'")]
    TokenExpired,
    #[error("{0} is disabled: ask an admin to enable it")]
    Disabled(String),
    /// Too many failed logins for this user name or from this address.
    #[error("too many failed logins for {who}: try again in {retry_after_secs} s")]
    TooManyAttempts { who: String, retry_after_secs: u64 },
    #[error("the password hashing thread is not running; see the server log")]
    PasswordWorkerDown,
    #[error("cannot hash password: {0}")]
    Hash(argon2::password_hash::Error),
    #[error(transparent)]
    Store(#[from] fabric_core::StoreError),
}

/// The caller a token stands for: its [`Identity`] (what services are
/// told; `principal.tenant`, `principal.require(..)` read through to it) and
/// the hash of the token it came with (for logout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub identity: Identity,
    pub kind: TokenKind,
    pub(crate) token_hash: String,
}

impl std::ops::Deref for Principal {
    type Target = Identity;

    fn deref(&self) -> &Identity {
        &self.identity
    }
}

/// What a new token is for; [`AuthService::issue`] adds the secret.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub user: String,
    pub tenant: TenantId,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub kind: TokenKind,
    /// The agent an agent token acts as.
    pub agent: Option<AgentId>,
    /// The token that creates it (see [`ApiToken::parent`]).
    pub parent: Option<String>,
}

/// A token known to this server, and whether the store holds it (agents'
/// session tokens live only here).
#[derive(Debug, Clone)]
struct Cached {
    token: ApiToken,
    stored: bool,
}

/// Users, tokens and the token cache.
pub struct AuthService {
    store: Store,
    clock: Arc<dyn Clock>,
    /// token hash → token; avoids a store read per request on a store only
    /// this server writes (SQLite). On a shared store (Redis) stored tokens
    /// are read on every request, so a revocation by another orchestrator
    /// holds on the next request; only in-memory agent tokens are cached.
    cache: Mutex<HashMap<String, Cached>>,
    shared_store: bool,
    /// token hash → when its `last_used_at` was last written.
    last_used: Mutex<HashMap<String, Instant>>,
    /// Failed logins per user name and address.
    login_throttle: LoginThrottle,
    /// What unknown users' passwords are checked against (see `verify`).
    decoy: tokio::sync::OnceCell<String>,
}

impl AuthService {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        let shared_store = store.is_shared();
        Self {
            store,
            clock,
            cache: Mutex::new(HashMap::new()),
            shared_store,
            last_used: Mutex::new(HashMap::new()),
            login_throttle: LoginThrottle::default(),
            decoy: tokio::sync::OnceCell::new(),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The stored tenant of that name (tenants are few: a scan of them).
    pub(crate) async fn tenant(&self, name: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let tenants = self.store.list_tenants().await?;
        Ok(tenants.into_iter().find(|t| &t.name == name))
    }

    /// On first start (no users), creates `admin` with the given password or a
    /// generated one; returns the generated password so `serve` can print it once.
    pub async fn bootstrap_admin(
        &self,
        password: Option<&str>,
    ) -> Result<Option<String>, AuthError> {
        if self.store.count_users().await? > 0 {
            return Ok(None);
        }
        let (password, generated) = match password {
            Some(p) if !p.is_empty() => (p.to_owned(), None),
            _ => {
                let p = random_secret(18);
                (p.clone(), Some(p))
            }
        };
        let user = User {
            name: "admin".into(),
            tenant: TenantId::default_tenant(),
            password_hash: hash_password(password).await?,
            role: Role::Admin,
            disabled: false,
            created_at: self.clock.now(),
            rate_limit_rps: None,
            llm_tokens_per_minute: None,
        };
        self.store.create_user(user).await?;
        tracing::info!(user = "admin", "created the first admin user");
        Ok(generated)
    }

    /// Checks a user's password (without telling a wrong password from an
    /// unknown user) and returns the user.
    pub async fn verify(&self, username: &str, password: &str) -> Result<User, AuthError> {
        let invalid = || AuthError::InvalidCredentials;
        let Some(user) = self.store.get_user(username.to_owned()).await? else {
            // The same argon2 work as a wrong password, so the answer's
            // time does not tell which user names exist.
            let decoy = self.decoy_hash().await?;
            let _ = verify_password(password.to_owned(), decoy).await;
            tracing::info!(user = username, outcome = "denied", "login failed");
            return Err(invalid());
        };
        if !verify_password(password.to_owned(), user.password_hash.clone()).await {
            tracing::info!(user = username, outcome = "denied", "login failed");
            return Err(invalid());
        }
        Ok(user)
    }

    /// A hash of a random password, made once: what an unknown user's
    /// password is checked against.
    async fn decoy_hash(&self) -> Result<String, AuthError> {
        self.decoy
            .get_or_try_init(|| hash_password(random_secret(16)))
            .await
            .cloned()
    }

    /// Checks a password and issues a session token. `from` is the
    /// client's address: failures are counted per user name and per
    /// address ([`LoginThrottle`]).
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: Option<std::net::IpAddr>,
    ) -> Result<(String, ApiToken), AuthError> {
        let keys = LoginThrottle::keys(username, from);
        self.login_throttle.check(&keys, Instant::now())?;
        let user = match self.verify(username, password).await {
            Ok(user) => {
                self.login_throttle.succeeded(&keys);
                user
            }
            Err(AuthError::InvalidCredentials) => {
                self.login_throttle.failed(&keys, Instant::now());
                return Err(AuthError::InvalidCredentials);
            }
            Err(e) => return Err(e),
        };
        if user.disabled {
            return Err(AuthError::Disabled(format!("user {:?}", user.name)));
        }
        let tenant_disabled = self.tenant(&user.tenant).await?.is_some_and(|t| t.disabled);
        if tenant_disabled {
            return Err(AuthError::Disabled(format!("tenant {}", user.tenant)));
        }
        let now = self.clock.now();
        self.issue(NewToken {
            scopes: user.scopes(),
            user: user.name,
            tenant: user.tenant,
            name: Some("login".into()),
            expires_at: Some(now.plus(SESSION_TTL)),
            kind: TokenKind::Session,
            agent: None,
            parent: None,
        })
        .await
    }

    /// Stores a new token and returns it in clear (the only time it exists in clear).
    pub async fn issue(&self, new: NewToken) -> Result<(String, ApiToken), AuthError> {
        let secret = format!("{}{}", new.kind.prefix(), random_secret(32));
        let token = ApiToken {
            token_hash: hash_token(&secret),
            user: new.user,
            tenant: new.tenant,
            scopes: new.scopes,
            name: new.name,
            created_at: self.clock.now(),
            expires_at: new.expires_at,
            agent: new.agent,
            kind: new.kind,
            last_used_at: None,
            parent: new.parent,
        };
        self.store.put_token(token.clone()).await?;
        Ok((secret, token))
    }

    /// Issues the short-lived token a spawned agent gets as `FABRIC_TOKEN`:
    /// scoped to that agent, with no user scopes, kept in memory only (agent
    /// processes do not outlive the server, so neither need their tokens).
    /// Returns the secret and the token (its hash revokes it when the session ends).
    pub fn issue_agent_token(
        &self,
        agent: &AgentId,
        tenant: &TenantId,
        user: &str,
        ttl: Duration,
    ) -> (String, ApiToken) {
        let secret = format!("{}{}", TokenKind::Agent.prefix(), random_secret(32));
        let hash = hash_token(&secret);
        let now = self.clock.now();
        let expires = now.plus(ttl);
        let token = ApiToken {
            token_hash: hash.clone(),
            user: user.to_owned(),
            tenant: tenant.clone(),
            scopes: Vec::new(),
            name: Some(format!("agent {agent}")),
            created_at: now,
            expires_at: Some(expires),
            agent: Some(agent.clone()),
            kind: TokenKind::Agent,
            last_used_at: None,
            parent: None,
        };
        self.cache.lock().insert(
            hash,
            Cached {
                token: token.clone(),
                stored: false,
            },
        );
        (secret, token)
    }

    /// Forgets a token issued by [`issue_agent_token`](Self::issue_agent_token).
    pub fn revoke_cached(&self, hash: &str) {
        self.cache.lock().remove(hash);
    }

    /// Drops every cached copy of a stored token `forget` picks (a deleted
    /// user's), so the next request reads the store. The in-memory tokens of
    /// running agents are not stored copies and stay.
    pub(crate) fn forget(&self, forget: impl Fn(&ApiToken) -> bool) {
        self.cache
            .lock()
            .retain(|_, c| !(c.stored && forget(&c.token)));
    }

    /// Drops expired tokens from memory (agent tokens are renewed every few
    /// minutes, so their predecessors pile up otherwise).
    pub fn purge_expired(&self) {
        let now = self.clock.now();
        self.cache.lock().retain(|_, c| !c.token.is_expired(now));
        let stale = Instant::now().checked_sub(LAST_USED_EVERY);
        self.last_used
            .lock()
            .retain(|_, at| stale.is_none_or(|stale| *at > stale));
    }

    /// Resolves a bearer token to its principal.
    pub async fn authenticate(&self, secret: &str) -> Result<Principal, AuthError> {
        let hash = hash_token(secret);
        // On a shared store only in-memory agent tokens are ever cached.
        let cached = self.cache.lock().get(&hash).cloned();
        let token = match cached {
            Some(Cached { token, stored }) => {
                if stored {
                    self.note_use(&token);
                }
                token
            }
            None => {
                let t = self
                    .store
                    .get_token(hash.clone())
                    .await?
                    .ok_or(AuthError::InvalidToken)?;
                if !self.shared_store {
                    self.cache.lock().insert(
                        hash.clone(),
                        Cached {
                            token: t.clone(),
                            stored: true,
                        },
                    );
                }
                self.note_use(&t);
                t
            }
        };
        let now = self.clock.now();
        if token.is_expired(now) {
            self.cache.lock().remove(&hash);
            return Err(AuthError::TokenExpired);
        }
        Ok(Principal {
            identity: Identity {
                user: token.user,
                tenant: token.tenant,
                scopes: token.scopes,
                agent: token.agent,
            },
            kind: token.kind,
            token_hash: hash,
        })
    }

    /// Records `last_used_at` of a stored token, at most once a minute per
    /// token, without holding up the request. The write replaces the token
    /// only if it is still stored, so it cannot undo a revocation.
    fn note_use(&self, token: &ApiToken) {
        let due = {
            let mut last = self.last_used.lock();
            let due = last
                .get(&token.token_hash)
                .is_none_or(|at| at.elapsed() >= LAST_USED_EVERY);
            if due {
                last.insert(token.token_hash.clone(), Instant::now());
            }
            due
        };
        if !due {
            return;
        }
        let mut used = token.clone();
        used.last_used_at = Some(self.clock.now());
        // The store commits it in order; nobody waits for it.
        drop(self.store.update_token(used));
    }

    /// Revokes one stored token and every token it created, theirs too.
    pub async fn revoke(&self, token_hash: &str) -> Result<bool, AuthError> {
        self.cache.lock().remove(token_hash);
        let revoked = self.store.delete_token(token_hash.to_owned()).await?;
        let tokens = self.store.list_tokens().await?;
        let mut parents = vec![fabric_core::auth::token_id(token_hash).to_owned()];
        while let Some(parent) = parents.pop() {
            for child in tokens
                .iter()
                .filter(|t| t.parent.as_deref() == Some(parent.as_str()))
            {
                self.cache.lock().remove(&child.token_hash);
                if self.store.delete_token(child.token_hash.clone()).await? {
                    parents.push(child.id().to_owned());
                }
            }
        }
        Ok(revoked)
    }

    /// When the stored or cached token `token_hash` expires (`None`: never,
    /// or no such token).
    pub async fn token_expiry(&self, token_hash: &str) -> Result<Option<Timestamp>, AuthError> {
        if let Some(cached) = self.cache.lock().get(token_hash) {
            return Ok(cached.token.expires_at);
        }
        Ok(self
            .store
            .get_token(token_hash.to_owned())
            .await?
            .and_then(|t| t.expires_at))
    }

    /// Revokes the caller's token.
    pub async fn logout(&self, principal: &Principal) -> Result<(), AuthError> {
        self.revoke(&principal.token_hash).await.map(drop)
    }
}

/// Failed logins per user name and per client address, with backoff: the
/// first [`LoginThrottle::FREE`] failures of a user name (and
/// [`LoginThrottle::FREE_PER_ADDRESS`] of an address, which may be many
/// people's) cost nothing, each one after locks the key for twice as long
/// as the one before (1 s, 2 s, 4 s, …, at most
/// [`LoginThrottle::MAX_LOCK`]). A success clears the user's count.
/// Kept in memory: a restart forgets it (a guesser loses nothing but a lock).
#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<String, (u32, Option<Instant>)>>,
}

impl LoginThrottle {
    pub const FREE: u32 = 5;
    pub const FREE_PER_ADDRESS: u32 = 20;
    pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
    /// Keys forgotten when the map grows past this (oldest locks first go
    /// with a clear: a flood of names must not grow memory without bound).
    const MAX_KEYS: usize = 100_000;

    fn keys(username: &str, from: Option<std::net::IpAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{username}")];
        if let Some(ip) = from {
            keys.push(format!("ip:{ip}"));
        }
        keys
    }

    fn check(&self, keys: &[String], now: Instant) -> Result<(), AuthError> {
        let failures = self.failures.lock();
        for key in keys {
            if let Some((_, Some(until))) = failures.get(key)
                && *until > now
            {
                let wait = until.duration_since(now);
                return Err(AuthError::TooManyAttempts {
                    who: key.replacen(':', " ", 1),
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                });
            }
        }
        Ok(())
    }

    fn failed(&self, keys: &[String], now: Instant) {
        let mut failures = self.failures.lock();
        if failures.len() > Self::MAX_KEYS {
            failures.clear();
        }
        for key in keys {
            let free = if key.starts_with("ip:") {
                Self::FREE_PER_ADDRESS
            } else {
                Self::FREE
            };
            let entry = failures.entry(key.clone()).or_insert((0, None));
            entry.0 += 1;
            if entry.0 > free {
                let doublings = (entry.0 - free - 1).min(20);
                let lock = Duration::from_secs(1 << doublings).min(Self::MAX_LOCK);
                entry.1 = Some(now + lock);
            }
        }
    }

    fn succeeded(&self, keys: &[String]) {
        // The address keeps its count: one right password does not excuse
        // guessing at other users from it.
        if let Some(user) = keys.first() {
            self.failures.lock().remove(user);
        }
    }
}

/// A new random password, for users created or reset without one.
pub(crate) fn generate_password() -> String {
    random_secret(12)
}

/// A random URL-safe secret of `bytes` random bytes (hex encoded).
pub(crate) fn random_secret(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(buf)
}

pub(crate) fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A password job for [`password_worker`].
enum PasswordJob {
    Hash(
        String,
        oneshot::Sender<Result<String, argon2::password_hash::Error>>,
    ),
    Verify {
        password: String,
        hash: String,
        reply: oneshot::Sender<bool>,
    },
}

/// Every Argon2 computation runs on this one thread. Argon2id takes 19 MiB per
/// call and glibc keeps freed memory per thread arena: on the blocking pool,
/// 16 concurrent logins left the server at 420 MB. One thread bounds both
/// memory and how many hashes run at once (a login flood queues, it does not
/// exhaust memory).
fn password_worker() -> Option<&'static std::sync::mpsc::Sender<PasswordJob>> {
    static WORKER: OnceLock<Option<std::sync::mpsc::Sender<PasswordJob>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<PasswordJob>();
            let spawned = std::thread::Builder::new()
                .name("fabric-argon2".into())
                .spawn(move || {
                    let argon2 = Argon2::default();
                    // Argon2's working memory, allocated once and reused by every verification.
                    let mut blocks: Vec<Block> = Vec::new();
                    for job in rx {
                        match job {
                            PasswordJob::Hash(password, reply) => {
                                let salt = SaltString::generate(&mut rand::rngs::OsRng);
                                let hashed = argon2
                                    .hash_password(password.as_bytes(), &salt)
                                    .map(|h| h.to_string());
                                let _ = reply.send(hashed);
                            }
                            PasswordJob::Verify {
                                password,
                                hash,
                                reply,
                            } => {
                                let _ =
                                    reply.send(verify_in(&mut blocks, password.as_bytes(), &hash));
                            }
                        }
                    }
                });
            spawned
                .map(|_| tx)
                .map_err(|e| tracing::error!(error = %e, "cannot start the password thread"))
                .ok()
        })
        .as_ref()
}

/// Largest Argon2 working memory a stored hash may ask for (in 1 KiB blocks).
const MAX_ARGON2_BLOCKS: usize = 256 * 1024;

/// Verifies `password` against a PHC string, computing in `blocks` (grown as
/// needed, never freed) instead of allocating per call.
fn verify_in(blocks: &mut Vec<Block>, password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let needed = params.block_count();
    if needed > MAX_ARGON2_BLOCKS {
        return false;
    }
    if blocks.len() < needed {
        blocks.resize(needed, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, &mut blocks[..needed])
        .is_ok()
        // `Output` compares in constant time.
        && argon2::password_hash::Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// Argon2id with the crate's default (OWASP-recommended) parameters.
pub(crate) async fn hash_password(password: String) -> Result<String, AuthError> {
    let unavailable = || AuthError::PasswordWorkerDown;
    let (reply, result) = oneshot::channel();
    password_worker()
        .ok_or_else(unavailable)?
        .send(PasswordJob::Hash(password, reply))
        .map_err(|_| unavailable())?;
    result
        .await
        .map_err(|_| unavailable())?
        .map_err(AuthError::Hash)
}

async fn verify_password(password: String, hash: String) -> bool {
    let (reply, result) = oneshot::channel();
    let Some(worker) = password_worker() else {
        return false;
    };
    if worker
        .send(PasswordJob::Verify {
            password,
            hash,
            reply,
        })
        .is_err()
    {
        return false;
    }
    result.await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_verify_only_against_their_hash() {
        let hash = hash_password("s3cret".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("s3cret"));
        assert!(verify_password("s3cret".into(), hash.clone()).await);
        assert!(!verify_password("wrong".into(), hash).await);
        assert!(!verify_password("x".into(), "not a hash".into()).await);
    }

    #[test]
    fn reused_memory_verification_agrees_with_the_library() {
        use argon2::password_hash::PasswordVerifier;
        let mut blocks = Vec::new();
        let small = Params::new(4096, 2, 1, None).unwrap();
        for argon2 in [
            Argon2::default(),
            Argon2::new(Algorithm::Argon2id, Version::V0x13, small),
        ] {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            let phc = argon2.hash_password(b"pw", &salt).unwrap().to_string();
            let parsed = PasswordHash::new(&phc).unwrap();
            assert!(argon2.verify_password(b"pw", &parsed).is_ok());
            assert!(verify_in(&mut blocks, b"pw", &phc), "{phc}");
            assert!(!verify_in(&mut blocks, b"pw2", &phc));
        }
        assert!(!verify_in(
            &mut blocks,
            b"pw",
            "$argon2id$v=19$m=999999999,t=1,p=1$c2FsdHNhbHQ$aGFzaA"
        ));
    }

    #[test]
    fn token_hash_is_stable_and_not_the_token() {
        let h = hash_token("rf_abc");
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash_token("rf_abc"));
        assert_ne!(h, hash_token("rf_abd"));
    }
}
