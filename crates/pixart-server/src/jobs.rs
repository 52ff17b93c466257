//! Jobs, the bounded queue, and the counters behind `/metrics`.
//!
//! One mutex guards the job table and the queue; the worker thread waits on a condition
//! variable. Each job publishes its state through a `tokio::sync::watch` channel, which the
//! worker updates from its plain thread and which `GET /v1/jobs/{id}`, the event stream and the
//! waiting OpenAI route read. Finished jobs are kept for `keep_jobs` / `job_ttl`, then dropped,
//! so memory stays bounded whatever clients do.
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::api::JobParams;
use crate::error::ApiError;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A job's changing state.
#[derive(Debug, Clone)]
pub struct JobState {
    pub status: Status,
    /// The pipeline stage running (`text encode`, `denoise`, `vae decode`, ...).
    pub stage: Option<&'static str>,
    /// Denoising steps done.
    pub step: usize,
    pub total_steps: usize,
    /// Seconds the last step took.
    pub step_seconds: Option<f64>,
    /// Set by `DELETE` while the job runs; it stops after the current step.
    pub cancel_requested: bool,
    /// A message for the client (no paths, no internals).
    pub error: Option<String>,
    /// The image files (PNG or JPEG), when succeeded.
    pub images: Arc<Vec<Vec<u8>>>,
    /// The latest live preview (requests with `"preview": true`): the step it shows and a PNG
    /// of the batch's images side by side.
    pub preview: Option<(usize, Arc<Vec<u8>>)>,
    /// The `parameters` text of each image (what its file carries), when succeeded.
    pub infotexts: Arc<Vec<String>>,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
}

/// A generation job.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub params: JobParams,
    /// Unix seconds.
    pub created: u64,
    pub submitted: Instant,
    /// Checked by the pipeline between steps.
    pub cancel: AtomicBool,
    pub state: watch::Sender<JobState>,
    /// When a client last asked about the job (job API).
    last_seen: Mutex<Instant>,
    /// Event streams open on the job: a client is there while one is.
    pub watchers: AtomicU64,
}

impl Job {
    pub fn snapshot(&self) -> JobState {
        self.state.borrow().clone()
    }

    /// A client asked about the job.
    pub fn touch(&self) {
        *lock(&self.last_seen) = Instant::now();
    }

    /// Whether the job's client is gone: a job-API job with no event stream open and no
    /// question for `after`.
    pub fn abandoned(&self, after: Duration) -> bool {
        self.params.job_api && self.watchers.load(Ordering::SeqCst) == 0 && lock(&self.last_seen).elapsed() > after
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub images: AtomicU64,
    /// Live previews made (requests with `"preview": true`).
    pub previews: AtomicU64,
    sums: Mutex<Sums>,
    /// The times of the last [`RECENT_JOBS`] succeeded jobs, newest last.
    recent: Mutex<VecDeque<f64>>,
}

/// How many recent jobs `Retry-After` averages over.
pub const RECENT_JOBS: usize = 16;

#[derive(Debug, Default, Clone, Copy)]
pub struct Sums {
    pub steps: u64,
    pub step_seconds: f64,
    pub jobs: u64,
    pub job_seconds: f64,
}

impl Metrics {
    pub fn observe_step(&self, seconds: f64) {
        let mut s = lock(&self.sums);
        s.steps += 1;
        s.step_seconds += seconds;
    }

    pub fn observe_job(&self, seconds: f64) {
        {
            let mut s = lock(&self.sums);
            s.jobs += 1;
            s.job_seconds += seconds;
        }
        let mut r = lock(&self.recent);
        if r.len() == RECENT_JOBS {
            r.pop_front();
        }
        r.push_back(seconds);
    }

    /// The mean time of the last [`RECENT_JOBS`] succeeded jobs (a moving average: a slow job
    /// long ago no longer counts), `None` before the first.
    pub fn recent_job_seconds(&self) -> Option<f64> {
        let r = lock(&self.recent);
        (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64)
    }

    pub fn sums(&self) -> Sums {
        *lock(&self.sums)
    }
}

/// Locks, recovering the data of a poisoned mutex (a panic in one request must not take the
/// whole server down; the state it guards stays consistent because every update is one
/// assignment).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct Store {
    jobs: HashMap<String, Arc<Job>>,
    queue: VecDeque<Arc<Job>>,
    /// Finished jobs, oldest first, for eviction.
    finished: VecDeque<(String, Instant)>,
    running: Option<Arc<Job>>,
    closed: bool,
}

/// Retention of finished jobs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep_jobs: usize,
    pub ttl: Duration,
    /// A job-API job that no client has asked about (`GET /v1/jobs/{id}`, its events, preview
    /// or images) for this long while it waits or runs is cancelled: its client is gone.
    pub abandon_after: Duration,
}

/// The job table and the queue.
#[derive(Debug)]
pub struct Jobs {
    store: Mutex<Store>,
    wake: Condvar,
    pub metrics: Metrics,
    max_queue: usize,
    retention: Retention,
}

/// What `submit` refuses.
pub enum Refused {
    QueueFull { retry_after: u64 },
    ShuttingDown,
}

impl From<(Refused, usize)> for ApiError {
    fn from((r, capacity): (Refused, usize)) -> Self {
        match r {
            Refused::QueueFull { retry_after } => ApiError::queue_full(capacity, retry_after),
            Refused::ShuttingDown => ApiError::shutting_down(),
        }
    }
}

fn new_id() -> String {
    format!("job-{:016x}", rand::random::<u64>())
}

impl Jobs {
    pub fn new(max_queue: usize, retention: Retention) -> Self {
        Self {
            store: Mutex::default(),
            wake: Condvar::new(),
            metrics: Metrics::default(),
            max_queue,
            retention,
        }
    }

    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    /// Queues a job, or refuses when the queue is full (with a `Retry-After` estimate: the mean
    /// time of the last [`RECENT_JOBS`] jobs, at least 1 s) or the server is shutting down.
    pub fn submit(&self, params: JobParams) -> Result<Arc<Job>, ApiError> {
        let mut st = lock(&self.store);
        if st.closed {
            return Err((Refused::ShuttingDown, self.max_queue).into());
        }
        if st.queue.len() >= self.max_queue {
            self.metrics.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
            // A place frees when the running job ends: the recent jobs' mean time.
            let mean = self.metrics.recent_job_seconds().unwrap_or(1.0);
            let retry_after = mean.ceil().max(1.0) as u64;
            return Err((Refused::QueueFull { retry_after }, self.max_queue).into());
        }
        self.evict(&mut st);
        let mut id = new_id();
        while st.jobs.contains_key(&id) {
            id = new_id();
        }
        let total_steps = params.request.steps_to_run();
        let (state, _) = watch::channel(JobState {
            status: Status::Queued,
            stage: None,
            step: 0,
            total_steps,
            step_seconds: None,
            cancel_requested: false,
            error: None,
            images: Arc::new(Vec::new()),
            preview: None,
            infotexts: Arc::new(Vec::new()),
            started: None,
            finished: None,
        });
        let job = Arc::new(Job {
            id: id.clone(),
            params,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            submitted: Instant::now(),
            cancel: AtomicBool::new(false),
            state,
            last_seen: Mutex::new(Instant::now()),
            watchers: AtomicU64::new(0),
        });
        st.jobs.insert(id, job.clone());
        st.queue.push_back(job.clone());
        self.wake.notify_one();
        Ok(job)
    }

    /// Drops finished jobs past the retention limits.
    fn evict(&self, st: &mut Store) {
        let now = Instant::now();
        while let Some((id, at)) = st.finished.front() {
            if st.finished.len() > self.retention.keep_jobs || now.duration_since(*at) > self.retention.ttl {
                let id = id.clone();
                st.jobs.remove(&id);
                st.finished.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.store).jobs.get(id).cloned()
    }

    /// Every job kept, oldest first.
    pub fn list(&self) -> Vec<Arc<Job>> {
        let mut st = lock(&self.store);
        self.evict(&mut st);
        let mut all: Vec<Arc<Job>> = st.jobs.values().cloned().collect();
        all.sort_by_key(|j| j.submitted);
        all
    }

    /// Position in the queue (0 = next), if queued.
    pub fn queue_position(&self, id: &str) -> Option<usize> {
        lock(&self.store).queue.iter().position(|j| j.id == id)
    }

    pub fn queue_len(&self) -> usize {
        lock(&self.store).queue.len()
    }

    /// Cancels the job-API jobs (queued or running) whose client is gone
    /// ([`Job::abandoned`]); returns how many.
    pub fn reap_abandoned(&self) -> usize {
        let after = self.retention.abandon_after;
        let gone: Vec<String> = {
            let st = lock(&self.store);
            st.queue
                .iter()
                .chain(st.running.iter())
                .filter(|j| !j.cancel.load(Ordering::SeqCst) && j.abandoned(after))
                .map(|j| j.id.clone())
                .collect()
        };
        for id in &gone {
            eprintln!("{id}: no client asked about it for {} s; cancelled", after.as_secs());
            self.cancel(
                id,
                &format!("abandoned: no client asked about the job for {} s", after.as_secs()),
            );
        }
        gone.len()
    }

    /// The job on the worker, if any.
    pub fn current(&self) -> Option<Arc<Job>> {
        lock(&self.store).running.clone()
    }

    pub fn running(&self) -> usize {
        usize::from(lock(&self.store).running.is_some())
    }

    pub fn kept(&self) -> usize {
        lock(&self.store).jobs.len()
    }

    /// Cancels a job: a queued one leaves the queue at once; a running one stops after its
    /// current step. Finished jobs are left as they are. Returns the job, if known.
    pub fn cancel(&self, id: &str, reason: &str) -> Option<Arc<Job>> {
        let mut st = lock(&self.store);
        let job = st.jobs.get(id).cloned()?;
        if let Some(pos) = st.queue.iter().position(|j| j.id == id) {
            st.queue.remove(pos);
            self.finish_locked(&mut st, &job, Status::Cancelled, Some(reason.to_string()), Vec::new());
        } else if !job.snapshot().status.is_terminal() {
            job.cancel.store(true, Ordering::SeqCst);
            job.state.send_modify(|s| s.cancel_requested = true);
        }
        Some(job)
    }

    /// Forgets a job, cancelling it first if it has not finished: for the OpenAI route, whose
    /// jobs belong to one connection. A running job stops after its current step; the worker
    /// still holds it until then, but the table no longer does.
    pub fn discard(&self, id: &str) {
        self.cancel(id, "the client disconnected");
        let mut st = lock(&self.store);
        st.jobs.remove(id);
        st.finished.retain(|(j, _)| j != id);
    }

    /// Removes a finished job; `false` when it is not finished.
    pub fn remove_finished(&self, id: &str) -> bool {
        let mut st = lock(&self.store);
        match st.jobs.get(id) {
            Some(j) if j.snapshot().status.is_terminal() => {
                st.jobs.remove(id);
                st.finished.retain(|(j, _)| j != id);
                true
            }
            _ => false,
        }
    }

    /// For the worker: the next job, marked running; `None` once closed and drained.
    pub fn next(&self) -> Option<Arc<Job>> {
        let mut st = lock(&self.store);
        loop {
            if let Some(job) = st.queue.pop_front() {
                st.running = Some(job.clone());
                job.state.send_modify(|s| {
                    s.status = Status::Running;
                    s.started = Some(Instant::now());
                });
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// For the worker: the job ended.
    pub fn finish(&self, job: &Arc<Job>, status: Status, error: Option<String>, images: Vec<Vec<u8>>) {
        let mut st = lock(&self.store);
        if st.running.as_ref().is_some_and(|r| r.id == job.id) {
            st.running = None;
        }
        self.finish_locked(&mut st, job, status, error, images);
    }

    fn finish_locked(
        &self,
        st: &mut Store,
        job: &Arc<Job>,
        status: Status,
        error: Option<String>,
        images: Vec<Vec<u8>>,
    ) {
        let m = &self.metrics;
        match status {
            Status::Succeeded => {
                m.succeeded.fetch_add(1, Ordering::Relaxed);
                m.images.fetch_add(images.len() as u64, Ordering::Relaxed);
            }
            Status::Failed => {
                m.failed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                m.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        let now = Instant::now();
        let started = job.snapshot().started;
        if let (Status::Succeeded, Some(t)) = (status, started) {
            m.observe_job(now.duration_since(t).as_secs_f64());
        }
        job.state.send_modify(|s| {
            s.status = status;
            s.error = error;
            s.images = Arc::new(images);
            s.finished = Some(now);
            s.stage = None;
        });
        if st.jobs.contains_key(&job.id) {
            st.finished.push_back((job.id.clone(), now));
        }
        self.evict(st);
    }

    /// Stops taking jobs and cancels the queued ones; the running one (if any) is returned so
    /// the caller can let it finish or cancel it.
    pub fn close(&self) -> Option<Arc<Job>> {
        let mut st = lock(&self.store);
        st.closed = true;
        let queued: Vec<Arc<Job>> = st.queue.drain(..).collect();
        for job in &queued {
            self.finish_locked(
                &mut st,
                job,
                Status::Cancelled,
                Some("the server shut down".into()),
                Vec::new(),
            );
        }
        self.wake.notify_all();
        st.running.clone()
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.store).closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_follows_the_recent_jobs_not_the_all_time_mean() {
        let m = Metrics::default();
        assert_eq!(m.recent_job_seconds(), None);
        // One 7-minute job, then many fast ones: it drops out of the window.
        m.observe_job(420.0);
        assert_eq!(m.recent_job_seconds(), Some(420.0));
        for _ in 0..RECENT_JOBS {
            m.observe_job(0.2);
        }
        let recent = m.recent_job_seconds().unwrap();
        assert!((recent - 0.2).abs() < 1e-9, "{recent}");
        // The all-time mean still holds it (for /metrics).
        let s = m.sums();
        assert!(s.job_seconds / s.jobs as f64 > 20.0);
    }
}
