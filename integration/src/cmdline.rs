//! The guest's instructions, passed by the xtask on the kernel command line as `oomkit.*=…`
//! (dotted names are not handed to init as arguments, so they are read from `/proc/cmdline`).

/// What the guest should do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestArgs {
    /// `run` (tests), `fixtures` (capture kernel files) or `probe` (report and power off).
    pub mode: String,
    /// Only tests whose name contains this.
    pub filter: Option<String>,
}

/// Parse a kernel command line.
pub fn parse(cmdline: &str) -> GuestArgs {
    let mut args = GuestArgs {
        mode: "run".to_string(),
        filter: None,
    };
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("oomkit.mode=") {
            args.mode = v.to_string();
        } else if let Some(v) = word.strip_prefix("oomkit.filter=") {
            args.filter = Some(v.to_string()).filter(|f| !f.is_empty());
        }
    }
    args
}

/// Read and parse `/proc/cmdline`.
pub fn from_proc() -> GuestArgs {
    parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mode_and_filter() {
        let a = parse("console=ttyS0 panic=-1 oomkit.mode=fixtures oomkit.filter=smoke\n");
        assert_eq!(a.mode, "fixtures");
        assert_eq!(a.filter.as_deref(), Some("smoke"));
        assert_eq!(parse("quiet").mode, "run");
    }
}
