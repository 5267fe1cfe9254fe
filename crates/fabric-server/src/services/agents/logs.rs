//! What agents' programs write (`agent logs`): the last lines of each
//! agent's stdout and stderr, kept in memory across its sessions and in a
//! size-capped file per agent (`<data dir>/agent-logs/<id>.log`, JSON lines,
//! one older generation `.log.1`), so a crash-looping agent's reason is
//! still there after the fabric restarts. Live lines also go to followers
//! (`agent logs -f`, the dashboard).
//!
//! Host and sandbox programs are read through pipes as they write; each line
//! also goes to the fabric's log as before. A container's main process
//! writes to Docker's log, read when asked.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};

use fabric_core::api::ProgramLogLine;
use fabric_core::{AgentId, Timestamp};
use fabric_docker::DockerClient;
use parking_lot::Mutex;
use tokio::sync::broadcast;

/// Lines kept per agent in memory.
pub const KEPT_LINES: usize = 1000;
/// Longest line kept, in bytes (the rest is cut).
const MAX_LINE: usize = 4096;
/// Size of an agent's log file before it is rotated (the older generation
/// is replaced): at most twice this on disk per agent.
pub const FILE_CAP: u64 = 1024 * 1024;
/// Live lines buffered per follower before it counts as lagging.
const FOLLOW_BUFFER: usize = 1024;

/// The agents' last lines, and where containers' are read from.
pub struct ProgramLogs {
    lines: Mutex<HashMap<AgentId, VecDeque<ProgramLogLine>>>,
    containers: Mutex<HashMap<AgentId, (u32, DockerClient, String)>>,
    /// Where the files are; none: memory only.
    dir: Option<PathBuf>,
    /// To the thread that appends to the files (writes never block a reader
    /// of a program's pipe).
    writer: Option<std::sync::mpsc::Sender<(AgentId, String)>>,
    live: broadcast::Sender<(AgentId, ProgramLogLine)>,
}

impl Default for ProgramLogs {
    fn default() -> Self {
        Self::new(None)
    }
}

impl ProgramLogs {
    /// Logs kept in memory and, when `dir` is given, in files there.
    pub fn new(dir: Option<PathBuf>) -> Self {
        let writer = dir.clone().and_then(|dir| {
            let (tx, rx) = std::sync::mpsc::channel::<(AgentId, String)>();
            std::thread::Builder::new()
                .name("agent-logs".into())
                .spawn(move || write_files(&dir, &rx))
                .ok()
                .map(|_| tx)
        });
        Self {
            lines: Mutex::default(),
            containers: Mutex::default(),
            dir,
            writer,
            live: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    pub fn push(&self, agent: &AgentId, session: u32, stream: &str, line: &str, ts: Timestamp) {
        let mut end = line.len().min(MAX_LINE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        let line = ProgramLogLine {
            ts,
            session,
            stream: stream.to_owned(),
            line: line[..end].to_owned(),
        };
        if let (Some(writer), Ok(json)) = (&self.writer, serde_json::to_string(&line)) {
            let _ = writer.send((agent.clone(), json));
        }
        // No follower is no error.
        let _ = self.live.send((agent.clone(), line.clone()));
        let mut lines = self.lines.lock();
        let kept = lines.entry(agent.clone()).or_default();
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }

    /// Session `session` of `agent` runs in this container: its lines are Docker's.
    pub fn set_container(&self, agent: &AgentId, session: u32, client: DockerClient, name: String) {
        self.containers
            .lock()
            .insert(agent.clone(), (session, client, name));
    }

    /// The lines written from now on, by every agent (followers keep their own).
    pub fn follow(&self) -> broadcast::Receiver<(AgentId, ProgramLogLine)> {
        self.live.subscribe()
    }

    /// The last `n` lines of `agent`, oldest first: those read from its
    /// programs (from its file when this fabric has not seen any since it
    /// started), then (for a container agent) its container's log.
    pub async fn tail(&self, agent: &AgentId, n: usize, now: Timestamp) -> Vec<ProgramLogLine> {
        let in_memory: Option<Vec<ProgramLogLine>> = {
            let kept = self.lines.lock();
            kept.get(agent)
                .map(|l| l.iter().rev().take(n).rev().cloned().collect())
        };
        let mut lines = match (in_memory, &self.dir) {
            (Some(lines), _) => lines,
            (None, Some(dir)) => {
                let (dir, agent) = (dir.clone(), agent.clone());
                tokio::task::spawn_blocking(move || read_file_tail(&dir, &agent, n))
                    .await
                    .unwrap_or_default()
            }
            (None, None) => Vec::new(),
        };
        let container = self.containers.lock().get(agent).cloned();
        if let Some((session, client, name)) = container
            && let Ok(text) = client.logs_tail(&name, n).await
        {
            lines.extend(text.lines().map(|line| ProgramLogLine {
                ts: now,
                session,
                stream: "stdout".to_owned(),
                line: line.to_owned(),
            }));
        }
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
        lines
    }

    /// Forgets an agent's lines (`agent rm`), its files too.
    pub fn forget(&self, agent: &AgentId) {
        self.lines.lock().remove(agent);
        self.containers.lock().remove(agent);
        if let Some(dir) = &self.dir {
            let file = log_file(dir, agent);
            let _ = std::fs::remove_file(rotated(&file));
            let _ = std::fs::remove_file(file);
        }
    }
}

fn log_file(dir: &Path, agent: &AgentId) -> PathBuf {
    // Agent ids are [A-Za-z0-9._-] and never start with a dot: a plain file name.
    dir.join(format!("{}.log", agent.as_str()))
}

fn rotated(file: &Path) -> PathBuf {
    file.with_extension("log.1")
}

/// The file writer: appends each line to its agent's file, rotating a file
/// that has reached [`FILE_CAP`]. A failing disk loses file lines, never
/// memory ones (and says so once).
fn write_files(dir: &Path, lines: &std::sync::mpsc::Receiver<(AgentId, String)>) {
    let mut warned = false;
    let append = |agent: &AgentId, json: &str| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let file = log_file(dir, agent);
        if std::fs::metadata(&file).is_ok_and(|m| m.len() >= FILE_CAP) {
            std::fs::rename(&file, rotated(&file))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)?;
        writeln!(out, "{json}")
    };
    while let Ok((agent, json)) = lines.recv() {
        if let Err(e) = append(&agent, &json)
            && !std::mem::replace(&mut warned, true)
        {
            tracing::warn!(agent_id = %agent, error = %e, dir = %dir.display(), "cannot write an agent's log file; its lines stay in memory only");
        }
    }
}

/// The last `n` lines of an agent's files (older generation first).
fn read_file_tail(dir: &Path, agent: &AgentId, n: usize) -> Vec<ProgramLogLine> {
    let file = log_file(dir, agent);
    let mut lines: VecDeque<ProgramLogLine> = VecDeque::new();
    for path in [rotated(&file), file] {
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        for text in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            if let Ok(line) = serde_json::from_str::<ProgramLogLine>(&text) {
                if lines.len() == n {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        }
    }
    lines.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_lines_are_kept_oldest_first() {
        let logs = ProgramLogs::default();
        let a = AgentId::new("a").unwrap();
        for i in 0..KEPT_LINES + 5 {
            logs.push(
                &a,
                1,
                "stdout",
                &format!("line {i}"),
                Timestamp::from_millis(0),
            );
        }
        logs.push(
            &a,
            2,
            "stderr",
            &"é".repeat(3000),
            Timestamp::from_millis(1),
        );
        let tail = logs.tail(&a, 3, Timestamp::from_millis(2)).await;
        let text: Vec<&str> = tail.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(&text[..2], ["line 1003", "line 1004"]);
        assert_eq!(tail[2].stream, "stderr");
        assert!(tail[2].line.len() <= MAX_LINE, "cut on a char boundary");
        assert_eq!(
            logs.tail(&a, 5000, Timestamp::from_millis(2)).await.len(),
            KEPT_LINES
        );
        logs.forget(&a);
        assert!(
            logs.tail(&a, 10, Timestamp::from_millis(2))
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn files_outlive_the_process_rotate_at_their_cap_and_followers_see_lines_live() {
        let dir = tempfile::tempdir().unwrap();
        let a = AgentId::new("crashy").unwrap();
        let logs = ProgramLogs::new(Some(dir.path().to_path_buf()));
        let mut follower = logs.follow();
        logs.push(
            &a,
            1,
            "stderr",
            "boom: no config",
            Timestamp::from_millis(5),
        );
        let (agent, line) = follower.recv().await.unwrap();
        assert_eq!(
            (agent.as_str(), line.line.as_str()),
            ("crashy", "boom: no config")
        );
        let long = "x".repeat(MAX_LINE);
        let lines_to_rotate = usize::try_from(FILE_CAP).unwrap() / MAX_LINE + 2;
        for i in 0..lines_to_rotate {
            logs.push(
                &a,
                2,
                "stdout",
                &format!("{i} {long}"),
                Timestamp::from_millis(6),
            );
        }
        logs.push(&a, 3, "stderr", "last words", Timestamp::from_millis(7));
        drop(logs); // the writer drains what it was sent, then stops
        let file = dir.path().join("crashy.log");
        for _ in 0..200 {
            if std::fs::read_to_string(&file).is_ok_and(|t| t.contains("last words")) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            dir.path().join("crashy.log.1").exists(),
            "rotated at the cap"
        );
        let size = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().len();
        assert!(size("crashy.log") <= FILE_CAP + MAX_LINE as u64 * 2);

        // A new fabric (nothing in memory) reads the tail back from the files.
        let restarted = ProgramLogs::new(Some(dir.path().to_path_buf()));
        let tail = restarted.tail(&a, 2, Timestamp::from_millis(9)).await;
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].line, "last words");
        assert_eq!(tail[1].stream, "stderr");
        restarted.forget(&a);
        assert!(!file.exists() && !dir.path().join("crashy.log.1").exists());
    }
}
