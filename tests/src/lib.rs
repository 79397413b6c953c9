//! Test support: builders for synthetic cgroup trees.
