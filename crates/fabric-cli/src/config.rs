//! Which server to talk to and with which token: flags, then `FABRIC_*` env, then the config file.
//!
//! The file (`$XDG_CONFIG_HOME/reactor-fabric/config.toml`, else
//! `$HOME/.config/reactor-fabric/config.toml`, or `$FABRIC_CONFIG`) holds the last
//! login: `url`, `token`, `user`; and, kubectl-style, named *contexts*, each
//! a server with its own login (`[contexts.NAME]`), and the one in use
//! (`current_context`; `--context` or `FABRIC_CONTEXT` pick another for one
//! command). Without contexts the top-level login is used. It holds
//! secrets, so it is written with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Overrides the config file path (tests, several logins side by side).
pub const ENV_CONFIG: &str = "FABRIC_CONFIG";
pub const ENV_URL: &str = "FABRIC_URL";
pub const ENV_TOKEN: &str = "FABRIC_TOKEN";
pub const ENV_CONTEXT: &str = "FABRIC_CONTEXT";
pub const ENV_XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
pub const ENV_XDG_DATA_HOME: &str = "XDG_DATA_HOME";
pub const ENV_HOME: &str = "HOME";

/// Where the CLI looks for a server when nothing says otherwise (the `serve` default).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Looks up an environment variable; tests pass a map instead of the process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, with empty values treated as unset.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// Why the configuration could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot find the config directory: set HOME, XDG_CONFIG_HOME or FABRIC_CONFIG")]
    NoConfigDir,
    #[error(
        "cannot find the data directory: set --data-dir, FABRIC_DATA_DIR, XDG_DATA_HOME or HOME"
    )]
    NoDataDir,
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("cannot write config file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid server url {url:?}: {reason} (expected e.g. {DEFAULT_URL})")]
    InvalidUrl { url: String, reason: String },
    #[error("no context named {name:?} in {}: {}", path.display(), known_contexts(known))]
    UnknownContext {
        name: String,
        path: PathBuf,
        known: Vec<String>,
    },
}

fn known_contexts(known: &[String]) -> String {
    if known.is_empty() {
        "there are none yet; make one with 'reactor-fabric config set-context NAME --url URL'"
            .into()
    } else {
        format!("the contexts are {}", known.join(", "))
    }
}

/// The config file as stored. Every field is optional: an absent file is an empty one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Server used when neither `--url` nor `FABRIC_URL` is given; also the server `token` belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Bearer token of the last `auth login`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Who logged in (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The context used when no `--context` or `FABRIC_CONTEXT` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Named servers, each with its own login.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub contexts: std::collections::BTreeMap<String, Login>,
}

/// A server and the login kept for it: the top level of the file, or a context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The Docker instance `start` made this context for: its `down` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl FileConfig {
    /// The login of `context`, or the top-level one.
    pub fn login(&self, context: Option<&str>) -> Login {
        match context {
            Some(name) => self.contexts.get(name).cloned().unwrap_or_default(),
            None => Login {
                url: self.url.clone(),
                token: self.token.clone(),
                user: self.user.clone(),
                instance: None,
            },
        }
    }

    /// Replaces the login of `context`, or the top-level one.
    pub fn set_login(&mut self, context: Option<&str>, login: Login) {
        match context {
            Some(name) => {
                self.contexts.insert(name.to_owned(), login);
            }
            None => {
                self.url = login.url;
                self.token = login.token;
                self.user = login.user;
            }
        }
    }

    /// Reads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })
    }

    /// Writes `path` atomically (temp file + rename) with mode 0600, creating its directory (0700).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write_err = |source| ConfigError::Write {
            path: path.to_owned(),
            source,
        };
        let text = toml::to_string(self).map_err(|e| write_err(std::io::Error::other(e)))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir).map_err(write_err)?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut file = open_private(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Creates `dir` (and parents) readable by the owner only, when it does not exist yet.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// `$FABRIC_CONFIG`, else `$XDG_CONFIG_HOME/reactor-fabric/config.toml`, else `$HOME/.config/...`.
pub fn config_path(env: EnvLookup<'_>) -> Result<PathBuf, ConfigError> {
    if let Some(path) = env(ENV_CONFIG) {
        return Ok(PathBuf::from(path));
    }
    // The XDG spec says relative values are invalid and must be ignored.
    let base = env(ENV_XDG_CONFIG_HOME)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env(ENV_HOME).map(|h| Path::new(&h).join(".config")))
        .ok_or(ConfigError::NoConfigDir)?;
    Ok(base.join("reactor-fabric").join("config.toml"))
}

/// `$XDG_DATA_HOME/reactor-fabric`, else `$HOME/.local/share/reactor-fabric` (the `serve` default).
pub fn default_data_dir(env: EnvLookup<'_>) -> Result<PathBuf, ConfigError> {
    let base = env(ENV_XDG_DATA_HOME)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env(ENV_HOME).map(|h| Path::new(&h).join(".local").join("share")))
        .ok_or(ConfigError::NoDataDir)?;
    Ok(base.join("reactor-fabric"))
}

/// Checks that `url` is an http(s) URL and returns it without a trailing slash.
pub fn normalize_url(url: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if parsed.host_str().is_none() {
        return Err(invalid("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("no query or fragment allowed"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// Where the bearer token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `FABRIC_TOKEN`.
    Env(String),
    /// The stored login, for this very server.
    Login(String),
    /// Nothing usable; `stored_for` names the server a stored login belongs to, if another one.
    Missing { stored_for: Option<String> },
}

/// The resolved client settings of one invocation.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Server base URL, without a trailing slash.
    pub url: String,
    pub token: TokenSource,
    pub config_path: PathBuf,
    /// The file as loaded (login and logout edit and save it).
    pub file: FileConfig,
    /// The context in use (`--context`, `FABRIC_CONTEXT`, `current_context`);
    /// `None`: the file's top-level login.
    pub context: Option<String>,
    /// The login of that context (or the top level), as loaded.
    pub login: Login,
}

impl ClientSettings {
    /// Resolves flag > env > context (or the file's top level) > default for
    /// the URL, and `FABRIC_TOKEN` > that login's token for the token.
    pub fn resolve(
        flag_url: Option<&str>,
        flag_context: Option<&str>,
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let config_path = config_path(env)?;
        let file = FileConfig::load(&config_path)?;
        Self::from_parts(flag_url, flag_context, env, config_path, file)
    }

    fn from_parts(
        flag_url: Option<&str>,
        flag_context: Option<&str>,
        env: EnvLookup<'_>,
        config_path: PathBuf,
        file: FileConfig,
    ) -> Result<Self, ConfigError> {
        let context = flag_context
            .map(str::to_owned)
            .or_else(|| env(ENV_CONTEXT))
            .or_else(|| file.current_context.clone());
        if let Some(name) = &context
            && !file.contexts.contains_key(name)
        {
            return Err(ConfigError::UnknownContext {
                name: name.clone(),
                path: config_path,
                known: file.contexts.keys().cloned().collect(),
            });
        }
        let login = file.login(context.as_deref());
        let raw_url = flag_url
            .map(str::to_owned)
            .or_else(|| env(ENV_URL))
            .or_else(|| login.url.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let url = normalize_url(&raw_url)?;
        let token = match (env(ENV_TOKEN), stored_token_for(&login, &url)) {
            (Some(t), _) => TokenSource::Env(t),
            (None, Ok(t)) => TokenSource::Login(t.to_owned()),
            (None, Err(stored_for)) => TokenSource::Missing { stored_for },
        };
        Ok(Self {
            url,
            token,
            config_path,
            file,
            context,
            login,
        })
    }

    /// The stored login's token when it belongs to this server, whatever `FABRIC_TOKEN` says.
    pub fn stored_token(&self) -> Option<&str> {
        stored_token_for(&self.login, &self.url).ok()
    }

    /// The file with `login` stored where this invocation's login lives
    /// (its context, or the top level), ready to save.
    pub fn file_with_login(&self, login: Login) -> FileConfig {
        let mut file = self.file.clone();
        // Logging in again keeps what made the context (its instance).
        let instance = login.instance.or_else(|| self.login.instance.clone());
        file.set_login(self.context.as_deref(), Login { instance, ..login });
        file
    }

    /// The token, if there is one.
    pub fn token(&self) -> Option<&str> {
        match &self.token {
            TokenSource::Env(t) | TokenSource::Login(t) => Some(t),
            TokenSource::Missing { .. } => None,
        }
    }
}

/// The file's token if it was issued by `url`; else the server it belongs to (if any).
///
/// A stored token is only sent to the server that issued it: `--url` pointing
/// elsewhere must not leak it. A file without `url` predates that rule; trust it.
fn stored_token_for<'a>(login: &'a Login, url: &str) -> Result<&'a str, Option<String>> {
    let token = login.token.as_deref().ok_or(None)?;
    match login.url.as_deref().map(normalize_url) {
        None => Ok(token),
        Some(Ok(stored)) if stored == url => Ok(token),
        Some(Ok(stored)) => Err(Some(stored)),
        Some(Err(_)) => Err(login.url.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(flag: Option<&str>, pairs: &[(&str, &str)], file: FileConfig) -> ClientSettings {
        let env = env_of(pairs);
        ClientSettings::from_parts(flag, None, &env, PathBuf::from("/x/config.toml"), file).unwrap()
    }

    #[test]
    fn config_path_prefers_fabric_config_then_xdg_then_home() {
        let env = env_of(&[
            ("FABRIC_CONFIG", "/a/c.toml"),
            ("XDG_CONFIG_HOME", "/xdg"),
            ("HOME", "/home/u"),
        ]);
        assert_eq!(config_path(&env).unwrap(), PathBuf::from("/a/c.toml"));
        let env = env_of(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/home/u")]);
        assert_eq!(
            config_path(&env).unwrap(),
            PathBuf::from("/xdg/reactor-fabric/config.toml")
        );
        let env = env_of(&[("XDG_CONFIG_HOME", "relative"), ("HOME", "/home/u")]);
        assert_eq!(
            config_path(&env).unwrap(),
            PathBuf::from("/home/u/.config/reactor-fabric/config.toml")
        );
        assert!(matches!(
            config_path(&env_of(&[])),
            Err(ConfigError::NoConfigDir)
        ));
    }

    #[test]
    fn data_dir_defaults_follow_xdg() {
        let env = env_of(&[("XDG_DATA_HOME", "/d"), ("HOME", "/home/u")]);
        assert_eq!(
            default_data_dir(&env).unwrap(),
            PathBuf::from("/d/reactor-fabric")
        );
        let env = env_of(&[("HOME", "/home/u")]);
        assert_eq!(
            default_data_dir(&env).unwrap(),
            PathBuf::from("/home/u/.local/share/reactor-fabric")
        );
    }

    #[test]
    fn url_precedence_is_flag_env_file_default() {
        let file = FileConfig {
            url: Some("http://file:1".into()),
            ..Default::default()
        };
        let env = [("FABRIC_URL", "http://env:2")];
        assert_eq!(
            resolve(Some("http://flag:3/"), &env, file.clone()).url,
            "http://flag:3"
        );
        assert_eq!(resolve(None, &env, file.clone()).url, "http://env:2");
        assert_eq!(resolve(None, &[], file).url, "http://file:1");
        assert_eq!(resolve(None, &[], FileConfig::default()).url, DEFAULT_URL);
    }

    #[test]
    fn token_precedence_is_env_then_stored_login_for_the_same_server() {
        let file = FileConfig {
            url: Some("http://h:1/".into()),
            token: Some("stored".into()),
            user: Some("admin".into()),
            ..Default::default()
        };
        let s = resolve(None, &[("FABRIC_TOKEN", "from-env")], file.clone());
        assert_eq!(s.token, TokenSource::Env("from-env".into()));
        let s = resolve(None, &[], file.clone());
        assert_eq!(s.token(), Some("stored"));
        // The stored token is never sent to a different server.
        let s = resolve(Some("http://other:2"), &[], file);
        assert_eq!(
            s.token,
            TokenSource::Missing {
                stored_for: Some("http://h:1".into())
            }
        );
        assert_eq!(resolve(None, &[], FileConfig::default()).token(), None);
    }

    #[test]
    fn a_context_supplies_url_and_token_and_the_flag_env_and_file_pick_it() {
        let file = FileConfig {
            url: Some("http://top:1".into()),
            token: Some("top-token".into()),
            current_context: Some("a".into()),
            contexts: [
                (
                    "a".to_owned(),
                    Login {
                        url: Some("http://a:1".into()),
                        token: Some("ta".into()),
                        user: None,
                        instance: None,
                    },
                ),
                (
                    "b".to_owned(),
                    Login {
                        url: Some("http://b:1".into()),
                        token: Some("tb".into()),
                        user: None,
                        instance: None,
                    },
                ),
            ]
            .into(),
            ..Default::default()
        };
        let pick = |flag: Option<&str>, env: &[(&str, &str)]| {
            let env = env_of(env);
            ClientSettings::from_parts(None, flag, &env, PathBuf::from("/x/c.toml"), file.clone())
        };
        let s = pick(None, &[]).unwrap();
        assert_eq!((s.url.as_str(), s.token()), ("http://a:1", Some("ta")));
        let s = pick(None, &[("FABRIC_CONTEXT", "b")]).unwrap();
        assert_eq!((s.url.as_str(), s.token()), ("http://b:1", Some("tb")));
        let s = pick(Some("a"), &[("FABRIC_CONTEXT", "b")]).unwrap();
        assert_eq!(s.context.as_deref(), Some("a"), "the flag wins");
        // FABRIC_URL still wins over the context's URL (and its token stays home).
        let s = pick(None, &[("FABRIC_URL", "http://elsewhere:9")]).unwrap();
        assert_eq!((s.url.as_str(), s.token()), ("http://elsewhere:9", None));
        let err = pick(Some("c"), &[]).unwrap_err().to_string();
        assert!(
            err.contains("no context named \"c\"") && err.contains("a, b"),
            "{err}"
        );
        // A login stored by this invocation goes to its context, not the top level.
        let s = pick(Some("b"), &[]).unwrap();
        let saved = s.file_with_login(Login {
            url: Some("http://b:1".into()),
            token: Some("new".into()),
            user: None,
            instance: None,
        });
        assert_eq!(saved.contexts["b"].token.as_deref(), Some("new"));
        assert_eq!(saved.token.as_deref(), Some("top-token"));
    }

    #[test]
    fn bad_urls_are_rejected() {
        for bad in ["127.0.0.1:8080", "ftp://h", "http://", "http://h/?x=1"] {
            assert!(normalize_url(bad).is_err(), "{bad}");
        }
        assert_eq!(normalize_url("http://h:8080/").unwrap(), "http://h:8080");
        assert_eq!(
            normalize_url("http://h/prefix/").unwrap(),
            "http://h/prefix"
        );
    }

    #[test]
    fn file_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("config.toml");
        assert_eq!(FileConfig::load(&path).unwrap(), FileConfig::default());
        let cfg = FileConfig {
            url: Some("http://h:1".into()),
            token: Some("t".into()),
            user: Some("u".into()),
            current_context: Some("prod".into()),
            contexts: [(
                "prod".to_owned(),
                Login {
                    url: Some("https://prod:8443".into()),
                    token: Some("p".into()),
                    user: None,
                    instance: Some("prod".into()),
                },
            )]
            .into(),
        };
        cfg.save(&path).unwrap();
        assert_eq!(FileConfig::load(&path).unwrap(), cfg);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("invalid config file"), "{err}");
    }
}
