//! `oomkit`: the userspace OOM handler daemon.
//!
//! ```text
//! oomkit run --config /etc/oomkit/oomkit.toml [--dry-run]
//! oomkit check-config FILE
//! oomkit probe [--root /sys/fs/cgroup] [--config FILE]
//! oomkit config default
//! oomkit incidents list | show ID [--json] | plot ID [-o FILE]
//! oomkit completions bash|zsh|fish ; oomkit manpage
//! ```
//!
//! Everything but process-wide signal setup lives in the library
//! (`oomkit_daemon::daemon`). Here, SIGTERM/SIGINT and SIGHUP are turned
//! into bytes on two socket pairs (`signal_hook::low_level::pipe`: the
//! handler only does an async-signal-safe `write`); the read ends join the
//! runner's epoll, so the loop sees a signal like any other event.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use oomkit::engine::{CgroupMeta, Class, Handler, Plan, View};
use oomkit_daemon::config::Config;
use oomkit_daemon::daemon::{self, Control, exit};

/// Userspace out-of-memory handling on cgroup v2.
#[derive(Debug, Parser)]
#[command(
    name = "oomkit",
    version,
    about = "Userspace out-of-memory handling on cgroup v2",
    after_help = daemon::exit::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon. Refuses (exit 78) when the managed root is not cgroup2 or has no memory
    /// controller.
    #[command(after_help = daemon::exit::HELP)]
    Run {
        /// The config file.
        #[arg(long, short, default_value_os_t = daemon::default_config_path())]
        config: PathBuf,
        /// Decide and log, but kill and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Debugging and tests only: the handler sleeps this long in every `decide`, stalling
        /// the main loop during pressure so the watchdog can be seen acting.
        #[arg(long, hide = true, value_name = "MS")]
        debug_stall_after_event_ms: Option<u64>,
    },
    /// Validate a config file and print what it configures.
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
    /// Incident records: list them, show one, plot one as an SVG timeline.
    Incidents {
        /// The folder (default: `[daemon] incident_dir` of --config, or of
        /// /etc/oomkit/oomkit.toml if it exists, else /var/lib/oomkit/incidents).
        #[arg(long, global = true)]
        dir: Option<PathBuf>,
        /// The config file whose incident_dir to use.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        what: IncidentsCmd,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) for this command.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) for this command.
    Manpage,
    /// Testing: print a scrape of a fresh metrics registry.
    #[command(hide = true)]
    MetricsSample,
    /// Print the kernel features and what reserve mode would get; exits 78 (and says why) when
    /// the host cannot be managed.
    #[command(after_help = daemon::exit::HELP)]
    Probe {
        /// The cgroup to probe (filesystem path).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Use this config's `[reserve]` and `[daemon] root`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Print every key at its default, commented (docs/config.md has the reference).
    Default,
}

#[derive(Debug, Subcommand)]
enum IncidentsCmd {
    /// One line per record, oldest first.
    List,
    /// One record, for a human or (--json) as written.
    Show {
        /// The record's number (the ID column of `list`).
        id: u64,
        /// Print the JSON record as written.
        #[arg(long)]
        json: bool,
    },
    /// An SVG timeline of the episode: memory, PSI and headroom before and after, and the
    /// event, decision, signal, exit and memory-back marks.
    Plot {
        /// The record's number.
        id: u64,
        /// Write the SVG here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// Writes to standard output; a closed pipe (`oomkit incidents list | head`) is not an error
/// worth a panic, so write errors are ignored.
fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
}

fn incident_dir(dir: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let file = config.or_else(|| {
        let p = daemon::default_config_path();
        p.exists().then_some(p)
    });
    let Some(file) = file else {
        return Ok(PathBuf::from("/var/lib/oomkit/incidents"));
    };
    let loaded = Config::load(&file).map_err(|e| e.to_string())?;
    loaded
        .config
        .daemon
        .incidents()
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "{}: incident records are off (incident_dir = \"\")",
                file.display()
            )
        })
}

fn incidents(dir: Option<PathBuf>, config: Option<PathBuf>, what: IncidentsCmd) -> ExitCode {
    use oomkit::engine::incident::read_one;
    use oomkit_daemon::{incidents, plot};
    let result = incident_dir(dir, config).and_then(|dir| match what {
        IncidentsCmd::List => incidents::list(&dir),
        IncidentsCmd::Show { id, json } => {
            let i = read_one(&dir, id)?;
            if json {
                serde_json::to_string_pretty(&i)
                    .map(|s| s + "\n")
                    .map_err(|e| e.to_string())
            } else {
                Ok(incidents::show(&i))
            }
        }
        IncidentsCmd::Plot { id, output } => {
            let svg = plot::svg(&read_one(&dir, id)?);
            match output {
                Some(p) => std::fs::write(&p, svg)
                    .map(|()| String::new())
                    .map_err(|e| format!("{}: {e}", p.display())),
                None => Ok(svg),
            }
        }
    });
    match result {
        Ok(text) => {
            out(&text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oomkit: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Incidents { dir, config, what } => incidents(dir, config, what),
        Command::Config {
            what: ConfigCmd::Default,
        } => {
            out(oomkit_daemon::config::DEFAULT_TOML);
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "oomkit", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpage => {
            use clap::CommandFactory;
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("oomkit: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::MetricsSample => {
            out(&oomkit_daemon::metrics::Metrics::new().render());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match daemon::check_config(&file) {
            Ok(summary) => {
                out(&format!("{summary}\n"));
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(exit::CONFIG)
            }
        },
        Command::Probe { root, config } => {
            let cfg = match config.as_deref().map(Config::load).transpose() {
                Ok(c) => c.map(|l| l.config),
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(exit::CONFIG);
                }
            };
            let root = root
                .or_else(|| cfg.as_ref().map(|c| c.daemon.root.clone()))
                .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
            let (text, unsupported) = daemon::probe(&root, cfg.as_ref());
            out(&text);
            match unsupported {
                None => ExitCode::SUCCESS,
                Some(why) => {
                    eprintln!("oomkit: unsupported host: {why}");
                    ExitCode::from(exit::CONFIG)
                }
            }
        }
        Command::Run {
            config,
            dry_run,
            debug_stall_after_event_ms,
        } => run(
            config,
            dry_run,
            debug_stall_after_event_ms.map(Duration::from_millis),
        ),
    }
}

fn run(file: PathBuf, dry_run: bool, stall: Option<Duration>) -> ExitCode {
    let loaded = match Config::load(&file) {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let d = &loaded.config.daemon;
    if let Err(e) = oomkit_daemon::logging::init(d.log_format, &d.log_level) {
        eprintln!("oomkit: {e}");
        return ExitCode::FAILURE;
    }
    let control = match signals() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "installing signal handlers failed");
            return ExitCode::FAILURE;
        }
    };
    let wrap = |h: Box<dyn Handler>| -> Box<dyn Handler> {
        match stall {
            Some(stall) => Box::new(Stall { inner: h, stall }),
            None => h,
        }
    };
    match daemon::run_wrapped(&file, loaded, dry_run, control, &wrap) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, exit_code = e.exit_code(), "oomkit stopped");
            ExitCode::from(e.exit_code())
        }
    }
}

/// SIGTERM/SIGINT → shutdown pipe, SIGHUP → reload pipe.
fn signals() -> std::io::Result<Control> {
    let (shutdown, shutdown_w) = UnixStream::pair()?;
    let (reload, reload_w) = UnixStream::pair()?;
    shutdown_w.set_nonblocking(true)?;
    reload_w.set_nonblocking(true)?;
    let shutdown_w2 = shutdown_w.try_clone()?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, shutdown_w)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, shutdown_w2)?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, reload_w)?;
    Ok(Control { shutdown, reload })
}

/// `--debug-stall-after-event-ms`: the configured handler, then a sleep in `decide` (after the
/// handler has decided, so the plan is the real one), which keeps the main loop busy for that
/// long while memory is short, the situation the watchdog exists for.
struct Stall {
    inner: Box<dyn Handler>,
    stall: Duration,
}

impl Handler for Stall {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn classify(&mut self, meta: &CgroupMeta<'_>) -> Class {
        self.inner.classify(meta)
    }
    fn decide(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        self.inner.decide(view, plan);
        tracing::warn!(
            stall_ms = self.stall.as_millis() as u64,
            "debug: stalling the handler"
        );
        std::thread::sleep(self.stall);
    }
    fn on_quiet_tick(&mut self, view: &mut View<'_>, plan: &mut Plan) {
        self.inner.on_quiet_tick(view, plan)
    }
    fn wants_ticks(&self) -> bool {
        self.inner.wants_ticks()
    }
}
