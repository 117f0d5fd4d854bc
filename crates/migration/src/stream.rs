//! The rxen stream: Xen's libxl stream v2 framing carrying rxen's checksummed records.
//!
//! ```text
//! header (big-endian, as libxl):  u64 ident = "LibxlFmt", u32 version = 2, u32 options = 0
//! record (little-endian, as libxl): u32 type, u32 body_length, body, zero padding to 8 bytes
//! rxen record body:                 u32 crc32(type, payload), u32 reserved = 0, payload
//! ```
//!
//! Record types: `0` END (libxl's, empty body) and rxen's own in `0x5258_xxxx` ("RX"); bit 31
//! marks a record a reader may skip when it does not know it (libxl's rule). The first record must
//! be [`T_INFO`], which carries rxen's own stream version: a reader refuses a newer major
//! version instead of misreading it.

use std::io::{Read, Write};

/// libxl's stream identifier "LibxlFmt".
pub const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74;
/// libxl stream version.
pub const LIBXL_VERSION: u32 = 2;
/// rxen's stream version written by this build.
pub const STREAM_VERSION: u32 = 1;
/// Magic at the start of the info record payload.
pub const INFO_MAGIC: &[u8; 8] = b"RXENSTRM";
/// Guest page size of page records.
pub const PAGE_SIZE: usize = 4096;
/// Largest record body accepted (a page record of [`MAX_PAGES_PER_RECORD`] pages fits).
pub const MAX_BODY: u32 = 64 << 20;
/// Largest number of pages in one page record.
pub const MAX_PAGES_PER_RECORD: usize = 4096;

/// END (libxl).
pub const T_END: u32 = 0;
/// Stream info: magic, rxen stream version, JSON metadata.
pub const T_INFO: u32 = 0x5258_0001;
/// Guest pages: `u32 count, u32 reserved, u64 gpa[count]`, then `count` pages.
pub const T_PAGES: u32 = 0x5258_0002;
/// One vCPU's state (JSON).
pub const T_VCPU: u32 = 0x5258_0003;
/// Machine state: irqchip, PIT, clock, devices (JSON).
pub const T_MACHINE: u32 = 0x5258_0004;
/// End of one pre-copy round (live migration; no payload).
pub const T_ROUND: u32 = 0x8000_0000 | 0x5258_0005;
/// Bit 31: the record is optional.
pub const OPTIONAL: u32 = 0x8000_0000;

/// Errors reading or writing a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Host I/O failed.
    #[error("I/O error {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The stream ends before its END record.
    #[error("the stream is truncated ({what})")]
    Truncated {
        /// Where it ended.
        what: &'static str,
    },
    /// Not a libxl-framed stream.
    #[error("not an rxen stream: {0}")]
    NotAStream(String),
    /// Written by a newer rxen.
    #[error("the stream has version {found}; this rxen reads version {supported} or older — a newer rxen wrote it")]
    NewerVersion {
        /// Version in the stream.
        found: u32,
        /// Newest version known here.
        supported: u32,
    },
    /// A record failed its checksum.
    #[error("record {index} (type {rtype:#x}) is corrupt: checksum {found:#010x}, expected {expected:#010x}")]
    Checksum {
        /// Record number.
        index: u64,
        /// Record type.
        rtype: u32,
        /// Stored checksum.
        expected: u32,
        /// Computed checksum.
        found: u32,
    },
    /// A record is malformed.
    #[error("record {index} (type {rtype:#x}) is malformed: {reason}")]
    Malformed {
        /// Record number.
        index: u64,
        /// Record type.
        rtype: u32,
        /// What is wrong.
        reason: String,
    },
    /// A mandatory record type this rxen does not know.
    #[error("record {index} has unknown mandatory type {rtype:#x} (written by a newer rxen?)")]
    UnknownRecord {
        /// Record number.
        index: u64,
        /// Record type.
        rtype: u32,
    },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StreamError {
    move |source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            StreamError::Truncated { what }
        } else {
            StreamError::Io { what, source }
        }
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Guest pages: addresses and `gpas.len() * PAGE_SIZE` bytes of data.
    Pages {
        /// Guest-physical address of each page.
        gpas: Vec<u64>,
        /// Page contents, in order.
        data: Vec<u8>,
    },
    /// One vCPU's state (JSON).
    Vcpu(Vec<u8>),
    /// Machine and device state (JSON).
    Machine(Vec<u8>),
    /// End of a pre-copy round.
    Round {
        /// Pages the next round sends.
        remaining_pages: u64,
    },
    /// End of the stream.
    End,
}

/// Writes a stream.
pub struct StreamWriter<W: Write> {
    w: W,
    bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    /// Writes the libxl header and the info record carrying `meta` (JSON).
    pub fn new(w: W, meta: &[u8]) -> Result<Self, StreamError> {
        let mut s = Self { w, bytes: 0 };
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&LIBXL_IDENT.to_be_bytes());
        h.extend_from_slice(&LIBXL_VERSION.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        s.w.write_all(&h).map_err(io("writing the stream header"))?;
        s.bytes += h.len() as u64;
        let mut p = Vec::with_capacity(16 + meta.len());
        p.extend_from_slice(INFO_MAGIC);
        p.extend_from_slice(&STREAM_VERSION.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(meta);
        s.record(T_INFO, &[&p])?;
        Ok(s)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    fn record(&mut self, rtype: u32, parts: &[&[u8]]) -> Result<(), StreamError> {
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        let body_len = if rtype == T_END { 0 } else { 8 + payload_len };
        if body_len > MAX_BODY as usize {
            return Err(StreamError::Io {
                what: "writing a record",
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "record too large"),
            });
        }
        let mut head = Vec::with_capacity(16);
        head.extend_from_slice(&rtype.to_le_bytes());
        head.extend_from_slice(&(body_len as u32).to_le_bytes());
        if rtype != T_END {
            let mut c = crate::crc32::Crc32::new();
            c.update(&rtype.to_le_bytes());
            for p in parts {
                c.update(p);
            }
            head.extend_from_slice(&c.finish().to_le_bytes());
            head.extend_from_slice(&0u32.to_le_bytes());
        }
        let w = &mut self.w;
        w.write_all(&head).map_err(io("writing a record"))?;
        if rtype != T_END {
            for p in parts {
                w.write_all(p).map_err(io("writing a record"))?;
            }
        }
        let pad = (8 - body_len % 8) % 8;
        w.write_all(&[0u8; 8][..pad])
            .map_err(io("writing a record"))?;
        self.bytes += 8 + body_len as u64 + pad as u64;
        Ok(())
    }

    /// Writes guest pages (`data.len()` must be `gpas.len() * PAGE_SIZE`, at most
    /// [`MAX_PAGES_PER_RECORD`] pages).
    pub fn write_pages(&mut self, gpas: &[u64], data: &[u8]) -> Result<(), StreamError> {
        if gpas.len() > MAX_PAGES_PER_RECORD || data.len() != gpas.len() * PAGE_SIZE {
            return Err(StreamError::Io {
                what: "writing pages",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "page count and data length disagree",
                ),
            });
        }
        let mut head = Vec::with_capacity(8 + gpas.len() * 8);
        head.extend_from_slice(&(gpas.len() as u32).to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        for g in gpas {
            head.extend_from_slice(&g.to_le_bytes());
        }
        self.record(T_PAGES, &[&head, data])
    }

    /// Writes one vCPU's state.
    pub fn write_vcpu(&mut self, json: &[u8]) -> Result<(), StreamError> {
        self.record(T_VCPU, &[json])
    }

    /// Writes the machine state.
    pub fn write_machine(&mut self, json: &[u8]) -> Result<(), StreamError> {
        self.record(T_MACHINE, &[json])
    }

    /// Marks the end of a pre-copy round; `remaining_pages` is the dirty set the next round
    /// sends (for progress reports).
    pub fn write_round(&mut self, remaining_pages: u64) -> Result<(), StreamError> {
        self.record(T_ROUND, &[&remaining_pages.to_le_bytes()])
    }

    /// Writes END and flushes.
    pub fn finish(mut self) -> Result<W, StreamError> {
        self.record(T_END, &[])?;
        self.w.flush().map_err(io("flushing the stream"))?;
        Ok(self.w)
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        self.w.flush().map_err(io("flushing the stream"))
    }
}

/// Reads a stream record by record.
pub struct StreamReader<R: Read> {
    r: R,
    index: u64,
    version: u32,
    meta: Vec<u8>,
    done: bool,
    bytes: u64,
}

impl<R: Read> StreamReader<R> {
    /// Reads and checks the libxl header and the info record.
    pub fn new(mut r: R) -> Result<Self, StreamError> {
        let mut h = [0u8; 16];
        r.read_exact(&mut h)
            .map_err(io("reading the stream header"))?;
        let ident = u64::from_be_bytes(h[..8].try_into().unwrap_or_default());
        if ident != LIBXL_IDENT {
            return Err(StreamError::NotAStream(format!(
                "identifier {ident:#018x}, expected \"LibxlFmt\""
            )));
        }
        let v = u32::from_be_bytes(h[8..12].try_into().unwrap_or_default());
        if v != LIBXL_VERSION {
            return Err(StreamError::NotAStream(format!(
                "libxl stream version {v}, expected {LIBXL_VERSION}"
            )));
        }
        let mut s = Self {
            r,
            index: 0,
            version: 0,
            meta: vec![],
            done: false,
            bytes: 16,
        };
        let (rtype, payload) = s.raw_record()?;
        if rtype != T_INFO {
            return Err(StreamError::NotAStream(format!(
                "first record has type {rtype:#x}, not rxen's stream info (a Xen stream?)"
            )));
        }
        if payload.len() < 16 || &payload[..8] != INFO_MAGIC {
            return Err(StreamError::NotAStream("bad stream info magic".into()));
        }
        let version = u32::from_le_bytes(payload[8..12].try_into().unwrap_or_default());
        if version > STREAM_VERSION {
            return Err(StreamError::NewerVersion {
                found: version,
                supported: STREAM_VERSION,
            });
        }
        if version == 0 {
            return Err(StreamError::NotAStream("stream version 0".into()));
        }
        s.version = version;
        s.meta = payload[16..].to_vec();
        Ok(s)
    }

    /// rxen stream version of the input.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The metadata (JSON) of the info record.
    pub fn meta(&self) -> &[u8] {
        &self.meta
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    fn raw_record(&mut self) -> Result<(u32, Vec<u8>), StreamError> {
        let index = self.index;
        self.index += 1;
        let mut h = [0u8; 8];
        self.r
            .read_exact(&mut h)
            .map_err(io("reading a record header"))?;
        let rtype = u32::from_le_bytes(h[..4].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(h[4..].try_into().unwrap_or_default());
        let malformed = |reason: String| StreamError::Malformed {
            index,
            rtype,
            reason,
        };
        if len > MAX_BODY {
            return Err(malformed(format!("body of {len} bytes exceeds {MAX_BODY}")));
        }
        let padded = (len as usize).div_ceil(8) * 8;
        let mut body = vec![0u8; padded];
        self.r
            .read_exact(&mut body)
            .map_err(io("reading a record body"))?;
        self.bytes += 8 + padded as u64;
        body.truncate(len as usize);
        if rtype == T_END {
            if len != 0 {
                return Err(malformed("END has a body".into()));
            }
            return Ok((rtype, body));
        }
        if body.len() < 8 {
            return Err(malformed("body shorter than its checksum".into()));
        }
        let expected = u32::from_le_bytes(body[..4].try_into().unwrap_or_default());
        let payload = body.split_off(8);
        let mut c = crate::crc32::Crc32::new();
        c.update(&rtype.to_le_bytes());
        c.update(&payload);
        let found = c.finish();
        if found != expected {
            return Err(StreamError::Checksum {
                index,
                rtype,
                expected,
                found,
            });
        }
        Ok((rtype, payload))
    }

    /// The next record; [`Record::End`] once the END record was read (and on every later call).
    pub fn next_record(&mut self) -> Result<Record, StreamError> {
        loop {
            if self.done {
                return Ok(Record::End);
            }
            let index = self.index;
            let (rtype, mut payload) = self.raw_record()?;
            return Ok(match rtype {
                T_END => {
                    self.done = true;
                    Record::End
                }
                T_PAGES => {
                    let bad = |reason: &str| StreamError::Malformed {
                        index,
                        rtype,
                        reason: reason.into(),
                    };
                    if payload.len() < 8 {
                        return Err(bad("page record without a count"));
                    }
                    let count =
                        u32::from_le_bytes(payload[..4].try_into().unwrap_or_default()) as usize;
                    if count > MAX_PAGES_PER_RECORD {
                        return Err(bad("too many pages in one record"));
                    }
                    if payload.len() != 8 + count * (8 + PAGE_SIZE) {
                        return Err(bad("page count and record length disagree"));
                    }
                    let gpas = payload[8..8 + count * 8]
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect::<Vec<_>>();
                    if gpas.iter().any(|g| g % PAGE_SIZE as u64 != 0) {
                        return Err(bad("unaligned page address"));
                    }
                    let data = payload.split_off(8 + count * 8);
                    Record::Pages { gpas, data }
                }
                T_VCPU => Record::Vcpu(payload),
                T_MACHINE => Record::Machine(payload),
                T_ROUND => Record::Round {
                    remaining_pages: payload
                        .get(..8)
                        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default())),
                },
                t if t & OPTIONAL != 0 => continue,
                _ => return Err(StreamError::UnknownRecord { index, rtype }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), b"{\"vcpus\":1}").unwrap();
        let mut page = vec![0u8; 2 * PAGE_SIZE];
        page[0] = 0xaa;
        page[PAGE_SIZE + 5] = 0x55;
        w.write_pages(&[0x1000, 0x5000], &page).unwrap();
        w.write_round(7).unwrap();
        w.write_vcpu(b"{\"id\":0}").unwrap();
        w.write_machine(b"{\"m\":1}").unwrap();
        let n = w.bytes_written();
        let v = w.finish().unwrap();
        assert_eq!(n + 8, v.len() as u64);
        v
    }

    fn read_all(b: &[u8]) -> Result<Vec<Record>, StreamError> {
        let mut r = StreamReader::new(b)?;
        let mut out = vec![];
        loop {
            let rec = r.next_record()?;
            let end = rec == Record::End;
            out.push(rec);
            if end {
                return Ok(out);
            }
        }
    }

    #[test]
    fn round_trip() {
        let v = sample();
        assert_eq!(&v[..8], b"LibxlFmt");
        assert_eq!(v.len() % 8, 0);
        let r = StreamReader::new(&v[..]).unwrap();
        assert_eq!(r.version(), STREAM_VERSION);
        assert_eq!(r.meta(), b"{\"vcpus\":1}");
        let recs = read_all(&v).unwrap();
        assert_eq!(recs.len(), 5);
        match &recs[0] {
            Record::Pages { gpas, data } => {
                assert_eq!(gpas, &[0x1000, 0x5000]);
                assert_eq!(data[0], 0xaa);
                assert_eq!(data[PAGE_SIZE + 5], 0x55);
            }
            r => panic!("unexpected {r:?}"),
        }
        assert_eq!(recs[1], Record::Round { remaining_pages: 7 });
        assert_eq!(recs[2], Record::Vcpu(b"{\"id\":0}".to_vec()));
        assert_eq!(recs[3], Record::Machine(b"{\"m\":1}".to_vec()));
        assert_eq!(recs[4], Record::End);
    }

    #[test]
    fn every_truncation_is_refused() {
        let v = sample();
        for cut in 0..v.len() {
            let r = read_all(&v[..cut]);
            assert!(r.is_err(), "truncation at {cut} accepted");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused_or_harmless() {
        let v = sample();
        let good = read_all(&v).unwrap();
        for i in 0..v.len() {
            let mut b = v.clone();
            b[i] ^= 0x01;
            if let Ok(recs) = read_all(&b) {
                // Only padding/reserved bytes may change without detection.
                assert!(recs == good, "flip at {i} changed the content undetected");
            }
        }
    }

    #[test]
    fn newer_version_is_refused_clearly() {
        let mut v = sample();
        // Version field of the info record: header 16 + record header 8 + crc 8 + magic 8.
        let off = 16 + 8 + 8 + 8;
        v[off..off + 4].copy_from_slice(&2u32.to_le_bytes());
        // Fix the checksum so only the version is "wrong".
        let len = u32::from_le_bytes(v[20..24].try_into().unwrap()) as usize;
        let mut c = crate::crc32::Crc32::new();
        c.update(&T_INFO.to_le_bytes());
        c.update(&v[32..24 + len]);
        let crc = c.finish();
        v[24..28].copy_from_slice(&crc.to_le_bytes());
        let e = StreamReader::new(&v[..]).err().unwrap();
        assert!(matches!(
            e,
            StreamError::NewerVersion {
                found: 2,
                supported: 1
            }
        ));
        assert!(e.to_string().contains("newer rxen"));
    }

    #[test]
    fn verify_counts_and_refuses_incomplete_streams() {
        let v = sample();
        let sum = verify(&v[..]).unwrap();
        assert_eq!((sum.pages, sum.vcpus, sum.machines), (2, 1, 1));
        assert_eq!(sum.bytes, v.len() as u64);
        let mut w = StreamWriter::new(Vec::new(), b"").unwrap();
        w.write_vcpu(b"{}").unwrap();
        let v = w.finish().unwrap();
        assert!(verify(&v[..]).is_err());
    }

    #[test]
    fn unknown_records() {
        let mut w = StreamWriter::new(Vec::new(), b"").unwrap();
        w.record(OPTIONAL | 0x5258_7777, &[b"skip me"]).unwrap();
        w.write_vcpu(b"x").unwrap();
        let v = w.finish().unwrap();
        let recs = read_all(&v).unwrap();
        assert_eq!(recs, vec![Record::Vcpu(b"x".to_vec()), Record::End]);
        let mut w = StreamWriter::new(Vec::new(), b"").unwrap();
        w.record(0x5258_7777, &[b"must know"]).unwrap();
        let v = w.finish().unwrap();
        assert!(matches!(
            read_all(&v),
            Err(StreamError::UnknownRecord { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        #[test]
        fn parser_never_panics_on_garbage(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = read_all(&data);
        }

        #[test]
        fn parser_never_panics_on_mutated_streams(
            edits in proptest::collection::vec((0usize..20000, proptest::num::u8::ANY), 1..8),
            cut in 0usize..20000,
        ) {
            let mut v = sample();
            for (pos, val) in edits {
                let n = v.len();
                v[pos % n] = val;
            }
            v.truncate(cut.max(1));
            let _ = read_all(&v);
        }

        #[test]
        fn page_records_round_trip(pages in proptest::collection::vec((0u64..1 << 30, proptest::num::u8::ANY), 0..6)) {
            let gpas: Vec<u64> = pages.iter().map(|(g, _)| g & !0xfff).collect();
            let mut data = vec![];
            for (_, b) in &pages {
                data.extend(std::iter::repeat_n(*b, PAGE_SIZE));
            }
            let mut w = StreamWriter::new(Vec::new(), b"{}").unwrap();
            w.write_pages(&gpas, &data).unwrap();
            let v = w.finish().unwrap();
            let recs = read_all(&v).unwrap();
            proptest::prop_assert_eq!(&recs[0], &Record::Pages { gpas, data });
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// rxen stream version.
    pub version: u32,
    /// Records read (including END).
    pub records: u64,
    /// Guest pages carried.
    pub pages: u64,
    /// vCPU records.
    pub vcpus: u64,
    /// Machine records.
    pub machines: u64,
    /// Bytes of stream.
    pub bytes: u64,
}

/// Reads a whole stream, checking framing, checksums and the END record, without applying it
/// (so a restore can refuse a bad file before creating anything).
pub fn verify(r: impl Read) -> Result<StreamSummary, StreamError> {
    let mut s = StreamReader::new(r)?;
    let mut sum = StreamSummary {
        version: s.version(),
        records: 1,
        ..Default::default()
    };
    loop {
        let rec = s.next_record()?;
        sum.records += 1;
        match rec {
            Record::Pages { gpas, .. } => sum.pages += gpas.len() as u64,
            Record::Vcpu(_) => sum.vcpus += 1,
            Record::Machine(_) => sum.machines += 1,
            Record::Round { .. } => {}
            Record::End => break,
        }
    }
    if sum.machines != 1 || sum.vcpus == 0 {
        return Err(StreamError::NotAStream(format!(
            "the stream holds {} machine and {} vCPU records; a complete domain has 1 and at least 1",
            sum.machines, sum.vcpus
        )));
    }
    sum.bytes = s.bytes_read();
    Ok(sum)
}

/// One record seen by [`relay`].
#[derive(Clone, Copy, Debug)]
pub struct RelayEvent<'a> {
    /// Record type.
    pub rtype: u32,
    /// Record body (checksum, reserved word, payload).
    pub body: &'a [u8],
    /// Bytes relayed so far, including this record.
    pub bytes: u64,
}

/// Copies one stream from `r` to `w` (libxl header, records, up to and including END) without
/// decoding it, calling `seen` for each record; stops right after END so that whatever follows
/// on `r` (a migration handshake) stays unread. `w` is flushed after every record that is not
/// PAGES: a pre-copy round's end and the switchover's state move on at once instead of waiting in
/// a buffer for more pages (a live migration's downtime would include them). Returns the bytes
/// copied.
pub fn relay(
    r: &mut impl Read,
    w: &mut impl Write,
    mut seen: impl FnMut(RelayEvent<'_>),
) -> Result<u64, StreamError> {
    let mut h = [0u8; 16];
    r.read_exact(&mut h)
        .map_err(io("reading the stream header"))?;
    if u64::from_be_bytes(h[..8].try_into().unwrap_or_default()) != LIBXL_IDENT {
        return Err(StreamError::NotAStream("bad identifier".into()));
    }
    w.write_all(&h).map_err(io("forwarding the stream"))?;
    let mut bytes = 16u64;
    let mut body = Vec::new();
    loop {
        let mut rh = [0u8; 8];
        r.read_exact(&mut rh)
            .map_err(io("reading a record header"))?;
        let rtype = u32::from_le_bytes(rh[..4].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(rh[4..].try_into().unwrap_or_default());
        if len > MAX_BODY {
            return Err(StreamError::Malformed {
                index: 0,
                rtype,
                reason: format!("body of {len} bytes exceeds {MAX_BODY}"),
            });
        }
        let padded = (len as usize).div_ceil(8) * 8;
        body.resize(padded, 0);
        r.read_exact(&mut body)
            .map_err(io("reading a record body"))?;
        w.write_all(&rh).map_err(io("forwarding the stream"))?;
        w.write_all(&body).map_err(io("forwarding the stream"))?;
        bytes += 8 + padded as u64;
        seen(RelayEvent {
            rtype,
            body: &body[..len as usize],
            bytes,
        });
        if rtype != T_PAGES {
            w.flush().map_err(io("forwarding the stream"))?;
        }
        if rtype == T_END {
            return Ok(bytes);
        }
    }
}

#[cfg(test)]
mod relay_tests {
    use super::*;

    #[test]
    fn relay_stops_after_end_and_copies_exactly() {
        let mut w = StreamWriter::new(Vec::new(), b"{}").unwrap();
        w.write_pages(&[0], &[1u8; PAGE_SIZE]).unwrap();
        w.write_round(3).unwrap();
        w.write_vcpu(b"v").unwrap();
        w.write_machine(b"m").unwrap();
        let mut v = w.finish().unwrap();
        let n = v.len();
        v.extend_from_slice(b"trailing handshake");
        let mut r = &v[..];
        let mut out = Vec::new();
        let mut types = vec![];
        let copied = relay(&mut r, &mut out, |e| types.push(e.rtype)).unwrap();
        assert_eq!(copied as usize, n);
        assert_eq!(&out[..], &v[..n]);
        assert_eq!(r, b"trailing handshake");
        assert_eq!(
            types,
            vec![T_INFO, T_PAGES, T_ROUND, T_VCPU, T_MACHINE, T_END]
        );
        assert!(relay(&mut &v[..n - 8], &mut Vec::new(), |_| {}).is_err());
    }
}
