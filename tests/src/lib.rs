//! Cross-crate host tests live in `tests/tests/`: they run the shipped
//! example configs and handlers through the SDK's real `KernelHost` over
//! synthetic cgroup trees (plain files in a temporary folder), so the path
//! config → classification → snapshot → decision is checked end to end
//! without a kernel. Kernel behaviour itself is proven in `integration/`.
//!
//! This library holds the synthetic-tree builder they share.

use std::path::{Path, PathBuf};

/// A synthetic cgroup tree: directories with the files the loop reads.
#[derive(Debug)]
pub struct SyntheticTree {
    root: PathBuf,
}

impl SyntheticTree {
    /// A tree rooted at `root` (which must exist).
    pub fn new(root: &Path) -> Self {
        SyntheticTree {
            root: root.to_path_buf(),
        }
    }

    /// Adds the cgroup at hierarchy path `path` (for example
    /// `/kubepods.slice/x`) with `memory.current` in MiB, and adds that usage
    /// to every ancestor, as the kernel's hierarchical accounting does.
    pub fn cgroup(&self, path: &str, mib: u64) -> std::io::Result<()> {
        let rel = path.trim_start_matches('/');
        let dir = self.root.join(rel);
        std::fs::create_dir_all(&dir)?;
        let mut cur = Some(dir.as_path());
        while let Some(d) = cur {
            let f = d.join("memory.current");
            let before = std::fs::read_to_string(&f)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            std::fs::write(&f, format!("{}\n", before + (mib << 20)))?;
            if !d.join("cgroup.procs").exists() {
                std::fs::write(d.join("cgroup.procs"), "")?;
            }
            if d == self.root {
                break;
            }
            cur = d.parent();
        }
        Ok(())
    }
}
