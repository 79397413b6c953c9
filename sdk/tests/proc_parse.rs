//! `/proc` parsers on files captured from this host's kernel (6.18) plus
//! malformed, truncated and empty input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use oomkit::ParseErrorKind;
use oomkit::proc::parse;

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/host/proc/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn status_of_a_user_process() {
    let st = parse::status(&fixture("sleep.status")).unwrap();
    assert_eq!(st.name.as_str(), "sleep");
    assert_eq!(st.state, Some(b'S'));
    assert_eq!(st.kthread, Some(false));
    assert_eq!(st.uid, Some(0));
    assert_eq!(st.euid, Some(0));
    assert!(st.ppid.unwrap() > 0);
    let (rss, a, f, s) = (
        st.vm_rss.unwrap(),
        st.rss_anon.unwrap(),
        st.rss_file.unwrap(),
        st.rss_shmem.unwrap(),
    );
    assert_eq!(rss, a + f + s, "VmRSS = RssAnon + RssFile + RssShmem");
    assert_eq!(rss % 1024, 0, "kB converted to bytes");
    assert!(rss > 100 * 1024);
    assert_eq!(st.vm_swap, Some(0));
    assert_eq!(st.vm_lck, Some(0));
    assert_eq!(st.threads, Some(1));
    assert_eq!(
        st.has_capability(21),
        Some(true),
        "root holds CAP_SYS_ADMIN"
    );
    assert!(!st.has_exited());
}

#[test]
fn status_of_kernel_threads_and_zombies() {
    let k = parse::status(&fixture("kthreadd.status")).unwrap();
    assert_eq!(k.name.as_str(), "kthreadd");
    assert_eq!(k.kthread, Some(true));
    assert_eq!(k.vm_rss, None, "no mm, no Vm lines");
    assert_eq!(k.ppid, Some(0));

    // Names longer than TASK_COMM_LEN are cut, not rejected.
    let w = parse::status(&fixture("kworker.status")).unwrap();
    assert_eq!(w.name.as_bytes(), b"kworker/R-kvfree");
    assert_eq!(w.kthread, Some(true));
    assert_eq!(w.state, Some(b'I'));

    let z = parse::status(&fixture("zombie.status")).unwrap();
    assert!(z.has_exited());
    assert_eq!(z.vm_rss, None);
}

#[test]
fn status_malformed() {
    assert_eq!(parse::status(b"").unwrap_err().kind, ParseErrorKind::Empty);
    assert_eq!(
        parse::status(b"\n\n").unwrap_err().kind,
        ParseErrorKind::Empty
    );
    assert_eq!(
        parse::status(b"State:\tR\n").unwrap_err().kind,
        ParseErrorKind::MissingKey("Name")
    );
    let e = parse::status(b"Name:\tx\nVmRSS:\t12x kB\n").unwrap_err();
    assert_eq!((e.line, e.kind), (2, ParseErrorKind::InvalidNumber));
    let e = parse::status(b"Name:\tx\ngarbage line\n").unwrap_err();
    assert_eq!((e.line, e.kind), (2, ParseErrorKind::MalformedLine));
    assert_eq!(
        parse::status(b"Name:\tx\nKthread:\t2\n").unwrap_err().kind,
        ParseErrorKind::InvalidNumber
    );
    // Unknown keys are ignored; a value of a known key may lack "kB".
    let st = parse::status(b"Name:\tx\nNewKey:\twhatever\nVmSwap:\t4\n").unwrap();
    assert_eq!(st.vm_swap, Some(4096));
}

#[test]
fn status_truncated_keeps_complete_lines() {
    let full = fixture("sleep.status");
    let cut_at = full.windows(6).position(|w| w == b"VmSwap").unwrap() + 3;
    let cut = &full[..cut_at];
    let st = parse::status(parse::complete_lines(cut)).unwrap();
    assert!(st.rss_anon.is_some());
    assert_eq!(st.vm_swap, None, "the cut line is dropped, not misread");
    // Without dropping it, "VmS" is a malformed line.
    assert_eq!(
        parse::status(cut).unwrap_err().kind,
        ParseErrorKind::MalformedLine
    );
    assert_eq!(parse::complete_lines(b"no newline"), b"");
}

#[test]
fn stat_fields_and_kthread_flag() {
    let s = parse::stat(&fixture("sleep.stat")).unwrap();
    assert_eq!(s.comm.as_str(), "sleep");
    assert_eq!(s.state, b'S');
    assert!(!s.is_kernel_thread());
    assert_eq!(s.num_threads, 1);
    assert_eq!(s.nice, 0);
    assert_eq!(s.policy, Some(0));
    assert!(s.rss_pages > 0 && s.vsize > 0 && s.starttime > 0);

    let k = parse::stat(&fixture("kthreadd.stat")).unwrap();
    assert_eq!(k.pid, 2);
    assert!(k.is_kernel_thread());
    let w = parse::stat(&fixture("kworker.stat")).unwrap();
    assert!(w.is_kernel_thread());
    assert_eq!(w.nice, -20, "negative fields parse");
    let z = parse::stat(&fixture("zombie.stat")).unwrap();
    assert_eq!(z.state, b'Z');
}

#[test]
fn stat_comm_with_spaces_and_parens() {
    let line = b"42 (a) b (c)) R 1 42 42 0 -1 4194304 1 0 0 0 0 0 0 0 20 0 1 0 99 4096 3 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0\n";
    let s = parse::stat(line).unwrap();
    assert_eq!(s.pid, 42);
    assert_eq!(s.comm.as_str(), "a) b (c)");
    assert_eq!(s.state, b'R');
    assert_eq!(s.ppid, 1);
    assert_eq!(s.rss_pages, 3);
    assert_eq!(s.rt_priority, Some(0));
    assert_eq!(s.policy, Some(0));
}

#[test]
fn stat_malformed() {
    assert_eq!(parse::stat(b"").unwrap_err().kind, ParseErrorKind::Empty);
    assert_eq!(
        parse::stat(b"1 no-parens S 0").unwrap_err().kind,
        ParseErrorKind::MalformedLine
    );
    assert_eq!(
        parse::stat(b"1 (x) S 0 1 1").unwrap_err().kind,
        ParseErrorKind::MissingKey("rss")
    );
    let full = fixture("sleep.stat");
    // Truncated in the middle: too few fields.
    assert!(parse::stat(&full[..40]).is_err());
    let bad = String::from_utf8(full).unwrap().replacen(" S ", " S x", 1);
    assert_eq!(
        parse::stat(bad.as_bytes()).unwrap_err().kind,
        ParseErrorKind::InvalidNumber
    );
}

#[test]
fn statm_smaps_cmdline_oom_score() {
    let m = parse::statm(&fixture("sleep.statm")).unwrap();
    assert!(m.resident > 0 && m.shared <= m.resident && m.size >= m.resident);
    assert!(parse::statm(b"1 2 3").is_err());
    assert!(parse::statm(b"1 2 3 4 5 6 7 8").is_err());
    assert!(parse::statm(b"").is_err());

    let r = parse::smaps_rollup(&fixture("sleep.smaps_rollup")).unwrap();
    assert!(r.rss.unwrap() > 0);
    assert!(r.pss.unwrap() <= r.rss.unwrap());
    assert_eq!(r.swap, Some(0));
    assert!(parse::smaps_rollup(b"").is_err());
    assert!(parse::smaps_rollup(b"Rss: lots kB\n").is_err());

    assert_eq!(parse::cmdline(&fixture("sleep.cmdline")), ["sleep", "30"]);
    let args = parse::cmdline(&fixture("args.cmdline"));
    assert_eq!(
        args,
        ["worker", "31", "two words", "", "x"],
        "empty argument kept"
    );
    assert!(parse::cmdline(b"").is_empty());
    assert_eq!(parse::cmdline(b"a\0\0b\0"), ["a", "", "b"]);
    assert_eq!(
        parse::cmdline(b"nginx: worker process"),
        ["nginx: worker process"]
    );
    assert_eq!(parse::cmdline(b"\xff\0"), ["\u{fffd}"]);

    assert_eq!(
        parse::oom_score(&fixture("sleep.oom_score_adj")).unwrap(),
        0
    );
    assert_eq!(parse::oom_score(b"-1000\n").unwrap(), -1000);
    assert_eq!(parse::oom_score(b"1000").unwrap(), 1000);
    assert!(parse::oom_score(b"-1001").is_err());
    assert!(parse::oom_score(b"").is_err());
    assert!(parse::oom_score(b"1\n2\n").is_err());
    assert!(parse::oom_score(b"--5").is_err());
}

#[test]
fn meminfo_and_vmstat() {
    let m = parse::meminfo(&fixture("meminfo")).unwrap();
    let total = m.mem_total.unwrap();
    assert!(total > 1 << 30, "bytes, not kB");
    assert!(m.mem_free.unwrap() <= total);
    assert!(m.mem_available.unwrap() <= total);
    assert!(m.cached.is_some() && m.active_anon.is_some() && m.inactive_file.is_some());
    assert_eq!(m.swap_total, Some(0));
    assert!(m.committed_as.is_some());

    let v = parse::vmstat(&fixture("vmstat")).unwrap();
    assert_eq!(v.oom_kill, Some(0));
    assert_eq!(v.pswpin, Some(0));
    assert!(v.workingset_refault_file.is_some());
    assert!(v.pgscan_proactive.is_some(), "6.x key");
    assert_eq!(v.workingset_refault, None, "pre-5.9 key absent");
    assert_eq!(
        v.refaults(),
        v.workingset_refault_anon.unwrap() + v.workingset_refault_file.unwrap()
    );
    assert_eq!(v.pgscan(), 0);

    // Old kernel: single refault counter.
    let old = parse::vmstat(b"workingset_refault 7\npgscan_kswapd 3\npgscan_direct 4\n").unwrap();
    assert_eq!(old.refaults(), 7);
    assert_eq!(old.pgscan(), 7);

    assert_eq!(parse::meminfo(b"").unwrap_err().kind, ParseErrorKind::Empty);
    let e = parse::meminfo(b"MemTotal: 1 kB\nMemFree: x kB\n").unwrap_err();
    assert_eq!((e.line, e.kind), (2, ParseErrorKind::InvalidNumber));
    assert!(matches!(
        parse::meminfo(b"MemTotal: 1 kB\nMemTotal: 2 kB\n")
            .unwrap_err()
            .kind,
        ParseErrorKind::DuplicateKey(_)
    ));
    assert_eq!(
        parse::meminfo(b"NoColonHere\n").unwrap_err().kind,
        ParseErrorKind::MalformedLine
    );
    assert_eq!(
        parse::vmstat(b"oom_kill\n").unwrap_err().kind,
        ParseErrorKind::MalformedLine
    );
    // Unknown keys ignored; truncation drops the cut line.
    let v = parse::vmstat(b"brand_new_counter 5\noom_kill 2\n").unwrap();
    assert_eq!(v.oom_kill, Some(2));
    let full = fixture("vmstat");
    let cut = parse::complete_lines(&full[..full.len() / 2]);
    assert!(parse::vmstat(cut).is_ok());
}

#[test]
fn proc_cgroup_line() {
    assert_eq!(parse::cgroup_v2_path(b"0::/a/b\n"), Some(&b"/a/b"[..]));
    assert_eq!(
        parse::cgroup_v2_path(b"4:memory:/x\n0::/user.slice\n"),
        Some(&b"/user.slice"[..])
    );
    assert_eq!(parse::cgroup_v2_path(b"4:memory:/x\n"), None);
    assert_eq!(parse::cgroup_v2_path(b""), None);
}

/// Issue 10, defect 2: the kernel rejects only `\n` in cgroup names, so
/// `"job "` and `" job"` are valid; trimming made every membership check of
/// such a cgroup fail, and its processes unkillable.
#[test]
fn proc_cgroup_line_keeps_whitespace_in_names() {
    assert_eq!(
        parse::cgroup_v2_path(b"0::/t/job \n"),
        Some(&b"/t/job "[..])
    );
    assert_eq!(
        parse::cgroup_v2_path(b"0::/t/ job\t\n"),
        Some(&b"/t/ job\t"[..])
    );
    // A last line without its newline is taken whole.
    assert_eq!(parse::cgroup_v2_path(b"0::/t/x "), Some(&b"/t/x "[..]));
}
