//! Kill hooks: an operator's executable run when oomkit kills, for
//! notifications (a chat message, a ticket, a page) and site-specific
//! bookkeeping.
//!
//! A hook gets the victim's details in its environment (`OOMKIT_*`, see
//! [`env`]) and the episode's incident record (`oomkit-incident/1` JSON) on
//! stdin. It runs fire-then-poll, as oomd runs its prekill hooks: spawned,
//! its stdin written from a helper thread (a hook that never reads cannot
//! block anyone), then its pidfd polled until it exits or its deadline
//! passes, when it is SIGKILLed through that pidfd (no PID reuse race) and
//! reaped. The post-kill hook runs on a thread of its own, fed by a bounded
//! queue that drops rather than blocks, so a slow or failing hook never
//! delays a kill nor the loop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use oomkit::engine::incident::Incident;
use oomkit::kill::Pidfd;

use oomkit_handlers::podinfo::pod_info;

/// Records the post-kill hook may be behind by before new ones are dropped.
pub const QUEUE: usize = 16;

/// How one run of a hook ended.
#[derive(Debug)]
pub enum HookOutcome {
    /// It exited (successfully or not) before its deadline.
    Exited(ExitStatus),
    /// It was still running at its deadline and was SIGKILLed.
    TimedOut,
    /// It could not be started.
    Failed(String),
}

/// The environment a hook gets for `inc` (its first victim, or in a dry run
/// its first would-be victim):
///
/// | variable | value |
/// |---|---|
/// | `OOMKIT_HOOK` | `post-kill` |
/// | `OOMKIT_EPISODE` | the episode number |
/// | `OOMKIT_OUTCOME` | `acted`, `dry_run` … |
/// | `OOMKIT_DRY_RUN` | `1` in a dry run, else `0` |
/// | `OOMKIT_REASON` | the handler's reason |
/// | `OOMKIT_VICTIM_PID` | the victim process (empty for a cgroup kill) |
/// | `OOMKIT_VICTIM_COMM` | its name, when known |
/// | `OOMKIT_VICTIM_CGROUP` | its cgroup (hierarchy path) |
/// | `OOMKIT_VICTIM_BYTES` | its footprint when chosen |
/// | `OOMKIT_VICTIMS` | how many victims the episode had |
/// | `OOMKIT_POD_UID`, `OOMKIT_CONTAINER_ID` | when the cgroup path shows them |
pub fn env(hook: &str, inc: &Incident) -> Vec<(&'static str, String)> {
    let v = inc.victims.first();
    let would = inc.would_kill.first();
    let cgroup = v
        .and_then(|v| v.cgroup.clone())
        .or_else(|| would.and_then(|w| w.cgroup.clone()))
        .unwrap_or_default();
    let pid = v.and_then(|v| v.pid).or_else(|| would.and_then(|w| w.pid));
    let pod = pod_info(Path::new(&cgroup));
    vec![
        ("OOMKIT_HOOK", hook.to_string()),
        ("OOMKIT_EPISODE", inc.episode.to_string()),
        ("OOMKIT_OUTCOME", inc.outcome.clone().unwrap_or_default()),
        ("OOMKIT_DRY_RUN", u8::from(inc.dry_run).to_string()),
        ("OOMKIT_REASON", inc.reason.clone()),
        (
            "OOMKIT_VICTIM_PID",
            pid.map(|p| p.to_string()).unwrap_or_default(),
        ),
        (
            "OOMKIT_VICTIM_COMM",
            v.and_then(|v| v.comm.clone()).unwrap_or_default(),
        ),
        ("OOMKIT_VICTIM_CGROUP", cgroup),
        (
            "OOMKIT_VICTIM_BYTES",
            v.map(|v| v.footprint_bytes.to_string()).unwrap_or_default(),
        ),
        ("OOMKIT_VICTIMS", inc.victims.len().to_string()),
        ("OOMKIT_POD_UID", pod.pod_uid.unwrap_or_default()),
        ("OOMKIT_CONTAINER_ID", pod.container_id.unwrap_or_default()),
    ]
}

/// Runs `path` with `env` and `stdin`, fire-then-poll, until it exits or
/// `deadline` passes (then it is SIGKILLed and reaped).
pub fn run(
    path: &Path,
    env: &[(&'static str, String)],
    stdin: Vec<u8>,
    deadline: Duration,
) -> HookOutcome {
    let until = Instant::now() + deadline;
    let mut child = match Command::new(path)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return HookOutcome::Failed(format!("{}: {e}", path.display())),
    };
    // Not reaped yet, so the PID is still this child's: the pidfd is too.
    let pidfd = Pidfd::open(i32::try_from(child.id()).unwrap_or(i32::MAX));
    if let Some(mut input) = child.stdin.take() {
        // A hook that does not read its stdin must not block us.
        let _ = std::thread::Builder::new()
            .name("oomkit-hook-stdin".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let _ = input.write_all(&stdin);
            });
    }
    let exited = match &pidfd {
        Ok(fd) => fd.wait_exit(until).unwrap_or(false),
        Err(_) => false,
    };
    if !exited {
        match &pidfd {
            Ok(fd) => {
                let _ = fd.kill();
            }
            Err(_) => {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        return HookOutcome::TimedOut;
    }
    match child.wait() {
        Ok(st) => HookOutcome::Exited(st),
        Err(e) => HookOutcome::Failed(format!("{}: {e}", path.display())),
    }
}

/// Checks that a hook may be run by a root daemon: an absolute path to an
/// executable file owned by root or the daemon's user, and not writable by
/// group or others (anyone who can change it runs code as root).
pub fn check(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    if !md.is_file() || md.mode() & 0o111 == 0 {
        return Err(format!("{}: not an executable file", path.display()));
    }
    if md.uid() != 0 && md.uid() != euid {
        return Err(format!(
            "{}: owned by uid {}, not root or the daemon's user",
            path.display(),
            md.uid()
        ));
    }
    if md.mode() & 0o022 != 0 {
        return Err(format!("{}: writable by group or others", path.display()));
    }
    Ok(())
}

/// The post-kill hook's thread.
#[derive(Debug, Clone)]
pub struct PostKill {
    tx: SyncSender<Incident>,
}

impl PostKill {
    /// Checks `path` (see [`check`]) and starts the thread.
    pub fn start(path: PathBuf, deadline: Duration) -> Result<Self, String> {
        check(&path)?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("oomkit-post-kill".into())
            .stack_size(256 << 10)
            .spawn(move || post_kill_loop(&path, deadline, &rx))
            .map_err(|e| format!("starting the post-kill hook thread: {e}"))?;
        Ok(PostKill { tx })
    }

    /// Queues a run for `inc`; never blocks.
    pub fn submit(&self, inc: Incident) {
        let episode = inc.episode;
        match self.tx.try_send(inc) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(
                    episode,
                    "post-kill hook is {QUEUE} runs behind; run dropped"
                )
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(episode, "post-kill hook thread is gone")
            }
        }
    }
}

fn post_kill_loop(path: &Path, deadline: Duration, rx: &Receiver<Incident>) {
    while let Ok(inc) = rx.recv() {
        let stdin = serde_json::to_vec(&inc).unwrap_or_default();
        match run(path, &env("post-kill", &inc), stdin, deadline) {
            HookOutcome::Exited(st) if st.success() => {
                tracing::info!(episode = inc.episode, hook = %path.display(), "post-kill hook ran")
            }
            HookOutcome::Exited(st) => tracing::warn!(
                episode = inc.episode,
                hook = %path.display(),
                status = %st,
                "post-kill hook failed"
            ),
            HookOutcome::TimedOut => tracing::warn!(
                episode = inc.episode,
                hook = %path.display(),
                deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
                "post-kill hook ran past its deadline and was killed"
            ),
            HookOutcome::Failed(e) => {
                tracing::warn!(episode = inc.episode, error = %e, "post-kill hook did not start")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The executable pre-kill hook

/// Longest cgroup path handed to the pre-kill hook thread (longer ones are cut).
const PATH_MAX: usize = 512;

/// One coming kill, as copied off the loop (no allocation: a fixed buffer).
#[derive(Clone, Copy)]
struct PreJob {
    generation: u64,
    pid: Option<i32>,
    signal: Option<i32>,
    escalation: u32,
    path: [u8; PATH_MAX],
    path_len: usize,
}

/// [`oomkit::engine::PrekillHook`] that runs an executable before each
/// kill, with the victim in its environment (`OOMKIT_HOOK=pre-kill`,
/// `OOMKIT_VICTIM_PID`, `OOMKIT_VICTIM_CGROUP`, `OOMKIT_ESCALATION`,
/// `OOMKIT_SIGNAL`, `OOMKIT_POD_UID`, `OOMKIT_CONTAINER_ID`) and the same
/// as JSON on stdin.
///
/// `fire` runs on the loop's thread, so it only copies the target into a
/// fixed buffer and `try_send`s it to the hook's own thread (a bounded
/// channel: no allocation, no blocking; a hook still busy with an earlier
/// kill is not waited for). The thread runs the executable with [`run`],
/// which SIGKILLs it at `deadline`; `poll` reads one atomic. The loop waits
/// at most `deadline` (what `fire` returns) and at most the step's own
/// deadline: a slow or failing hook cannot hold a kill back longer.
#[derive(Debug)]
pub struct PreKillExec {
    tx: SyncSender<PreJob>,
    done: std::sync::Arc<std::sync::atomic::AtomicU64>,
    generation: u64,
    deadline: Duration,
}

impl std::fmt::Debug for PreJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreJob")
            .field("generation", &self.generation)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl PreKillExec {
    /// Checks `path` (see [`check`]) and starts the hook's thread.
    pub fn start(path: PathBuf, deadline: Duration) -> Result<Self, String> {
        check(&path)?;
        let (tx, rx) = sync_channel::<PreJob>(1);
        let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let finished = done.clone();
        std::thread::Builder::new()
            .name("oomkit-pre-kill".into())
            .stack_size(256 << 10)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    pre_kill_once(&path, deadline, &job);
                    finished.store(job.generation, std::sync::atomic::Ordering::Release);
                }
            })
            .map_err(|e| format!("starting the pre-kill hook thread: {e}"))?;
        Ok(PreKillExec {
            tx,
            done,
            generation: 0,
            deadline,
        })
    }
}

fn pre_kill_once(path: &Path, deadline: Duration, job: &PreJob) {
    let cgroup = String::from_utf8_lossy(&job.path[..job.path_len]).into_owned();
    let pod = pod_info(Path::new(&cgroup));
    let opt = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_default();
    let env = vec![
        ("OOMKIT_HOOK", "pre-kill".to_string()),
        ("OOMKIT_VICTIM_PID", opt(job.pid)),
        ("OOMKIT_VICTIM_CGROUP", cgroup.clone()),
        ("OOMKIT_ESCALATION", job.escalation.to_string()),
        ("OOMKIT_SIGNAL", opt(job.signal)),
        ("OOMKIT_POD_UID", pod.pod_uid.clone().unwrap_or_default()),
        (
            "OOMKIT_CONTAINER_ID",
            pod.container_id.clone().unwrap_or_default(),
        ),
    ];
    let stdin = serde_json::json!({
        "hook": "pre-kill",
        "pid": job.pid,
        "cgroup": cgroup,
        "escalation": job.escalation,
        "signal": job.signal,
        "pod_uid": pod.pod_uid,
        "container_id": pod.container_id,
    })
    .to_string()
    .into_bytes();
    match run(path, &env, stdin, deadline) {
        HookOutcome::Exited(st) if st.success() => {}
        HookOutcome::Exited(st) => {
            tracing::warn!(hook = %path.display(), status = %st, "pre-kill hook failed")
        }
        HookOutcome::TimedOut => tracing::warn!(
            hook = %path.display(),
            "pre-kill hook ran past its deadline and was killed; the kill went ahead"
        ),
        HookOutcome::Failed(e) => tracing::warn!(error = %e, "pre-kill hook did not start"),
    }
}

impl oomkit::engine::PrekillHook for PreKillExec {
    fn name(&self) -> &'static str {
        "pre-kill executable"
    }

    fn fire(&mut self, target: &oomkit::engine::PrekillTarget<'_>) -> Option<Duration> {
        if !self.poll() {
            // Still running for an earlier kill: this one is not made to wait.
            return None;
        }
        let bytes = target.path.as_os_str().as_encoded_bytes();
        let len = bytes.len().min(PATH_MAX);
        let mut path = [0u8; PATH_MAX];
        path[..len].copy_from_slice(&bytes[..len]);
        let job = PreJob {
            generation: self.generation + 1,
            pid: target.pid,
            signal: target.signal,
            escalation: target.escalation,
            path,
            path_len: len,
        };
        match self.tx.try_send(job) {
            Ok(()) => {
                self.generation += 1;
                Some(self.deadline)
            }
            // The thread is gone: do not wait.
            Err(_) => None,
        }
    }

    fn poll(&mut self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Acquire) >= self.generation
    }
}
