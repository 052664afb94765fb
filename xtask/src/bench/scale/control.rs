//! A control for the synthetic load: the bare hyper server (no identification, no index) under
//! the same load from the smallest and the largest fleet's addresses, in the same rounds, so the
//! part of a throughput change that belongs to the kernel and the client shows apart from the
//! daemon's.

use std::time::Duration;

use anyhow::Result;

use super::synthetic::load;
use crate::bench::servers::{Kind, Programs, Server};
use crate::bench::stats::Sample;

/// The control's samples: (from the smallest fleet's addresses, from the largest's), per round.
#[derive(Debug, Default)]
pub struct Control {
    pub small: usize,
    pub large: usize,
    pub rounds: Vec<(Sample, Sample)>,
}

/// The bare server, answering a credentials-like document to every request.
#[derive(Debug)]
pub struct Bare {
    server: Server,
}

impl Bare {
    /// Starts the bench's bare hyper server on a free loopback port.
    pub fn start(programs: &Programs) -> Result<Self> {
        let body = programs.dir.join("scale-bare-body.json");
        std::fs::write(
            &body,
            r#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIABAREBENCHCONTROL","SecretAccessKey":"x","Token":"y"}"#,
        )?;
        let server = programs.start(Kind::Bare, "bare-scale-control", &body, &body)?;
        Ok(Self { server })
    }

    /// One round: the same load from `small` then `large` addresses (reversed every other round).
    pub async fn round(
        &self,
        (small, large): (usize, usize),
        roles: usize,
        duration: Duration,
        round: usize,
    ) -> Result<(Sample, Sample)> {
        let addr = self.server.addr;
        let (a, b) = if round.is_multiple_of(2) {
            (small, large)
        } else {
            (large, small)
        };
        let first = load(addr, a, roles, duration).await?;
        let second = load(addr, b, roles, duration).await?;
        let (s, l) = if round.is_multiple_of(2) {
            (first, second)
        } else {
            (second, first)
        };
        println!(
            "  round {}: bare hyper (control) from {small} addresses {:>8.0} req/s, from {large} {:>8.0} req/s",
            round + 1,
            s.rps,
            l.rps
        );
        Ok((s, l))
    }
}
