//! Save and restore (`xl save`, `xl restore`): save files in Xen's xl format (save-file header
//! + the domain's libxl JSON config) followed by the VMM's rxen stream (`rxen-migration`).
//!
//! * save: write the header and config, ask the VMM to pause and append its state, then destroy
//!   the domain (or keep it with `-c`, paused with `-p`). If the VMM fails, the file is removed and
//!   the domain resumes as it was.
//! * restore: read the header and config, verify the whole stream (framing, checksums, END)
//!   **before** creating anything, then create the domain (new domid, same name and UUID) with
//!   its supervisor starting `rxen-vmm --restore FILE`.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rxen_config::model::DomainConfig;
use rxen_migration::xlfile::{self, SaveFileHeader};
use rxen_vmm::api::{ApiClient, Command as ApiCmd};
use rxen_xenstore::Client;

use crate::build::DomainJob;
use crate::registry::{self, DomState, DomainRecord};
use crate::supervisor::job_path;
use crate::{io_err, Error, Paths, Result};

const RESTORE_MARK: &str = "restore-from";

/// Records that the next VMM of the domain whose runtime directory is `dir` restores from `file`.
pub fn mark_restore(dir: &Path, file: &Path) -> Result<()> {
    let abs = std::path::absolute(file).map_err(io_err(format!("{}", file.display())))?;
    std::fs::write(dir.join(RESTORE_MARK), abs.as_os_str().as_encoded_bytes()).map_err(io_err(
        format!("writing {}", dir.join(RESTORE_MARK).display()),
    ))
}

/// Takes (reads and removes) the restore mark: only the first VMM of a domain restores; a later
/// restart (`on_reboot=restart`) boots afresh.
pub fn take_restore(dir: &Path) -> Option<PathBuf> {
    let p = dir.join(RESTORE_MARK);
    let v = std::fs::read_to_string(&p).ok()?;
    let _ = std::fs::remove_file(&p);
    Some(PathBuf::from(v.trim_end_matches('\n')))
}

/// Options of `xl save`.
#[derive(Debug, Clone, Default)]
pub struct SaveOpts {
    /// `-c`: leave the domain running after saving.
    pub keep: bool,
    /// `-p`: leave the domain paused after saving (implies keeping it).
    pub leave_paused: bool,
}

/// What a save did.
#[derive(Debug, Clone)]
pub struct SaveReport {
    /// Domain id.
    pub domid: u32,
    /// Domain name.
    pub name: String,
    /// The xl header written (flags and optional data length, for xl's message).
    pub header: SaveFileHeader,
    /// Bytes of rxen stream.
    pub stream_bytes: u64,
    /// Guest pages saved.
    pub pages: u64,
    /// Time the VMM spent (paused), in milliseconds.
    pub millis: u64,
}

/// The configuration the domain runs with, as Xen would embed it in a save file: the libxl JSON
/// written at creation, with the MAC addresses rxen generated for NICs that had none.
pub fn domain_config(paths: &Paths, rec: &DomainRecord) -> Result<DomainConfig> {
    let p = paths.userdata(rec.domid, &rec.uuid);
    let text = std::fs::read_to_string(&p).map_err(io_err(format!("reading {}", p.display())))?;
    let mut cfg = DomainConfig::from_libxl_json(&text)
        .map_err(|e| Error::Other(format!("{}: {e}", p.display())))?;
    if let Ok(b) = std::fs::read(job_path(paths, rec.domid)) {
        if let Ok(job) = serde_json::from_slice::<DomainJob>(&b) {
            for (nic, (_, kv)) in cfg.nics.iter_mut().zip(&job.vifs) {
                if nic.mac.is_none() {
                    nic.mac = kv.iter().find(|(k, _)| k == "mac").map(|(_, v)| v.clone());
                }
            }
        }
    }
    Ok(cfg)
}

fn api(paths: &Paths, domid: u32) -> Result<ApiClient> {
    let sock = paths.domain_run_dir(domid).join("vmm.sock");
    let mut c = ApiClient::connect(&sock).map_err(|source| Error::Vmm { domid, source })?;
    c.set_timeout(None)
        .map_err(|source| Error::Vmm { domid, source })?;
    Ok(c)
}

/// `xl save [-c|-p] dom file [cfg]`.
pub fn save(
    paths: &Paths,
    xs: &Client,
    dom: &str,
    file: &Path,
    cfg_override: Option<&DomainConfig>,
    opts: &SaveOpts,
) -> Result<SaveReport> {
    let rec = registry::resolve(xs, dom)?;
    if rec.domid == 0 {
        return Err(Error::Other("cannot save Domain-0 (the host)".into()));
    }
    if let DomState::Shutdown(_) = rec.state {
        return Err(Error::Other(format!(
            "domain {} is shut down; nothing to save",
            rec.domid
        )));
    }
    let cfg = match cfg_override {
        Some(c) => c.clone(),
        None => domain_config(paths, &rec)?,
    };
    let json = cfg.to_libxl_json();
    let abs = std::path::absolute(file).map_err(io_err(format!("{}", file.display())))?;
    let write_header = || -> std::io::Result<u64> {
        let mut f = File::create(&abs)?;
        let n = xlfile::write_header(&mut f, &json)?;
        f.flush()?;
        Ok(n)
    };
    let hlen = write_header().map_err(io_err(format!("writing {}", abs.display())))?;
    let header = SaveFileHeader {
        mandatory_flags: xlfile::MANDATORY_FLAG_JSON | xlfile::MANDATORY_FLAG_STREAMV2,
        optional_flags: 0,
        config: Some(json),
        len: hlen,
    };
    let was_paused = rec.state == DomState::Paused;
    let saved = api(paths, rec.domid).and_then(|mut c| {
        c.request(ApiCmd::Save { path: abs.clone() })
            .map_err(|source| Error::Vmm {
                domid: rec.domid,
                source,
            })
    });
    let sum = match saved {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&abs);
            if !was_paused {
                let _ = api(paths, rec.domid).and_then(|mut c| {
                    c.request(ApiCmd::Unpause).map_err(|source| Error::Vmm {
                        domid: rec.domid,
                        source,
                    })
                });
            }
            return Err(e);
        }
    };
    let report = SaveReport {
        domid: rec.domid,
        name: rec.name.clone(),
        header,
        stream_bytes: sum["bytes"].as_u64().unwrap_or(0),
        pages: sum["pages"].as_u64().unwrap_or(0),
        millis: sum["millis"].as_u64().unwrap_or(0),
    };
    if opts.keep || opts.leave_paused {
        if opts.leave_paused || was_paused {
            registry::set_state(xs, rec.domid, DomState::Paused)?;
        } else {
            api(paths, rec.domid)?
                .request(ApiCmd::Unpause)
                .map_err(|source| Error::Vmm {
                    domid: rec.domid,
                    source,
                })?;
            registry::set_state(xs, rec.domid, DomState::Running)?;
        }
    } else {
        crate::ops::destroy(paths, xs, &rec.domid.to_string())?;
    }
    Ok(report)
}

/// A save file opened for restore: its header, the config it carries, and the stream check.
#[derive(Debug, Clone)]
pub struct SaveFile {
    /// The xl header.
    pub header: SaveFileHeader,
    /// What the stream holds.
    pub stream: rxen_migration::StreamSummary,
}

/// Reads and checks a save file completely (header, config, every stream record). A bad file
/// is refused here, before anything is created.
pub fn check_save_file(file: &Path) -> Result<SaveFile> {
    let bad = |e: String| Error::Other(format!("{}: {e}", file.display()));
    let mut f = File::open(file).map_err(io_err(format!("opening {}", file.display())))?;
    let header = xlfile::read_header(&mut f).map_err(|e| bad(e.to_string()))?;
    f.seek(SeekFrom::Start(header.len))
        .map_err(io_err(format!("reading {}", file.display())))?;
    if header.mandatory_flags & xlfile::MANDATORY_FLAG_STREAMV2 == 0 {
        return Err(bad(
            "legacy (pre-stream-v2) save files are not supported".into()
        ));
    }
    let stream = rxen_migration::verify(BufReader::with_capacity(1 << 20, f))
        .map_err(|e| bad(format!("not restorable: {e}")))?;
    Ok(SaveFile { header, stream })
}

/// The domain configuration embedded in a save file.
pub fn embedded_config(file: &Path, sf: &SaveFile) -> Result<DomainConfig> {
    let text =
        sf.header.config.as_deref().ok_or_else(|| {
            Error::Other(format!("{}: Savefile has no config data", file.display()))
        })?;
    DomainConfig::from_libxl_json(text)
        .map_err(|e| Error::Other(format!("{}: embedded config: {e}", file.display())))
}

/// Options of `xl restore`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    /// `-p`: leave the restored domain paused.
    pub paused: bool,
}

/// `xl restore [-p] [cfg] file`: creates the domain (new domid, same name and UUID) from the
/// checked save file; nothing is created when the file is bad.
pub fn restore(
    paths: &Paths,
    xs: &Client,
    file: &Path,
    sf: &SaveFile,
    cfg: &DomainConfig,
    opts: &RestoreOpts,
) -> Result<u32> {
    let _ = sf;
    crate::ops::create_from(
        paths,
        xs,
        cfg,
        &crate::ops::CreateOpts {
            paused: opts.paused,
        },
        Some(file),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_runes_for_ssh_exec_tls_and_tcp() {
        let mut o = MigrateOpts::default();
        assert_eq!(transport_rune(&o, "b"), "exec ssh b xl migrate-receive");
        o.paused = true;
        o.ssh_command = Some("ssh -p 2222".into());
        assert_eq!(
            transport_rune(&o, "b"),
            "exec ssh -p 2222 b xl migrate-receive -p"
        );
        o.ssh_command = Some(String::new());
        assert_eq!(transport_rune(&o, "my cmd"), "my cmd");
        // The relocation service: -s does not apply; flags travel in the request line.
        let tls = transport_rune(&o, "tls://10.0.0.2:8003");
        assert!(
            tls.starts_with("exec ") && tls.ends_with(" relocation-connect 10.0.0.2:8003 -p"),
            "{tls}"
        );
        o.paused = false;
        o.debug = true;
        let tcp = transport_rune(&o, "tcp://h");
        assert!(
            tcp.ends_with(" relocation-connect --insecure h -d"),
            "{tcp}"
        );
        let odd = transport_rune(&o, "tls://h;rm");
        assert!(odd.ends_with(" relocation-connect 'h;rm' -d"), "{odd}");
    }

    #[test]
    fn restore_mark_is_taken_once() {
        let d = tempfile::tempdir().unwrap();
        assert!(take_restore(d.path()).is_none());
        mark_restore(d.path(), Path::new("/x/y.save")).unwrap();
        assert_eq!(take_restore(d.path()), Some(PathBuf::from("/x/y.save")));
        assert!(take_restore(d.path()).is_none());
    }

    #[test]
    fn bad_save_files_are_refused_by_the_check() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"not a save file at all, clearly not").unwrap();
        let e = check_save_file(&p).unwrap_err().to_string();
        assert!(e.contains("wrong magic number"), "{e}");
        let mut v = Vec::new();
        xlfile::write_header(&mut v, "{}").unwrap();
        std::fs::write(&p, &v).unwrap();
        let e = check_save_file(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut w = rxen_migration::StreamWriter::new(Vec::new(), b"{}").unwrap();
        w.write_vcpu(b"{}").unwrap();
        w.write_machine(b"{}").unwrap();
        v.extend(w.finish().unwrap());
        std::fs::write(&p, &v).unwrap();
        let sf = check_save_file(&p).unwrap();
        assert_eq!(sf.stream.vcpus, 1);
        assert_eq!(sf.header.config.as_deref(), Some("{}"));
        let n = v.len();
        v[n - 15] ^= 1;
        std::fs::write(&p, &v).unwrap();
        let e = check_save_file(&p).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}

/// Xen's migration handshake (tools/xl/xl_migrate.c). The banner is sent without its NUL, the
/// other three messages with it.
pub mod handshake {
    /// Receiver → sender, first.
    pub const BANNER: &[u8] = b"xl migration receiver ready, send binary domain data.\n";
    /// Receiver → sender once the domain is rebuilt (paused).
    pub const READY: &[u8] = b"domain received, ready to unpause\0";
    /// Sender → receiver: the source is stopped for good.
    pub const PERMISSION: &[u8] = b"domain is yours, you are cleared to unpause\0";
    /// Receiver → sender, followed by one status byte (0 = running).
    pub const REPORT: &[u8] = b"my copy unpause results are as follows\0";
}

/// Reads exactly `msg` from `fd` within `timeout`; errors name `what`.
fn expect_message(
    r: &mut impl std::io::Read,
    fd: std::os::unix::io::RawFd,
    msg: &[u8],
    timeout: std::time::Duration,
    what: &str,
) -> Result<()> {
    let mut got = vec![0u8; msg.len()];
    read_exact_timeout(r, fd, &mut got, timeout, what)?;
    if got != msg {
        return Err(Error::Other(format!(
            "{what}: expected {:?}, got {:?}",
            String::from_utf8_lossy(msg),
            String::from_utf8_lossy(&got)
        )));
    }
    Ok(())
}

fn read_exact_timeout(
    r: &mut impl std::io::Read,
    fd: std::os::unix::io::RawFd,
    buf: &mut [u8],
    timeout: std::time::Duration,
    what: &str,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut off = 0;
    while off < buf.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(format!(
                "{what}: no answer within {timeout:?}"
            )));
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
        if n <= 0 {
            continue;
        }
        match r.read(&mut buf[off..]) {
            Ok(0) => {
                return Err(Error::Other(format!(
                    "{what}: the other side closed the connection"
                )))
            }
            Ok(k) => off += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(what.to_string())(e)),
        }
    }
    Ok(())
}

/// Options of `xl migrate`.
#[derive(Debug, Clone, Default)]
pub struct MigrateOpts {
    /// `-s`: the ssh command (`None`: `ssh`; empty: run `host` itself as the transport command).
    pub ssh_command: Option<String>,
    /// `--debug`: ask the receiver for debug output.
    pub debug: bool,
    /// `-p`: leave the domain paused on the destination.
    pub paused: bool,
    /// `-C`: use this config instead of the domain's.
    pub cfg_override: Option<DomainConfig>,
    /// Downtime target and bounds.
    pub live: rxen_vmm::vm::LiveOpts,
}

/// Progress of a migration as the stream passes through the sender.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Pre-copy round just finished (0 = still sending all memory).
    pub round: u32,
    /// Bytes sent so far.
    pub bytes: u64,
    /// Average rate so far, bytes per second.
    pub rate: f64,
    /// Dirty bytes the next round sends.
    pub remaining: u64,
    /// The stream is complete.
    pub done: bool,
}

/// What a migration did.
#[derive(Debug, Clone)]
pub struct MigrateReport {
    /// Source domain id.
    pub domid: u32,
    /// Domain name.
    pub name: String,
    /// The VMM's account of the stream.
    pub summary: rxen_vmm::vm::LiveSummary,
    /// From the start to the destination's confirmation, in milliseconds.
    pub total_ms: u64,
    /// From the source's pause to the destination's "running" report, in milliseconds (an upper
    /// bound of the guest's downtime).
    pub downtime_ms: u64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The transport command line, as Xen builds it: `ssh HOST xl migrate-receive`, or the
/// relocation service for `tls://HOST[:PORT]` (mutual TLS) and `tcp://HOST[:PORT]` (plain
/// TCP, only when the user writes it).
pub fn transport_rune(opts: &MigrateOpts, host: &str) -> String {
    let flags = format!(
        "{}{}",
        if opts.debug { " -d" } else { "" },
        if opts.paused { " -p" } else { "" }
    );
    let relocation = |target: &str, insecure: &str| {
        format!(
            "exec {} relocation-connect{insecure} {}{flags}",
            crate::relocation::sibling_binary("rxen"),
            shell_quote(target)
        )
    };
    if let Some(t) = host.strip_prefix("tls://") {
        return relocation(t, "");
    }
    if let Some(t) = host.strip_prefix("tcp://") {
        return relocation(t, " --insecure");
    }
    match opts.ssh_command.as_deref() {
        Some("") => host.to_string(),
        ssh => format!(
            "exec {} {host} xl migrate-receive{}{}",
            ssh.unwrap_or("ssh"),
            if opts.debug { " -d" } else { "" },
            if opts.paused { " -p" } else { "" }
        ),
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-:/@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `xl migrate dom host`: live-migrates `dom` to the `xl migrate-receive` at the other end of
/// the transport. The source keeps running (or is resumed) unless the destination confirms it
/// runs the domain; then the source is destroyed.
pub fn migrate_send(
    paths: &Paths,
    xs: &Client,
    dom: &str,
    host: &str,
    opts: &MigrateOpts,
    progress: &mut dyn FnMut(&Progress),
) -> Result<MigrateReport> {
    use std::os::unix::io::AsRawFd;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let t0 = Instant::now();
    let rec = registry::resolve(xs, dom)?;
    if rec.domid == 0 {
        return Err(Error::Other("cannot migrate Domain-0 (the host)".into()));
    }
    if rec.state != DomState::Running && rec.state != DomState::Paused {
        return Err(Error::Other(format!("domain {} is not running", rec.domid)));
    }
    let cfg = match &opts.cfg_override {
        Some(c) => c.clone(),
        None => domain_config(paths, &rec)?,
    };
    let rune = transport_rune(opts, host);
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&rune)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting the migration transport `{rune}`")))?;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut to = child
        .stdin
        .take()
        .ok_or_else(|| Error::Other("no pipe".into()))?;
    let mut from = child
        .stdout
        .take()
        .ok_or_else(|| Error::Other("no pipe".into()))?;
    let child = Kill(child);
    let from_fd = from.as_raw_fd();
    expect_message(
        &mut from,
        from_fd,
        handshake::BANNER,
        Duration::from_secs(120),
        "migration target banner",
    )?;
    xlfile::write_header(&mut to, &cfg.to_libxl_json())
        .map_err(io_err("sending the save-file header"))?;

    let sock = paths
        .domain_run_dir(rec.domid)
        .join(format!("migrate-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .map_err(io_err(format!("binding {}", sock.display())))?;
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(sock.clone());
    let mut client = api(paths, rec.domid)?;
    let live = opts.live.clone();
    let sock2 = sock.clone();
    let domid = rec.domid;
    let vmm = std::thread::spawn(move || {
        client
            .request(ApiCmd::MigrateSend {
                path: sock2,
                opts: live,
            })
            .map_err(|source| Error::Vmm { domid, source })
    });
    // The VMM connects at once (or fails at once).
    listener
        .set_nonblocking(true)
        .map_err(io_err("migration socket"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if vmm.is_finished() || Instant::now() > deadline {
                    let r = vmm
                        .join()
                        .map_err(|_| Error::Other("VMM request panicked".into()))?;
                    r?;
                    return Err(Error::Other("the VMM did not start sending".into()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io_err("accepting the VMM's stream")(e)),
        }
    };
    conn.set_nonblocking(false)
        .map_err(io_err("migration socket"))?;
    let mut conn = std::io::BufReader::with_capacity(1 << 20, conn);
    let mut round = 0u32;
    let ts = Instant::now();
    let relayed = {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut to);
        let r = rxen_migration::relay(&mut conn, &mut w, |e| {
            let rate = e.bytes as f64 / ts.elapsed().as_secs_f64().max(1e-3);
            if e.rtype == rxen_migration::stream::T_ROUND {
                round += 1;
                let remaining = e
                    .body
                    .get(8..16)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                    * rxen_migration::stream::PAGE_SIZE as u64;
                progress(&Progress {
                    round,
                    bytes: e.bytes,
                    rate,
                    remaining,
                    done: false,
                });
            } else if e.rtype == rxen_migration::stream::T_END {
                progress(&Progress {
                    round,
                    bytes: e.bytes,
                    rate,
                    remaining: 0,
                    done: true,
                });
            }
        });
        r.map_err(|e| Error::Other(format!("sending the domain: {e}")))
            .and_then(|n| {
                w.flush().map_err(io_err("sending the domain"))?;
                Ok(n)
            })
    };
    drop(conn);
    let vmm_result = vmm
        .join()
        .map_err(|_| Error::Other("VMM request panicked".into()))?;
    // Until the destination confirms, any failure leaves the source running.
    let resume_source = |xs: &Client| {
        let _ = api(paths, rec.domid).and_then(|mut c| {
            c.request(ApiCmd::Unpause).map_err(|source| Error::Vmm {
                domid: rec.domid,
                source,
            })
        });
        let _ = registry::set_state(
            xs,
            rec.domid,
            if rec.state == DomState::Paused {
                DomState::Paused
            } else {
                DomState::Running
            },
        );
    };
    let summary: rxen_vmm::vm::LiveSummary = match (relayed, vmm_result) {
        (Ok(_), Ok(v)) => serde_json::from_value(v).unwrap_or_default(),
        (Err(e), _) | (_, Err(e)) => {
            // The VMM resumes itself when its side failed; make sure either way.
            if rec.state != DomState::Paused {
                resume_source(xs);
            }
            drop(child);
            return Err(e);
        }
    };
    let _ = registry::set_state(xs, rec.domid, DomState::Paused);
    let away = format!("{}--migratedaway", rec.name);
    let _ = registry::rename(xs, rec.domid, &away);
    let fail_back = |xs: &Client, e: Error| -> Error {
        let _ = registry::rename(xs, rec.domid, &rec.name);
        if rec.state != DomState::Paused {
            resume_source(xs);
        }
        e
    };
    if let Err(e) = expect_message(
        &mut from,
        from_fd,
        handshake::READY,
        Duration::from_secs(300),
        "migration target (ready to unpause)",
    ) {
        drop(child);
        return Err(fail_back(xs, e));
    }
    if let Err(e) = to
        .write_all(handshake::PERMISSION)
        .and_then(|()| to.flush())
    {
        drop(child);
        return Err(fail_back(xs, io_err("sending the go-ahead")(e)));
    }
    let mut status = [0u8; 1];
    let confirmed = expect_message(
        &mut from,
        from_fd,
        handshake::REPORT,
        Duration::from_secs(120),
        "migration target (unpause report)",
    )
    .and_then(|()| {
        read_exact_timeout(
            &mut from,
            from_fd,
            &mut status,
            Duration::from_secs(10),
            "migration target (unpause status)",
        )
    });
    let confirmed_at = unix_ms();
    match confirmed {
        Ok(()) if status[0] == 0 => {}
        Ok(()) => {
            drop(child);
            return Err(fail_back(
                xs,
                Error::Other(format!(
                    "migration target reported failure to unpause ({}); the domain runs on here",
                    status[0]
                )),
            ));
        }
        Err(e) => {
            // The destination got the go-ahead but did not report: it may be running the
            // domain. Keep the source paused (never two running copies) and say so.
            drop(child);
            return Err(Error::Other(format!(
                "{e}; the source domain {} stays paused as {away}: check the destination, then `xl destroy {away}` or `xl unpause {away}`",
                rec.domid
            )));
        }
    }
    drop(to);
    drop(child);
    crate::ops::destroy(paths, xs, &rec.domid.to_string())?;
    Ok(MigrateReport {
        domid: rec.domid,
        name: rec.name,
        total_ms: t0.elapsed().as_millis() as u64,
        downtime_ms: confirmed_at.saturating_sub(summary.paused_at_unix_ms),
        summary,
    })
}

/// Options of `xl migrate-receive`.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOpts {
    /// `-p`: leave the domain paused.
    pub paused: bool,
}

/// `xl migrate-receive`: the receiving end on stdin/stdout. Rebuilds the domain as
/// `<name>--incoming` while the stream arrives, and after the sender's go-ahead renames and
/// unpauses it. If anything fails, the half-created domain is removed.
pub fn migrate_receive(
    paths: &Paths,
    xs: &Client,
    input: &mut (impl std::io::Read + std::os::unix::io::AsRawFd + Send),
    output: &mut impl Write,
    opts: &ReceiveOpts,
) -> Result<u32> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    paths
        .ensure_dirs()
        .map_err(io_err("creating rxen's host directories"))?;
    output
        .write_all(handshake::BANNER)
        .and_then(|()| output.flush())
        .map_err(io_err("writing the banner"))?;
    let header = xlfile::read_header(input).map_err(|e| Error::Other(e.to_string()))?;
    let text = header
        .config
        .as_deref()
        .ok_or_else(|| Error::Other("the stream carries no domain config".into()))?;
    let mut cfg = DomainConfig::from_libxl_json(text)
        .map_err(|e| Error::Other(format!("domain config in the stream: {e}")))?;
    let name = cfg.c_info.name.clone().unwrap_or_default();
    cfg.c_info.name = Some(format!("{name}--incoming"));
    let fifo = paths
        .run
        .join(format!("migrate-incoming-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Other("bad FIFO path".into()))?;
    // SAFETY: mkfifo on a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(io_err(format!("mkfifo {}", fifo.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(fifo.clone());
    let abort = AtomicBool::new(false);
    let (created, relayed) = std::thread::scope(|s| {
        let feeder = s.spawn(|| -> Result<u64> {
            use std::os::unix::fs::OpenOptionsExt;
            // Wait for the VMM to open the FIFO (or for the creation to fail).
            let f = loop {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&fifo)
                {
                    Ok(f) => break f,
                    Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                        if abort.load(Ordering::SeqCst) {
                            return Err(Error::Other("the domain was not created".into()));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(io_err("opening the incoming FIFO")(e)),
                }
            };
            use std::os::unix::io::AsRawFd;
            // SAFETY: F_GETFL/F_SETFL on our own fd.
            unsafe {
                let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            rxen_migration::relay(input, &mut w, |_| {})
                .map_err(|e| Error::Other(format!("receiving the domain: {e}")))
        });
        let created = crate::ops::create_from(
            paths,
            xs,
            &cfg,
            &crate::ops::CreateOpts { paused: true },
            Some(&fifo),
        );
        abort.store(true, Ordering::SeqCst);
        let relayed = feeder
            .join()
            .unwrap_or_else(|_| Err(Error::Other("receiver thread panicked".into())));
        (created, relayed)
    });
    let domid = created?;
    let remove = |e: Error| -> Error {
        let _ = crate::ops::destroy(paths, xs, &domid.to_string());
        e
    };
    relayed.map_err(remove)?;
    output
        .write_all(handshake::READY)
        .and_then(|()| output.flush())
        .map_err(|e| remove(io_err("writing to the sender")(e)))?;
    let fd = input.as_raw_fd();
    expect_message(
        input,
        fd,
        handshake::PERMISSION,
        Duration::from_secs(300),
        "migration sender (go-ahead)",
    )
    .map_err(remove)?;
    let mut rc = 0u8;
    if let Err(e) = registry::rename(xs, domid, &name) {
        eprintln!("migration target: rename to {name}: {e}");
    }
    if !opts.paused {
        if let Err(e) = crate::ops::unpause(paths, xs, &domid.to_string()) {
            eprintln!("migration target: unpause failed: {e}");
            rc = 1;
        }
    }
    output
        .write_all(handshake::REPORT)
        .and_then(|()| output.write_all(&[rc]))
        .and_then(|()| output.flush())
        .map_err(io_err("writing the report"))?;
    if rc != 0 {
        let _ = crate::ops::destroy(paths, xs, &domid.to_string());
        return Err(Error::Other("could not unpause the domain".into()));
    }
    Ok(domid)
}
