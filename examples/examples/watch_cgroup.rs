//! Print the changes of one cgroup's `memory.events` as they happen.
//!
//! The smallest useful oomkit program: open a cgroup, register its
//! `memory.events` with a [`Watcher`] (one epoll fd, no threads), and block
//! until the kernel says a counter moved. Each wakeup re-reads the file and
//! reports by how much each counter rose, however many increments the
//! wakeup covered.
//!
//! ```text
//! cargo run -p oomkit-examples --example watch_cgroup -- /sys/fs/cgroup/my.slice
//! ```

use oomkit::Cgroup;
use oomkit::events::{EventKind, Scope, Watcher};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: watch_cgroup CGROUP_DIR   (e.g. /sys/fs/cgroup/my.slice)");
        std::process::exit(2);
    };
    let cg = Cgroup::open(&path)?;
    let mut watcher = Watcher::with_capacity(4)?;
    let token = watcher.add_memory_events(&cg, Scope::Hierarchical)?;
    println!("watching {}/memory.events", path.to_string_lossy());
    loop {
        for ev in watcher.wait(None)?.iter() {
            if ev.token != token {
                continue;
            }
            match &ev.kind {
                EventKind::MemoryEvents(change) => {
                    for (kind, by) in change.rose() {
                        let now = change.current.get(kind).unwrap_or(0);
                        println!("{} +{by} (now {now})", kind.key());
                    }
                }
                EventKind::Gone => {
                    println!("cgroup removed");
                    return Ok(());
                }
                other => println!("{other:?}"),
            }
        }
    }
}
