//! What agents' programs write (`agent logs`): the last lines of each
//! agent's stdout and stderr, kept in memory across its sessions.
//!
//! Host and sandbox programs are read through pipes as they write; each line
//! also goes to the fabric's log as before. A container's main process
//! writes to Docker's log, read when asked. Not durable: a restart of the
//! fabric starts empty (the fabric's own log still has every line).

use std::collections::{HashMap, VecDeque};

use fabric_core::api::ProgramLogLine;
use fabric_core::{AgentId, Timestamp};
use fabric_docker::DockerClient;
use parking_lot::Mutex;

/// Lines kept per agent.
pub const KEPT_LINES: usize = 1000;
/// Longest line kept, in bytes (the rest is cut).
const MAX_LINE: usize = 4096;

/// The agents' last lines, and where containers' are read from.
#[derive(Default)]
pub struct ProgramLogs {
    lines: Mutex<HashMap<AgentId, VecDeque<ProgramLogLine>>>,
    containers: Mutex<HashMap<AgentId, (u32, DockerClient, String)>>,
}

impl ProgramLogs {
    pub fn push(&self, agent: &AgentId, session: u32, stream: &str, line: &str, ts: Timestamp) {
        let mut end = line.len().min(MAX_LINE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        let mut lines = self.lines.lock();
        let kept = lines.entry(agent.clone()).or_default();
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(ProgramLogLine {
            ts,
            session,
            stream: stream.to_owned(),
            line: line[..end].to_owned(),
        });
    }

    /// Session `session` of `agent` runs in this container: its lines are Docker's.
    pub fn set_container(&self, agent: &AgentId, session: u32, client: DockerClient, name: String) {
        self.containers
            .lock()
            .insert(agent.clone(), (session, client, name));
    }

    /// The last `n` lines of `agent`, oldest first: those read from its
    /// programs, then (for a container agent) its container's log.
    pub async fn tail(&self, agent: &AgentId, n: usize, now: Timestamp) -> Vec<ProgramLogLine> {
        let mut lines: Vec<ProgramLogLine> = {
            let kept = self.lines.lock();
            kept.get(agent)
                .map(|l| l.iter().rev().take(n).rev().cloned().collect())
                .unwrap_or_default()
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

    /// Forgets an agent's lines (`agent rm`).
    pub fn forget(&self, agent: &AgentId) {
        self.lines.lock().remove(agent);
        self.containers.lock().remove(agent);
    }
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
}
