//! A guest driven over its serial console by the delegate in the guest's init.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::vmm::{BootSpec, Vmm};
use crate::{Error, Result};

/// Default time allowed for a boot to reach the delegate.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Default time allowed for one command.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Output of a command run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// Combined stdout+stderr, `\r` removed.
    pub output: String,
    /// Exit status of the shell script.
    pub status: i32,
}

#[derive(Default)]
struct Console {
    /// Everything the guest printed, `\r` removed.
    text: String,
    /// Set when the console reached EOF (process closed it).
    eof: bool,
    /// When the first and the latest bytes of stdout (the console itself, not stderr) arrived.
    stdout_span: Option<(Instant, Instant)>,
}

/// A running guest (or any process whose stdio is a guest console). Killed on drop.
pub struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    seq: u64,
    /// Read position: output before it belongs to earlier commands.
    cursor: usize,
    started: Instant,
    userspace_at: Option<Duration>,
    exit: Option<ExitStatus>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Guest {
    /// Boot `spec` under `vmm` and wait until the delegate is ready.
    pub fn boot(vmm: &Vmm, spec: &BootSpec) -> Result<Guest> {
        let mut g = Guest::spawn(spec.command(vmm), &format!("{vmm:?}"))?;
        g.wait_ready(BOOT_TIMEOUT)?;
        Ok(g)
    }

    /// Spawn `cmd` with piped stdio as the guest console (e.g. `xl create -c cfg`). Its stderr is
    /// merged into the transcript too. The process gets its own process group.
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Guest> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| Error::Spawn {
            what: what.to_string(),
            source: e,
        })?;
        let console: Arc<(Mutex<Console>, Condvar)> = Arc::default();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut open = 0;
        if let Some(s) = stdout {
            open += 1;
            pump(s, console.clone());
        }
        if let Some(s) = stderr {
            pump_stderr(s, console.clone());
        }
        debug_assert!(open == 1);
        Ok(Guest {
            stdin: child.stdin.take(),
            child,
            console,
            seq: 0,
            cursor: 0,
            started,
            userspace_at: None,
            exit: None,
        })
    }

    /// Wait for the first `RXEN-READY` of the delegate (records the userspace marker time).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let at = self.wait_for("RXEN-USERSPACE", timeout)?;
        self.userspace_at = Some(at);
        self.wait_for("RXEN-READY", timeout)?;
        Ok(())
    }

    /// Time from process start to the guest's first userspace marker.
    pub fn time_to_userspace(&self) -> Option<Duration> {
        self.userspace_at
    }

    /// Wait until `pattern` appears in the console after the cursor; moves the cursor past it.
    /// Returns the time since spawn when it was seen.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(pos) = c.text[self.cursor..].find(pattern) {
                self.cursor += pos + pattern.len();
                return Ok(self.started.elapsed());
            }
            if c.eof {
                let tail = tail(&c.text);
                drop(c);
                let status = self.reap(Duration::from_secs(5));
                return Err(Error::Exited {
                    status,
                    what: pattern.to_string(),
                    tail,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: pattern.to_string(),
                    secs: timeout.as_secs_f64(),
                    tail: tail(&c.text),
                });
            }
            c = cv
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Run a shell script in the guest; returns its output and exit status.
    pub fn run(&mut self, script: &str) -> Result<CmdOutput> {
        self.run_timeout(script, RUN_TIMEOUT)
    }

    /// [`Guest::run`] with an explicit timeout.
    pub fn run_timeout(&mut self, script: &str, timeout: Duration) -> Result<CmdOutput> {
        self.seq += 1;
        let seq = self.seq;
        self.send_line(&format!("{seq} {}", base64(script.as_bytes())))?;
        let begin = format!("RXEN-BEGIN {seq}\n");
        self.wait_for(&begin, timeout)?;
        let start = self.cursor;
        let end = format!("\nRXEN-END {seq} ");
        self.wait_for(&end, timeout)?;
        let out_end = self.cursor - end.len();
        self.wait_for("\n", timeout)?;
        let (lock, _) = &*self.console;
        let c = lock.lock().unwrap_or_else(|e| e.into_inner());
        let output = c.text[start..out_end].to_string();
        let status_text = c.text[out_end + end.len()..self.cursor - 1]
            .trim()
            .to_string();
        let status = status_text.parse().unwrap_or(-1);
        Ok(CmdOutput { output, status })
    }

    /// Run a script that must succeed; returns its output.
    pub fn check(&mut self, script: &str) -> Result<String> {
        let o = self.run(script)?;
        if o.status != 0 {
            return Err(Error::Unsupported(format!(
                "guest command `{script}` failed with status {}: {}",
                o.status, o.output
            )));
        }
        Ok(o.output)
    }

    /// Start a script in the guest without waiting for it to finish (e.g. `poweroff -f`).
    pub fn send(&mut self, script: &str) -> Result<()> {
        self.seq += 1;
        let line = format!("{} {}", self.seq, base64(script.as_bytes()));
        self.send_line(&line)
    }

    /// Write raw bytes to the console.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        match self.stdin.as_mut() {
            Some(s) => {
                s.write_all(bytes)?;
                s.flush()?;
                Ok(())
            }
            None => Err(Error::Unsupported("console input already closed".into())),
        }
    }

    fn send_line(&mut self, line: &str) -> Result<()> {
        self.write_raw(format!("{line}\n").as_bytes())
    }

    /// Close the console input (like a pipe ending).
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.exit {
            return Ok(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                self.exit = Some(s);
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "process exit".into(),
                    secs: timeout.as_secs_f64(),
                    tail: self.transcript_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn reap(&mut self, timeout: Duration) -> String {
        match self.wait_exit(timeout) {
            Ok(s) => s.to_string(),
            Err(_) => "still running".into(),
        }
    }

    /// PID of the spawned process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the first and the latest console bytes (stdout only) arrived, as read by this
    /// process: the guest's activity as the host sees it (e.g. a heartbeat across a migration).
    pub fn output_span(&self) -> Option<(Instant, Instant)> {
        let (lock, _) = &*self.console;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stdout_span
    }

    /// Whole console transcript so far.
    pub fn transcript(&self) -> String {
        let (lock, _) = &*self.console;
        lock.lock().unwrap_or_else(|e| e.into_inner()).text.clone()
    }

    fn transcript_tail(&self) -> String {
        tail(&self.transcript())
    }

    /// Kill the whole process group now.
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let pgid = self.child.id() as i32;
            // SAFETY: kill(2) with a negative pid signals the process group we created with
            // process_group(0); it has no memory-safety preconditions.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            self.exit = self.child.wait().ok();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // Kill the group even after the leader exited: children (e.g. a VMM spawned by `xl`)
        // may still be alive in it.
        let pgid = self.child.id() as i32;
        // SAFETY: as in `kill`: signalling our own process group has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- guest console transcript (pid {}) -----\n{}\n-----",
                self.child.id(),
                self.transcript_tail()
            );
        }
    }
}

fn tail(s: &str) -> String {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

fn append(console: &Arc<(Mutex<Console>, Condvar)>, bytes: &[u8], eof: bool) {
    let (lock, cv) = &**console;
    let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
    c.text.extend(
        String::from_utf8_lossy(bytes)
            .chars()
            .filter(|&ch| ch != '\r'),
    );
    if eof {
        c.eof = true;
    }
    cv.notify_all();
}

fn pump(mut r: impl Read + Send + 'static, console: Arc<(Mutex<Console>, Condvar)>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => {
                    append(&console, &[], true);
                    break;
                }
                Ok(n) => {
                    let now = Instant::now();
                    {
                        let mut c = console.0.lock().unwrap_or_else(|e| e.into_inner());
                        let first = c.stdout_span.map_or(now, |(f, _)| f);
                        c.stdout_span = Some((first, now));
                    }
                    append(&console, &buf[..n], false)
                }
            }
        }
    });
}

fn pump_stderr(mut r: impl Read + Send + 'static, console: Arc<(Mutex<Console>, Condvar)>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            append(&console, &buf[..n], false);
        }
    });
}

/// Standard base64 (RFC 4648) encoding, as busybox `base64 -d` expects.
pub(crate) fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    /// The delegate protocol, exercised against a shell that plays the guest (no VM needed).
    #[test]
    fn delegate_protocol_against_a_fake_console() {
        let script = r#"
            echo RXEN-USERSPACE
            while true; do
              echo RXEN-READY
              read -r seq b64 || exit 0
              echo "$b64" | base64 -d > "$T/cmd"
              echo "RXEN-BEGIN $seq"
              sh "$T/cmd" </dev/null 2>&1
              rc=$?
              printf '\nRXEN-END %s %s\n' "$seq" "$rc"
            done"#;
        let dir = std::env::temp_dir().join(format!("rxen-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).env("T", &dir);
        let mut g = Guest::spawn(cmd, "fake console").unwrap();
        g.wait_ready(Duration::from_secs(10)).unwrap();
        let o = g
            .run("echo hello; echo 'quote \" and $HOME'; exit 3")
            .unwrap();
        assert_eq!(o.status, 3);
        assert_eq!(o.output, "hello\nquote \" and $HOME\n");
        let o = g.run("printf no-newline").unwrap();
        assert_eq!((o.output.as_str(), o.status), ("no-newline", 0));
        assert!(g.check("false").is_err());
        g.close_input();
        assert!(g.wait_exit(Duration::from_secs(10)).unwrap().success());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wait_for_reports_exit_with_transcript() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo booting; exit 5");
        let mut g = Guest::spawn(cmd, "exiting").unwrap();
        match g.wait_for("RXEN-READY", Duration::from_secs(10)) {
            Err(Error::Exited { tail, .. }) => assert!(tail.contains("booting")),
            other => panic!("expected Exited, got {other:?}"),
        }
    }
}
