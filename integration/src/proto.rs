//! The guest → host result channel.
//!
//! Lines go to `/dev/ttyS1`, a serial port only this protocol uses (the kernel's console is on
//! ttyS0, so kernel messages such as OOM reports can never be interleaved into a result line).
//! Each line is written with a single `write` and echoed to the console for humans. The format is
//! documented in the xtask (`xtask/src/report.rs`); every line starts with [`MARK`].

use std::fs::{File, OpenOptions};
use std::io::Write;

pub const MARK: &str = "@@OOMKIT@@";

/// Where protocol lines go.
pub struct Proto {
    port: Option<File>,
}

impl Proto {
    /// Open `/dev/ttyS1`; without it (running outside the VM) lines go to stdout only.
    pub fn open() -> Self {
        let port = OpenOptions::new().write(true).open("/dev/ttyS1").ok();
        if let Some(p) = &port {
            // Raw output: no NL -> CRNL translation, so lines arrive byte for byte.
            if let Ok(mut t) = rustix::termios::tcgetattr(p) {
                t.make_raw();
                let _ = rustix::termios::tcsetattr(p, rustix::termios::OptionalActions::Now, &t);
            }
        }
        Self { port }
    }

    /// Send one line (`kind` and its fields); newlines inside are replaced so a line stays a line.
    pub fn line(&mut self, kind: &str, rest: &str) {
        let text = format!("{MARK} {kind} {}\n", one_line(rest));
        if let Some(p) = &mut self.port {
            let _ = p.write_all(text.as_bytes());
        }
        if kind != "FILE" {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    /// Wait until everything written has left the serial port (before power-off).
    pub fn drain(&mut self) {
        if let Some(p) = &self.port {
            let _ = rustix::termios::tcdrain(p);
        }
    }
}

/// Collapse newlines and tabs so free text fits in one protocol line.
pub fn one_line(s: &str) -> String {
    s.trim_end()
        .chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Lower-case hex, as the `FILE` line carries file contents.
pub fn hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(one_line("a\nb\tc\n"), "a b c");
        assert_eq!(hex(b"max\n"), "6d61780a");
    }
}
