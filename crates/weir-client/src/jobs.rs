//! Async jobs: poll a status URL until done — with backoff and jitter, honouring
//! `Retry-After`, bounded by a deadline — or, webhook-first, wait for a pushed completion
//! and fall back to polling only if it does not arrive in time.
//!
//! Each poll is a full [`Client::execute`] (so a flaky status endpoint is retried by the
//! contract). Between polls the wait is the server's `Retry-After` when it sends one
//! (202 Accepted often does), else exponential backoff with *equal* jitter (half fixed,
//! half random), so polls never come closer than half the interval.

use crate::client::{Call, Client, Success};
use crate::error::CallError;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};
use weir_contract::headers::RetryAfter;

/// Polling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollConfig {
    /// First interval.
    pub initial: Duration,
    /// Largest interval.
    pub max_interval: Duration,
    /// Give up after this long.
    pub deadline: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            initial: Duration::from_secs(1),
            max_interval: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
        }
    }
}

/// What a status response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState<T> {
    /// Not finished.
    Pending,
    /// Finished with this result.
    Done(T),
    /// Finished, failed.
    Failed(String),
}

/// Where the completion came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The webhook.
    Webhook,
    /// Polling.
    Polling,
}

/// A job that did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The deadline passed while the job was pending.
    #[error("the job was still pending after {polls} polls and {waited:?}")]
    Timeout {
        /// Polls made.
        polls: u32,
        /// Time waited.
        waited: Duration,
    },
    /// The job reported failure.
    #[error("the job failed: {0}")]
    Failed(String),
    /// A poll failed for good.
    #[error("polling the job failed: {0}")]
    Poll(Box<CallError>),
}

impl From<CallError> for JobError {
    fn from(e: CallError) -> Self {
        JobError::Poll(Box::new(e))
    }
}

/// Polls `url` until `judge` says the job is done or failed.
pub async fn poll<T>(
    client: &Client,
    url: &str,
    config: PollConfig,
    judge: impl Fn(&Success) -> JobState<T>,
) -> Result<T, JobError> {
    let started = Instant::now();
    let deadline = started + config.deadline;
    let mut rng = fastrand::Rng::new();
    let mut polls = 0u32;
    let mut interval = config.initial;
    loop {
        polls += 1;
        let resp = client.execute(Call::new(http::Method::GET, url)).await?;
        match judge(&resp) {
            JobState::Done(v) => return Ok(v),
            JobState::Failed(why) => return Err(JobError::Failed(why)),
            JobState::Pending => {}
        }
        let wait = match RetryAfter::from_headers(&resp.headers) {
            Some(ra) => ra.delay_from(SystemTime::now()).min(crate::MAX_SERVER_WAIT),
            None => {
                let half = interval / 2;
                half + Duration::from_micros(
                    rng.u64(0..=u64::try_from(half.as_micros()).unwrap_or(u64::MAX)),
                )
            }
        };
        interval = (interval * 2).min(config.max_interval);
        if Instant::now() + wait > deadline {
            return Err(JobError::Timeout {
                polls,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(wait).await;
    }
}

/// Webhook-first: waits up to `grace` for `webhook` (a future the caller resolves when the
/// completion is pushed), then falls back to polling `url` if it has not arrived.
pub async fn webhook_or_poll<T>(
    client: &Client,
    url: &str,
    webhook: impl Future<Output = T>,
    grace: Duration,
    config: PollConfig,
    judge: impl Fn(&Success) -> JobState<T>,
) -> Result<(T, Source), JobError> {
    match tokio::time::timeout(grace, webhook).await {
        Ok(v) => Ok((v, Source::Webhook)),
        Err(_) => {
            tracing::info!(
                url,
                "no webhook within {:?}; falling back to polling",
                grace
            );
            poll(client, url, config, judge)
                .await
                .map(|v| (v, Source::Polling))
        }
    }
}
