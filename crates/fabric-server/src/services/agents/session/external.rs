//! An `external` agent: it runs elsewhere, with a token from `POST
//! /v1/auth/tokens {agent}`, and connects to the fabric itself. The fabric
//! runs nothing for it, so there is nothing to wait for or terminate.

use std::path::PathBuf;

use fabric_core::AgentId;

use super::host::{create_workdir, remove_workdir};
use super::{Background, Launch, SessionError};
use crate::services::agents::inference;

pub(in crate::services::agents) struct ExternalSession {
    agent: AgentId,
    /// Removed at cleanup.
    workdir: PathBuf,
    /// The inference endpoint's server.
    endpoint: Background,
}

impl ExternalSession {
    /// Makes what every isolation `none` session has: a working dir and an
    /// inference endpoint on a loopback port of its own. Nothing tells an
    /// agent running elsewhere where either is.
    pub(super) fn start(launch: &Launch<'_>) -> Result<ExternalSession, SessionError> {
        let (_, workdir) = launch.workdir();
        create_workdir(&workdir)?;
        match inference::serve_loopback(launch.runtime, launch.endpoint_identity()) {
            Ok((_, server)) => {
                let mut endpoint = Background::default();
                endpoint.push(server);
                Ok(ExternalSession {
                    agent: launch.agent().clone(),
                    workdir,
                    endpoint,
                })
            }
            Err(e) => {
                remove_workdir(launch.agent(), &workdir);
                Err(e)
            }
        }
    }

    pub(super) fn cleanup(self) {
        drop(self.endpoint);
        remove_workdir(&self.agent, &self.workdir);
    }
}
