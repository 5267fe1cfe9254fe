//! Images without a registry: root filesystems made from host programs and the
//! shared libraries they load, imported with `docker import`.
//!
//! [`Rootfs`] collects files into a tar ([`Rootfs::program`] adds a program with
//! what `ldd` says it needs, the dynamic loader included); [`build_image`] imports
//! it. [`ensure_orchestrator_image`] does this for the running `reactor-fabric`
//! binary, tagged `reactor-fabric:VERSION-<sha256 of the binary, 12 hex>`, so a new
//! build gets a new image and an unchanged one is reused; [`build_redis_image`]
//! does it for the host's `redis-server`. [`ensure_image`] is for images users name:
//! present, else pulled, else an error that says how to provide one.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::client::DockerClient;
use crate::error::DockerError;
use crate::labels::{Component, LABEL_BINARY_SHA256, LABEL_COMPONENT, LABEL_VERSION};

/// Repository of the orchestrator images this crate builds.
pub const ORCHESTRATOR_REPO: &str = "reactor-fabric";
/// Repository of the Redis images [`build_redis_image`] builds.
pub const LOCAL_REDIS_REPO: &str = "reactor-fabric-redis";
/// Where the program sits inside the orchestrator image.
pub const ORCHESTRATOR_BINARY: &str = "/bin/reactor-fabric";
/// The port `serve` listens on inside the orchestrator image.
pub const ORCHESTRATOR_PORT: u16 = 8080;
/// The unprivileged user (nobody) images built here run as.
pub const IMAGE_UID: u64 = 65534;

/// Building an image went wrong on this side (files, `ldd`), or at the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {program} to list the libraries of {path}: {detail}")]
    Tool {
        program: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{path} needs {library}, which is not installed")]
    LibraryNotFound { path: PathBuf, library: String },
    #[error("{0}")]
    NotFound(String),
    #[error("cannot write the image archive: {0}")]
    Archive(std::io::Error),
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// A root filesystem being put together as a tar archive.
pub struct Rootfs {
    tar: tar::Builder<Vec<u8>>,
    entries: BTreeSet<String>,
}

impl std::fmt::Debug for Rootfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rootfs")
            .field("entries", &self.entries)
            .finish()
    }
}

impl Default for Rootfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Rootfs {
    pub fn new() -> Rootfs {
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        Rootfs {
            tar,
            entries: BTreeSet::new(),
        }
    }

    /// Adds directory `path` (absolute in the image) and any missing parents (root, 0755).
    pub fn dir(&mut self, path: &str, mode: u32, uid: u64) -> Result<(), ImageError> {
        let rel = relative(path);
        if rel.is_empty() {
            return Ok(());
        }
        self.parents(&rel)?;
        if self.entries.insert(rel.clone()) {
            let mut header = header(tar::EntryType::Directory, 0, mode, uid);
            self.tar
                .append_data(&mut header, format!("{rel}/"), std::io::empty())
                .map_err(ImageError::Archive)?;
        }
        Ok(())
    }

    /// Adds a regular file with `contents` at `path`.
    pub fn file(
        &mut self,
        path: &str,
        contents: &[u8],
        mode: u32,
        uid: u64,
    ) -> Result<(), ImageError> {
        let rel = relative(path);
        if !self.entries.insert(rel.clone()) {
            return Ok(());
        }
        self.parents(&rel)?;
        let mut header = header(tar::EntryType::Regular, contents.len() as u64, mode, uid);
        self.tar
            .append_data(&mut header, rel, contents)
            .map_err(ImageError::Archive)
    }

    /// Adds a symbolic link at `path` pointing to `target` (as written, relative or absolute).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        let rel = relative(path);
        if !self.entries.insert(rel.clone()) {
            return Ok(());
        }
        self.parents(&rel)?;
        let mut header = header(tar::EntryType::Symlink, 0, 0o777, 0);
        self.tar
            .append_link(&mut header, rel, target)
            .map_err(ImageError::Archive)
    }

    /// Adds the host file `host` (symlinks followed) at `path`, keeping its permission bits.
    pub fn host_file(&mut self, host: &Path, path: &str) -> Result<(), ImageError> {
        let contents = std::fs::read(host).map_err(|source| ImageError::Read {
            path: host.to_owned(),
            source,
        })?;
        let mode = std::fs::metadata(host)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o755);
        self.file(path, &contents, mode, 0)
    }

    /// Adds the program `host` at `path` plus every shared library it loads (at the
    /// paths `ldd` resolves them to, which is where the loader looks without a cache).
    pub fn program(&mut self, host: &Path, path: &str) -> Result<(), ImageError> {
        self.host_file(host, path)?;
        self.libraries_of(host)
    }

    /// Adds the shared libraries `host` loads, and the dynamic loader.
    pub fn libraries_of(&mut self, host: &Path) -> Result<(), ImageError> {
        for lib in shared_libraries(host)? {
            let in_image = lib.to_string_lossy().into_owned();
            self.host_file(&lib, &in_image)?;
        }
        Ok(())
    }

    /// A `/etc/passwd` and `/etc/group` with root and nobody, so tools that look users up work.
    pub fn users(&mut self) -> Result<(), ImageError> {
        self.file(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
            0o644,
            0,
        )?;
        self.file("/etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644, 0)
    }

    /// The finished tar.
    pub fn finish(self) -> Result<Vec<u8>, ImageError> {
        self.tar.into_inner().map_err(ImageError::Archive)
    }

    fn parents(&mut self, rel: &str) -> Result<(), ImageError> {
        let mut prefix = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.entries.insert(prefix.clone()) {
                let mut header = header(tar::EntryType::Directory, 0, 0o755, 0);
                self.tar
                    .append_data(&mut header, format!("{prefix}/"), std::io::empty())
                    .map_err(ImageError::Archive)?;
            }
        }
        Ok(())
    }
}

fn relative(path: &str) -> String {
    path.trim_matches('/').to_owned()
}

fn header(kind: tar::EntryType, size: u64, mode: u32, uid: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(0);
    h
}

/// The shared libraries `program` loads, the dynamic loader included, as `ldd` resolves
/// them; empty for a static binary.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| ImageError::Tool {
            program: "ldd",
            path: program.to_owned(),
            detail: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // glibc's ldd exits 1 for static binaries: nothing to add.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(ImageError::Tool {
            program: "ldd",
            path: program.to_owned(),
            detail: stderr.trim().to_owned(),
        });
    }
    parse_ldd(program, &stdout)
}

fn parse_ldd(program: &Path, output: &str) -> Result<Vec<PathBuf>, ImageError> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim) {
        let target = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.trim() == "not found" {
                    return Err(ImageError::LibraryNotFound {
                        path: program.to_owned(),
                        library: name.trim().to_owned(),
                    });
                }
                rest
            }
            None => line,
        };
        // `/lib/x/libc.so.6 (0x…)`; the vDSO has no path and `statically linked` none either.
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let read_err = |source| ImageError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What an image is, beside its files.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    pub repo: String,
    pub tag: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `uid:gid` it runs as.
    pub user: Option<String>,
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
    pub expose: Vec<u16>,
}

impl ImageSpec {
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }

    /// The Dockerfile instructions `docker import --change` applies.
    fn changes(&self) -> Vec<String> {
        let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned());
        let mut changes = Vec::new();
        if !self.entrypoint.is_empty() {
            changes.push(format!("ENTRYPOINT {}", json(&self.entrypoint)));
        }
        if !self.cmd.is_empty() {
            changes.push(format!("CMD {}", json(&self.cmd)));
        }
        if let Some(user) = &self.user {
            changes.push(format!("USER {user}"));
        }
        for (k, v) in &self.env {
            changes.push(format!("ENV {k}={v}"));
        }
        for (k, v) in &self.labels {
            changes.push(format!("LABEL {k}={v}"));
        }
        for port in &self.expose {
            changes.push(format!("EXPOSE {port}/tcp"));
        }
        changes
    }
}

/// How an image came to be there.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageReady {
    /// `repo:tag`.
    pub image: String,
    /// Built (or pulled) just now, rather than found.
    pub built: bool,
    /// Size of the root filesystem archive, when built.
    pub size_bytes: Option<u64>,
    #[serde(serialize_with = "millis")]
    pub took: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Imports `rootfs` as the image `spec` describes.
pub async fn build_image(
    client: &DockerClient,
    spec: &ImageSpec,
    rootfs: Vec<u8>,
) -> Result<(), ImageError> {
    tracing::info!(image = %spec.reference(), bytes = rootfs.len(), "importing image");
    client
        .import_image(&spec.repo, &spec.tag, spec.changes(), rootfs)
        .await?;
    Ok(())
}

/// Builds the root filesystem with `rootfs` (blocking work, off the async
/// workers), imports it as `spec`, and reports the build.
pub async fn build_from(
    client: &DockerClient,
    spec: &ImageSpec,
    started: Instant,
    rootfs: impl FnOnce() -> Result<Vec<u8>, ImageError> + Send + 'static,
) -> Result<ImageReady, ImageError> {
    let rootfs = tokio::task::spawn_blocking(rootfs)
        .await
        .map_err(|e| ImageError::Archive(std::io::Error::other(e.to_string())))??;
    let size = rootfs.len() as u64;
    build_image(client, spec, rootfs).await?;
    Ok(ImageReady {
        image: spec.reference(),
        built: true,
        size_bytes: Some(size),
        took: started.elapsed(),
    })
}

/// The orchestrator image for `binary` (this very `reactor-fabric`): found by its
/// tag, or built now from the binary, `/bin/sh` (the built-in shell agent runs
/// tasks with it) and their libraries. Debug info is stripped on the way in when
/// binutils' `strip` is installed (halves a debug build; symbols stay for backtraces).
pub async fn ensure_orchestrator_image(
    client: &DockerClient,
    binary: &Path,
) -> Result<ImageReady, ImageError> {
    let started = Instant::now();
    let hash = sha256_file(binary)?;
    let spec = orchestrator_spec(&hash);
    if client.inspect_image(&spec.reference()).await?.is_some() {
        return Ok(ImageReady {
            image: spec.reference(),
            built: false,
            size_bytes: None,
            took: started.elapsed(),
        });
    }
    let binary = binary.to_owned();
    build_from(client, &spec, started, move || orchestrator_rootfs(&binary)).await
}

fn orchestrator_spec(binary_sha256: &str) -> ImageSpec {
    let short = binary_sha256.get(..12).unwrap_or(binary_sha256);
    ImageSpec {
        repo: ORCHESTRATOR_REPO.to_owned(),
        tag: format!("{}-{short}", fabric_version()),
        entrypoint: vec![ORCHESTRATOR_BINARY.to_owned()],
        cmd: [
            "serve",
            "--listen",
            &format!("0.0.0.0:{ORCHESTRATOR_PORT}"),
            "--data-dir",
            "/data",
        ]
        .map(str::to_owned)
        .to_vec(),
        user: Some(format!("{IMAGE_UID}:{IMAGE_UID}")),
        env: vec![("PATH".to_owned(), "/bin".to_owned())],
        labels: vec![
            (
                LABEL_COMPONENT.to_owned(),
                Component::Orchestrator.as_str().to_owned(),
            ),
            (LABEL_VERSION.to_owned(), fabric_version().to_owned()),
            (LABEL_BINARY_SHA256.to_owned(), binary_sha256.to_owned()),
        ],
        expose: vec![ORCHESTRATOR_PORT],
    }
}

/// This crate's version, which is the workspace's (the binary's) version.
fn fabric_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn orchestrator_rootfs(binary: &Path) -> Result<Vec<u8>, ImageError> {
    let mut fs = Rootfs::new();
    let stripped = strip_debug(binary);
    let source = stripped.as_deref().unwrap_or(binary);
    fs.host_file(source, ORCHESTRATOR_BINARY)?;
    if let Some(path) = &stripped {
        let _ = std::fs::remove_file(path);
    }
    fs.libraries_of(binary)?;
    let sh = std::fs::canonicalize("/bin/sh").map_err(|source| ImageError::Read {
        path: "/bin/sh".into(),
        source,
    })?;
    fs.program(&sh, "/bin/sh")?;
    fs.users()?;
    fs.dir("/tmp", 0o1777, 0)?;
    fs.dir("/data", 0o700, IMAGE_UID)?;
    fs.dir("/run/fabric", 0o700, IMAGE_UID)?;
    // The socket volume's mount point: a new volume takes its owner, so the
    // orchestrator and its sidecars (both nobody) can use it.
    fs.dir(crate::instance::SOCKET_DIR, 0o700, IMAGE_UID)?;
    fs.finish()
}

/// A copy of `binary` without debug info, in the temp dir; `None` when `strip` is
/// missing or fails (the image then takes the binary as it is).
fn strip_debug(binary: &Path) -> Option<PathBuf> {
    let out = std::env::temp_dir().join(format!(
        "reactor-fabric-image-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let status = std::process::Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    if status.success() {
        Some(out)
    } else {
        let _ = std::fs::remove_file(&out);
        None
    }
}

/// Repository of the default agent image ([`ensure_agent_image`]).
pub const AGENT_REPO: &str = "reactor-fabric-agent";
/// The agent's writable working directory in agent images (a volume is mounted there).
pub const AGENT_WORKSPACE: &str = "/workspace";
/// Where a static busybox is looked for on the host (Debian's `busybox-static`).
const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];
/// Host programs the default agent image takes when there is no static busybox:
/// a shell and the basic tools; missing ones are skipped, except the first three,
/// which running commands in the container needs (`sh -c`, `setsid`, `sleep`).
const AGENT_PROGRAMS: [&str; 32] = [
    "sh", "setsid", "sleep", "cat", "ls", "id", "head", "tail", "tr", "mkdir", "rm", "cp", "mv",
    "env", "echo", "wc", "grep", "sed", "printf", "test", "true", "false", "touch", "date", "find",
    "sort", "uniq", "cut", "dd", "chmod", "ln", "kill",
];

/// The default agent image: a shell and basic tools, for the built-in shell
/// agent at isolation `container` (and agents with a `command` but no `image`).
///
/// Made from the host's static busybox (Debian `busybox-static`: one 2 MB binary,
/// every applet linked to it) when there is one, else from the host's `sh`,
/// coreutils and their libraries. Tagged `reactor-fabric-agent:<sha256 of the
/// root filesystem, 12 hex>`, so it is built once per content and reused.
pub async fn ensure_agent_image(client: &DockerClient) -> Result<ImageReady, ImageError> {
    let started = Instant::now();
    let rootfs = tokio::task::spawn_blocking(agent_rootfs)
        .await
        .map_err(|e| ImageError::Archive(std::io::Error::other(e.to_string())))??;
    let hash = hex::encode(Sha256::digest(&rootfs));
    let spec = agent_spec(&hash);
    if client.inspect_image(&spec.reference()).await?.is_some() {
        return Ok(ImageReady {
            image: spec.reference(),
            built: false,
            size_bytes: None,
            took: started.elapsed(),
        });
    }
    let size = rootfs.len() as u64;
    build_image(client, &spec, rootfs).await?;
    Ok(ImageReady {
        image: spec.reference(),
        built: true,
        size_bytes: Some(size),
        took: started.elapsed(),
    })
}

fn agent_spec(rootfs_sha256: &str) -> ImageSpec {
    let short = rootfs_sha256.get(..12).unwrap_or(rootfs_sha256);
    ImageSpec {
        repo: AGENT_REPO.to_owned(),
        tag: short.to_owned(),
        entrypoint: Vec::new(),
        cmd: ["/bin/sleep", "infinity"].map(str::to_owned).to_vec(),
        user: Some(format!("{IMAGE_UID}:{IMAGE_UID}")),
        env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
        labels: vec![
            (
                LABEL_COMPONENT.to_owned(),
                Component::Agent.as_str().to_owned(),
            ),
            (LABEL_VERSION.to_owned(), fabric_version().to_owned()),
        ],
        expose: Vec::new(),
    }
}

fn agent_rootfs() -> Result<Vec<u8>, ImageError> {
    let mut fs = Rootfs::new();
    let busybox = BUSYBOX_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.exists() && shared_libraries(p).is_ok_and(|libs| libs.is_empty()));
    match busybox {
        Some(path) => {
            fs.host_file(path, "/bin/busybox")?;
            for applet in busybox_applets(path)? {
                if applet != "busybox" {
                    fs.symlink(&format!("/bin/{applet}"), "busybox")?;
                }
            }
        }
        None => {
            for (i, name) in AGENT_PROGRAMS.iter().enumerate() {
                match find_program(name) {
                    Some(host) => fs.program(&host, &format!("/bin/{name}"))?,
                    None if i < 3 => {
                        return Err(ImageError::NotFound(format!(
                            "the default agent image needs {name} on this machine: install                              busybox-static (or coreutils and util-linux)"
                        )));
                    }
                    None => {}
                }
            }
        }
    }
    fs.users()?;
    fs.dir("/tmp", 0o1777, 0)?;
    fs.dir("/run", 0o755, 0)?;
    fs.dir(AGENT_WORKSPACE, 0o755, IMAGE_UID)?;
    fs.finish()
}

/// The applets a busybox binary offers (`busybox --list`), in its order.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let out = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| ImageError::Tool {
            program: "busybox",
            path: busybox.to_owned(),
            detail: e.to_string(),
        })?;
    let list: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    if !out.status.success() || !list.iter().any(|a| a == "sh") {
        return Err(ImageError::Tool {
            program: "busybox",
            path: busybox.to_owned(),
            detail: "busybox --list did not name a shell".to_owned(),
        });
    }
    Ok(list)
}

/// `name` in the usual system directories, symlinks resolved (what `ldd` needs).
fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// A Redis image from the host's `redis-server` (and `redis-cli`, which readiness
/// checks use): `reactor-fabric-redis:<redis version>` unless `tag` says otherwise.
/// Reused when an image of that tag was built from the same binary.
pub async fn build_redis_image(
    client: &DockerClient,
    redis_server: &Path,
    tag: Option<&str>,
) -> Result<ImageReady, ImageError> {
    let started = Instant::now();
    let server = std::fs::canonicalize(redis_server).map_err(|source| ImageError::Read {
        path: redis_server.to_owned(),
        source,
    })?;
    let cli = redis_server.with_file_name("redis-cli");
    if !cli.exists() {
        return Err(ImageError::NotFound(format!(
            "{} not found beside redis-server: install redis-tools",
            cli.display()
        )));
    }
    let hash = sha256_file(&server)?;
    let (repo, tag) = match tag {
        Some(t) => match t.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo.to_owned(), tag.to_owned()),
            _ => (t.to_owned(), "latest".to_owned()),
        },
        None => (LOCAL_REDIS_REPO.to_owned(), redis_version(redis_server)?),
    };
    let spec = ImageSpec {
        repo,
        tag,
        entrypoint: Vec::new(),
        cmd: ["redis-server", "--dir", "/data", "--protected-mode", "no"]
            .map(str::to_owned)
            .to_vec(),
        user: Some(format!("{IMAGE_UID}:{IMAGE_UID}")),
        env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
        labels: vec![(LABEL_BINARY_SHA256.to_owned(), hash.clone())],
        expose: vec![6379],
    };
    if let Some(existing) = client.inspect_image(&spec.reference()).await? {
        let same = existing
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(LABEL_BINARY_SHA256).cloned())
            .is_some_and(|h| h == hash);
        if same {
            return Ok(ImageReady {
                image: spec.reference(),
                built: false,
                size_bytes: None,
                took: started.elapsed(),
            });
        }
    }
    build_from(client, &spec, started, move || {
        let mut fs = Rootfs::new();
        // redis-server is a link to redis-check-rdb: the name it runs under picks the mode.
        fs.program(&server, "/usr/bin/redis-server")?;
        fs.program(&cli, "/usr/bin/redis-cli")?;
        fs.users()?;
        fs.dir("/tmp", 0o1777, 0)?;
        fs.dir("/data", 0o700, IMAGE_UID)?;
        fs.finish()
    })
    .await
}

/// `7.0.15` from `redis-server --version` (`Redis server v=7.0.15 sha=…`).
fn redis_version(redis_server: &Path) -> Result<String, ImageError> {
    let out = std::process::Command::new(redis_server)
        .arg("--version")
        .output()
        .map_err(|e| ImageError::Tool {
            program: "redis-server",
            path: redis_server.to_owned(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map(str::to_owned)
        .ok_or_else(|| ImageError::Tool {
            program: "redis-server",
            path: redis_server.to_owned(),
            detail: format!("unexpected --version output {:?}", text.trim()),
        })
}

/// Makes sure `image` is on this machine: present, or pulled. When it is neither,
/// [`DockerError::ImageMissing`] with `hint` (how to provide one).
pub async fn ensure_image(
    client: &DockerClient,
    image: &str,
    hint: &str,
) -> Result<ImageReady, DockerError> {
    let started = Instant::now();
    if client.inspect_image(image).await?.is_some() {
        return Ok(ImageReady {
            image: image.to_owned(),
            built: false,
            size_bytes: None,
            took: started.elapsed(),
        });
    }
    match client.pull_image(image).await {
        Ok(()) => Ok(ImageReady {
            image: image.to_owned(),
            built: true,
            size_bytes: None,
            took: started.elapsed(),
        }),
        Err(e @ DockerError::DaemonUnreachable { .. }) => Err(e),
        Err(e) => Err(DockerError::ImageMissing {
            image: image.to_owned(),
            reason: pull_reason(&e),
            hint: hint.to_owned(),
        }),
    }
}

/// The gist of a failed pull, without the daemon's long preamble.
fn pull_reason(err: &DockerError) -> String {
    let text = match err {
        DockerError::Other { message, .. } | DockerError::NotFound { message } => message.clone(),
        other => other.to_string(),
    };
    let text = text.trim();
    let short: String = text.chars().take(160).collect();
    if short.len() < text.len() {
        format!("{short}…")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2e)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f2e)\n";
        let libs = parse_ldd(Path::new("/bin/x"), out).unwrap();
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        let missing = parse_ldd(Path::new("/bin/x"), "\tlibfoo.so.1 => not found\n");
        assert!(
            matches!(missing, Err(ImageError::LibraryNotFound { library, .. }) if library == "libfoo.so.1")
        );
        assert!(
            parse_ldd(Path::new("/bin/x"), "\tstatically linked\n")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_real_shell_has_a_loader() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let libs = shared_libraries(&sh).unwrap();
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }

    #[test]
    fn rootfs_has_parents_owners_and_modes() {
        let mut fs = Rootfs::new();
        fs.file("/a/b/c.txt", b"hi", 0o600, 7).unwrap();
        fs.dir("/data", 0o700, IMAGE_UID).unwrap();
        fs.dir("/a", 0o755, 0).unwrap();
        let bytes = fs.finish().unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("a/".to_owned(), 0o755, 0),
                ("a/b/".to_owned(), 0o755, 0),
                ("a/b/c.txt".to_owned(), 0o600, 7),
                ("data/".to_owned(), 0o700, IMAGE_UID),
            ]
        );
    }

    #[test]
    fn orchestrator_tags_carry_version_and_hash() {
        let spec = orchestrator_spec("0123456789abcdef0123");
        assert_eq!(
            spec.reference(),
            format!("reactor-fabric:{}-0123456789ab", fabric_version())
        );
        let changes = spec.changes();
        assert!(changes.contains(&"ENTRYPOINT [\"/bin/reactor-fabric\"]".to_owned()));
        assert!(changes.contains(&"USER 65534:65534".to_owned()));
        assert!(
            changes
                .iter()
                .any(|c| c.starts_with("LABEL io.reactor-fabric.binary-sha256="))
        );
    }
}
