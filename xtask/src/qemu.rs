//! Booting kernels in qemu and watching them.
//!
//! Each VM gets the kernel, the shared initramfs, `console=ttyS0` on qemu's stdout (captured to
//! `.cache/oomkit-vm/runs/<kernel>/console.log`, streamed with `--verbose`) and a second serial
//! port written to `proto.log`, which carries the guest's result protocol (see
//! [`crate::report`]). `panic=-1` plus `-no-reboot` turn a guest panic into qemu exiting.
//!
//! A hung guest is detected by a progress deadline rather than one global timeout: every protocol
//! line extends it, and a `START` line extends it by that test's own timeout (the guest enforces
//! per-test timeouts itself; the host deadline is the backstop for a wedged kernel).
//!
//! KVM is used only if it demonstrably works (`--accel auto` boots a probe VM first); on the
//! development hosts nested KVM fails, so TCG is the normal case.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::VmOptions;
use crate::cache_dir;
use crate::kernels::KernelImage;
use crate::report::KernelRun;
use crate::util::{self, Context, Error, Result};

/// Time from qemu start to the guest's BEGIN line (TCG boots in ~3 s; slack for loaded CI).
const BOOT_DEADLINE: Duration = Duration::from_secs(90);
/// Silence allowed between protocol lines outside a test, and on top of a test's own timeout.
const PROGRESS_SLACK: Duration = Duration::from_secs(60);
const CONSOLE_TAIL_LINES: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    Auto,
    Tcg,
    Kvm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    fn args(self) -> [&'static str; 2] {
        match self {
            Accel::Tcg => ["-accel", "tcg,thread=multi"],
            Accel::Kvm => ["-accel", "kvm"],
        }
    }
}

/// Parameters of one VM.
struct VmSpec<'a> {
    kernel: &'a KernelImage,
    initrd: &'a Path,
    cmdline: &'a [String],
    memory_mib: u32,
    smp: u32,
    accel: Accel,
    verbose: bool,
    log_dir: PathBuf,
    /// Overall cap regardless of progress (used by the KVM probe).
    hard_limit: Option<Duration>,
}

/// Decide the accelerator; with `auto`, boot a probe VM under KVM and use KVM only if the guest
/// comes up and reports.
pub fn resolve_accel(
    choice: AccelChoice,
    kernel: &KernelImage,
    initrd: &Path,
    verbose: bool,
) -> Accel {
    match choice {
        AccelChoice::Tcg => return Accel::Tcg,
        AccelChoice::Kvm => return Accel::Kvm,
        AccelChoice::Auto => {}
    }
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm_usable {
        println!("xtask: /dev/kvm not usable; using TCG");
        return Accel::Tcg;
    }
    let cmdline = ["oomkit.mode=probe".to_string()];
    let spec = VmSpec {
        kernel,
        initrd,
        cmdline: &cmdline,
        memory_mib: 256,
        smp: 1,
        accel: Accel::Kvm,
        verbose,
        log_dir: cache_dir().join("runs").join("kvm-probe"),
        hard_limit: Some(Duration::from_secs(30)),
    };
    match run_vm(&spec, &|_| {}) {
        Ok(run) if run.ok() => {
            println!("xtask: KVM probe booted {} fine; using KVM", kernel.name);
            Accel::Kvm
        }
        Ok(run) => {
            let why = run.problem.unwrap_or_default();
            let first = why.lines().next().unwrap_or("");
            println!("xtask: KVM probe failed ({first}); using TCG");
            Accel::Tcg
        }
        Err(e) => {
            println!("xtask: KVM probe failed ({e}); using TCG");
            Accel::Tcg
        }
    }
}

/// Boot every kernel (up to `opts.jobs` at once); with `stop_on_failure`, start no new VM after
/// one has failed. Results come back in the order of `kernels`.
pub fn run_matrix(
    kernels: &[KernelImage],
    initrd: &Path,
    cmdline: &[String],
    opts: &VmOptions,
    accel: Accel,
    stop_on_failure: bool,
) -> Result<Vec<KernelRun>> {
    let started = Instant::now();
    let jobs = opts
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    println!(
        "xtask: booting {} kernel(s) under {:?}, {} at a time, {} CPU(s) and {} MiB each",
        kernels.len(),
        accel,
        jobs,
        opts.smp,
        opts.memory_mib
    );
    let queue = Mutex::new((0..kernels.len()).collect::<VecDeque<_>>());
    let results: Mutex<Vec<Option<KernelRun>>> = Mutex::new(vec![None; kernels.len()]);
    let failed = Mutex::new(false);
    let errors: Mutex<Vec<Error>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(kernels.len()) {
            s.spawn(|| {
                loop {
                    if stop_on_failure && failed.lock().map(|f| *f).unwrap_or(true) {
                        return;
                    }
                    let Some(i) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        return;
                    };
                    let k = &kernels[i];
                    let spec = VmSpec {
                        kernel: k,
                        initrd,
                        cmdline,
                        memory_mib: opts.memory_mib,
                        smp: opts.smp,
                        accel,
                        verbose: opts.verbose,
                        log_dir: cache_dir().join("runs").join(&k.name),
                        hard_limit: None,
                    };
                    let name = k.name.clone();
                    let progress = move |line: &str| println!("[{name}] {line}");
                    match run_with_known_bug_retry(&spec, &progress) {
                        Ok(run) => {
                            println!(
                                "[{}] done in {:.0}s: {}",
                                k.name,
                                run.duration.as_secs_f64(),
                                if run.ok() { "ok" } else { "FAILED" }
                            );
                            if !run.ok() {
                                if let Ok(mut f) = failed.lock() {
                                    *f = true;
                                }
                            }
                            if let Ok(mut r) = results.lock() {
                                r[i] = Some(run);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                *f = true;
                            }
                            if let Ok(mut errs) = errors.lock() {
                                errs.push(Error::msg(format!("{}: {e}", k.name)));
                            }
                        }
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_default();
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let runs: Vec<KernelRun> = results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    println!(
        "xtask: VMs finished in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(runs)
}

/// Run a VM; if it dies with a known kernel bug's signature on its console, keep that attempt's
/// logs (`*.attempt1.log`) and boot it once more, recording the hit.
fn run_with_known_bug_retry(spec: &VmSpec<'_>, progress: &dyn Fn(&str)) -> Result<KernelRun> {
    let first = run_vm(spec, progress)?;
    if first.ok() || first.problem.is_none() {
        return Ok(first);
    }
    let console = std::fs::read_to_string(spec.log_dir.join("console.log")).unwrap_or_default();
    let Some((sig, note)) = spec
        .kernel
        .known_bugs
        .iter()
        .find(|(sig, _)| console.contains(sig.as_str()))
    else {
        return Ok(first);
    };
    let running = first
        .results
        .last()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let hit = format!("`{sig}` during {running}: {note}");
    progress(&format!("KNOWN KERNEL BUG {hit}; booting again"));
    for f in ["console", "proto"] {
        let _ = std::fs::rename(
            spec.log_dir.join(format!("{f}.log")),
            spec.log_dir.join(format!("{f}.attempt1.log")),
        );
    }
    let mut second = run_vm(spec, progress)?;
    second.known_bug_hits.push(hit);
    Ok(second)
}

enum Event {
    Console(String),
    ConsoleClosed,
}

/// Size of the scratch disk every guest gets (sparse on the host: only what a test writes or
/// reads back takes space).
const DISK_MIB: u64 = 512;

/// A fresh sparse scratch disk for one VM: the guest sees it as `/dev/nvme0n1` (the NVMe driver
/// is built into the Debian cloud kernels, virtio-blk is a module). Tests read it through the
/// page cache to have file-backed memory that can really be evicted and read back, which the
/// RAM-backed initramfs cannot give.
fn scratch_disk(log_dir: &Path) -> Result<PathBuf> {
    let path = log_dir.join("disk.img");
    let f = File::create(&path).context(|| format!("cannot create {}", path.display()))?;
    f.set_len(DISK_MIB << 20)
        .context(|| format!("cannot size {}", path.display()))?;
    Ok(path)
}

fn spawn_qemu(spec: &VmSpec<'_>, proto_path: &Path) -> Result<Child> {
    let disk = scratch_disk(&spec.log_dir)?;
    let mut append = vec![
        "console=ttyS0".to_string(),
        "panic=-1".into(),
        "oops=panic".into(),
        "psi=1".into(),
    ];
    append.extend(spec.cmdline.iter().cloned());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(spec.accel.args())
        .args(["-cpu", "max", "-m"])
        .arg(spec.memory_mib.to_string())
        .arg("-smp")
        .arg(spec.smp.to_string())
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(&spec.kernel.vmlinuz)
        .arg("-initrd")
        .arg(spec.initrd)
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=scratch,format=raw",
            disk.display()
        ))
        .args(["-device", "nvme,serial=oomkit-scratch,drive=scratch"])
        .arg("-append")
        .arg(append.join(" "))
        // ttyS0: console (with the qemu monitor multiplexed, unused); ttyS1: result protocol.
        .args(["-serial", "mon:stdio", "-serial"])
        .arg(format!("file:{}", proto_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn()
        .context(|| "cannot start qemu-system-x86_64".to_string())
}

/// Boot one VM and follow it until it powers off, dies or stops making progress.
fn run_vm(spec: &VmSpec<'_>, progress: &dyn Fn(&str)) -> Result<KernelRun> {
    util::create_dir_all(&spec.log_dir)?;
    let proto_path = spec.log_dir.join("proto.log");
    let console_path = spec.log_dir.join("console.log");
    util::write(&proto_path, "")?;
    let started = Instant::now();
    let mut child = spawn_qemu(spec, &proto_path)?;
    let mut run = KernelRun::new(spec.kernel.clone());

    let tail: Arc<Mutex<VecDeque<String>>> = Arc::new(Mutex::new(VecDeque::new()));
    let (tx, rx) = mpsc::channel::<Event>();
    let mut readers = Vec::new();
    let mut console_file = File::create(&console_path)
        .context(|| format!("cannot create {}", console_path.display()))?;
    if let Some(out) = child.stdout.take() {
        readers.push(pipe_reader(out, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(pipe_reader(err, tx.clone()));
    }
    drop(tx);

    let mut proto =
        File::open(&proto_path).context(|| format!("cannot open {}", proto_path.display()))?;
    let mut proto_buf = Vec::<u8>::new();
    let mut deadline = started + BOOT_DEADLINE;
    let mut why: Option<String> = None;
    let mut open_pipes = readers.len();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Event::Console(line)) => {
                let _ = writeln!(console_file, "{line}");
                if spec.verbose {
                    println!("[{} console] {line}", spec.kernel.name);
                }
                if let Ok(mut t) = tail.lock() {
                    t.push_back(line);
                    if t.len() > CONSOLE_TAIL_LINES {
                        t.pop_front();
                    }
                }
            }
            Ok(Event::ConsoleClosed) => open_pipes = open_pipes.saturating_sub(1),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => open_pipes = 0,
        }
        // New protocol bytes.
        let mut chunk = Vec::new();
        if proto.read_to_end(&mut chunk).is_ok() && !chunk.is_empty() {
            proto_buf.extend_from_slice(&chunk);
            while let Some(pos) = proto_buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = proto_buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some(p) = run.feed(&line) {
                    progress(&p);
                }
                deadline = Instant::now()
                    + PROGRESS_SLACK
                    + run
                        .running
                        .as_ref()
                        .map(|(_, t)| Duration::from_secs(*t))
                        .unwrap_or_default();
            }
        }
        let exited = child.try_wait().ok().flatten();
        if let Some(status) = exited {
            if open_pipes == 0 {
                // Drain the last protocol bytes written before exit.
                let mut rest = Vec::new();
                let _ = proto.read_to_end(&mut rest);
                proto_buf.extend_from_slice(&rest);
                for line in String::from_utf8_lossy(&proto_buf).lines() {
                    if let Some(p) = run.feed(line) {
                        progress(&p);
                    }
                }
                if !run.completed {
                    why = Some(format!(
                        "qemu exited ({status}) before the guest's END marker: guest panicked, \
                         crashed or init died"
                    ));
                }
                break;
            }
            continue;
        }
        let now = Instant::now();
        let hard = spec
            .hard_limit
            .is_some_and(|l| now.duration_since(started) > l);
        if now > deadline || hard {
            let running = run
                .running
                .as_ref()
                .map(|(n, _)| format!(" while running {n}"))
                .unwrap_or_default();
            why = Some(if run.guest_release.is_none() {
                format!(
                    "guest did not come up within {}s (hung at boot?)",
                    now.duration_since(started).as_secs()
                )
            } else {
                format!(
                    "guest hung: no protocol output for {}s past any test timeout{running}",
                    PROGRESS_SLACK.as_secs()
                )
            });
            let _ = child.kill();
            let _ = child.wait();
            // Let the readers see EOF so the console tail is complete.
            while let Ok(ev) = rx.recv_timeout(Duration::from_secs(2)) {
                if let Event::Console(line) = ev {
                    let _ = writeln!(console_file, "{line}");
                    if let Ok(mut t) = tail.lock() {
                        t.push_back(line);
                        if t.len() > CONSOLE_TAIL_LINES {
                            t.pop_front();
                        }
                    }
                }
            }
            break;
        }
    }
    for r in readers {
        let _ = r.join();
    }
    run.duration = started.elapsed();
    let tail_text = tail
        .lock()
        .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    run.finish(why, &tail_text);
    Ok(run)
}

fn pipe_reader(
    pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<Event>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    if tx.send(Event::Console(line)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::ConsoleClosed);
    })
}
