//! Input side of the bulk tokenizer: discovering input files, opening them (plain, gzip, zstd)
//! while hashing and counting their on-disk bytes, splitting the decompressed stream into
//! documents, and turning a document's raw bytes into text (UTF-8 policy, stripping, JSONL).
//!
//! Everything here is deterministic: the file list is sorted, and document boundaries depend only
//! on the bytes.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How a file's decompressed bytes are cut into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocPer {
    /// One document per line; `\n`, `\r\n` and a lone `\r` end a line (Python's universal
    /// newlines, which upstream's `for line in open(...)` uses).
    Line,
    /// The whole file is one document.
    File,
}

/// How a document's bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// `jsonl` for names ending in `.jsonl`/`.ndjson` (before any `.gz`/`.zst`), `text` otherwise.
    Auto,
    Text,
    Jsonl,
}

/// What to do with bytes that are not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Utf8Policy {
    /// Drop them (Python's `errors="ignore"`, what upstream does).
    Ignore,
    /// Replace each maximal invalid subsequence with U+FFFD (Python's `errors="replace"`).
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_path(path: &Path) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if name.ends_with(".gz") {
            Compression::Gzip
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Whether `path` is read as JSONL under `format`.
pub fn is_jsonl(path: &Path, format: InputFormat) -> bool {
    match format {
        InputFormat::Text => false,
        InputFormat::Jsonl => true,
        InputFormat::Auto => {
            let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            let base = name.trim_end_matches(".gz").trim_end_matches(".zstd").trim_end_matches(".zst");
            base.ends_with(".jsonl") || base.ends_with(".ndjson")
        }
    }
}

fn has_glob_chars(s: &str) -> bool {
    s.contains('*') || s.contains('?') || s.contains('[')
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().map(|n| n.to_string_lossy().starts_with('.')).unwrap_or(false)
}

/// Names of the files a `baichuan tokenize` job writes in its output directory (see
/// docs/formats.md "Our own outputs are never read").
const OUTPUT_MARKER_LOCK: &str = ".tokenize.lock";
const OUTPUT_MARKER_MANIFEST: &str = "manifest.json";

/// Whether `dir` holds a `baichuan tokenize` output: its lock file, or a manifest.json of ours.
pub fn is_output_dir(dir: &Path) -> bool {
    if dir.join(OUTPUT_MARKER_LOCK).is_file() {
        return true;
    }
    // `OUT/holdout/` (`--holdout`) belongs to the output around it, finished or not.
    if dir.file_name().is_some_and(|n| n == super::HOLDOUT_DIR)
        && dir.parent().is_some_and(|p| !p.as_os_str().is_empty() && is_output_dir(p))
    {
        return true;
    }
    let Ok(text) = std::fs::read(dir.join(OUTPUT_MARKER_MANIFEST)) else { return false };
    match serde_json::from_slice::<serde_json::Value>(&text) {
        Ok(v) => matches!(v.get("format").and_then(|f| f.as_str()), Some("baichuan-shards" | "megatron-mmap")),
        Err(_) => false,
    }
}

/// Whether a file name is one `baichuan tokenize` writes into its output directory.
fn is_output_name(name: &str) -> bool {
    name == "manifest.json" || name == "progress.json" || name.ends_with(".tmp") || name.ends_with(".bin") || name.ends_with(".idx")
}

fn read_prefix(path: &Path, n: usize) -> Option<(Vec<u8>, u64)> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(_) => return None,
        }
    }
    buf.truncate(got);
    Some((buf, len))
}

/// A token index of ours by its header: a Megatron `.idx` (magic `MMIDIDX\0\0`), or a shard
/// `shard-NNNNN.idx` (u64 offsets: a multiple of 8 bytes, starting with offset 0).
fn is_our_index(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.ends_with(".idx") {
        return false;
    }
    let Some((head, len)) = read_prefix(path, super::megatron::MAGIC.len()) else { return false };
    if head == super::megatron::MAGIC {
        return true;
    }
    let shard_name = name.len() == "shard-00000.idx".len()
        && name.starts_with("shard-")
        && name["shard-".len().."shard-00000".len()].bytes().all(|b| b.is_ascii_digit());
    shard_name && len >= 8 && len % 8 == 0 && head.len() >= 8 && head[..8] == [0u8; 8]
}

/// Why a found file is left out of the inputs: it is one of our own outputs.
fn our_output_reason(path: &Path, in_output_dir: bool) -> Option<&'static str> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if in_output_dir && is_output_name(&name) {
        return Some("an earlier `baichuan tokenize` output");
    }
    let ours = is_our_index(path)
        || name.strip_suffix(".bin").is_some_and(|stem| is_our_index(&path.with_file_name(format!("{stem}.idx"))));
    ours.then_some("`baichuan tokenize` token data (an .idx with our header, or the .bin beside one)")
}

const OUTPUT_DIR: &str = "the output directory of this job";

/// A file or directory found among the inputs and left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: &'static str,
}

/// The files to read, and what was left out (our own outputs; the job's output directory).
#[derive(Debug, Default)]
pub struct Discovery {
    pub files: Vec<PathBuf>,
    pub skipped: Vec<Skipped>,
}

struct Walk<'a> {
    /// The job's output directory, canonical (when it exists): never walked into.
    output: Option<&'a Path>,
    found: Vec<PathBuf>,
    skipped: Vec<Skipped>,
}

impl Walk<'_> {
    fn file(&mut self, path: PathBuf, in_output_dir: bool) {
        match our_output_reason(&path, in_output_dir) {
            Some(reason) => self.skipped.push(Skipped { path, reason }),
            None => self.found.push(path),
        }
    }

    fn dir(&mut self, dir: &Path) -> Result<()> {
        let rd = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let mut entries = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
            entries.push(entry.path());
        }
        entries.sort();
        let in_output_dir = is_output_dir(dir);
        for path in entries {
            if is_hidden(&path) {
                continue;
            }
            // Follows symlinks: a link to a file is read, a link to a directory is walked.
            if path.is_dir() {
                if self.is_output(&path) {
                    self.skipped.push(Skipped { path, reason: OUTPUT_DIR });
                    continue;
                }
                self.dir(&path)?;
            } else {
                self.file(path, in_output_dir);
            }
        }
        Ok(())
    }

    fn is_output(&self, dir: &Path) -> bool {
        self.output.is_some() && dir.canonicalize().ok().as_deref() == self.output
    }

    fn top(&mut self, path: PathBuf) -> Result<()> {
        if path.is_dir() {
            if self.is_output(&path) {
                self.skipped.push(Skipped { path, reason: OUTPUT_DIR });
                return Ok(());
            }
            return self.dir(&path);
        }
        let in_output_dir = path.parent().map(|d| is_output_dir(if d.as_os_str().is_empty() { Path::new(".") } else { d })).unwrap_or(false);
        self.file(path, in_output_dir);
        Ok(())
    }
}

/// Expands the command line's inputs into the ordered list of files to read.
///
/// * a file is taken as is;
/// * a directory is walked recursively, entries sorted by name at each level, hidden entries
///   (names starting with `.`) skipped;
/// * anything else that contains `*`, `?` or `[` is a glob pattern; its matches are sorted and
///   each is expanded as above;
/// * a path that does not exist, or a pattern that matches nothing, is an error naming it.
///
/// The same file named twice is read once (first position wins).
pub fn discover(inputs: &[String]) -> Result<Vec<PathBuf>> {
    Ok(discover_excluding(inputs, None)?.files)
}

/// [`discover`], leaving out our own outputs (docs/formats.md): the files `baichuan tokenize`
/// writes, inside a directory holding its lock file or manifest; `.idx` files with our header
/// (and the `.bin` beside one); and `output`, the job's own output directory, wherever a walk
/// meets it. What is left out is listed in [`Discovery::skipped`].
pub fn discover_excluding(inputs: &[String], output: Option<&Path>) -> Result<Discovery> {
    let output = output.and_then(|o| o.canonicalize().ok());
    let mut out: Vec<PathBuf> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    for input in inputs {
        let path = PathBuf::from(input);
        let mut walk = Walk { output: output.as_deref(), found: Vec::new(), skipped: Vec::new() };
        if path.exists() {
            walk.top(path)?;
        } else if has_glob_chars(input) {
            let paths = glob::glob(input)
                .map_err(|e| Error::Input { path: path.clone(), reason: format!("invalid glob pattern: {e}") })?;
            let mut matches = Vec::new();
            for p in paths {
                let p = p.map_err(|e| Error::Input { path: e.path().to_path_buf(), reason: e.error().to_string() })?;
                matches.push(p);
            }
            matches.sort();
            if matches.is_empty() {
                return Err(Error::Input { path, reason: "the pattern matches no file".into() });
            }
            for m in matches {
                walk.top(m)?;
            }
        } else {
            return Err(Error::Input { path, reason: "no such file or directory".into() });
        }
        for f in walk.found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
        for s in walk.skipped {
            if !skipped.contains(&s) {
                skipped.push(s);
            }
        }
    }
    Ok(Discovery { files: out, skipped })
}

/// One warning line per directory for what [`discover_excluding`] left out, naming the files.
pub fn skipped_warnings(skipped: &[Skipped]) -> Vec<String> {
    let mut groups: Vec<(PathBuf, &'static str, Vec<String>)> = Vec::new();
    for s in skipped {
        let dir = s.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if s.reason == OUTPUT_DIR {
            groups.push((s.path.clone(), s.reason, Vec::new()));
            continue;
        }
        match groups.iter_mut().find(|g| g.0 == dir && g.1 == s.reason) {
            Some(g) => g.2.push(name),
            None => groups.push((dir, s.reason, vec![name])),
        }
    }
    groups
        .into_iter()
        .map(|(dir, reason, names)| {
            if names.is_empty() {
                return format!("{}: not read: it is {reason}", dir.display());
            }
            const SHOWN: usize = 6;
            let mut list = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if names.len() > SHOWN {
                list.push_str(&format!(" and {} more", names.len() - SHOWN));
            }
            let what = if names.len() == 1 { "1 file".to_string() } else { format!("{} files", names.len()) };
            format!("{}: not read: {what} of {reason}: {list}", dir.display())
        })
        .collect()
}

/// Reads a file's on-disk bytes, hashing them (sha256) and counting them into a shared counter
/// (the progress bar's "bytes read").
pub struct HashingReader {
    inner: File,
    hasher: Sha256,
    bytes: u64,
    counter: Arc<AtomicU64>,
}

impl HashingReader {
    pub fn digest_hex(&mut self) -> String {
        let h = std::mem::take(&mut self.hasher).finalize();
        hex(&h)
    }
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// An open input: a decompressing, buffered reader over a hashing reader of the file.
pub struct OpenInput {
    reader: Box<dyn BufRead + Send>,
    /// Shared with the decompressor so the hash can be taken at the end.
    raw: Arc<std::sync::Mutex<Option<(String, u64)>>>,
}

/// Wraps the hashing reader so that, on EOF, the digest is stored for `OpenInput::finish`.
struct FinishingReader {
    inner: HashingReader,
    done: Arc<std::sync::Mutex<Option<(String, u64)>>>,
}

impl Read for FinishingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
            if d.is_none() {
                let bytes = self.inner.bytes;
                *d = Some((self.inner.digest_hex(), bytes));
            }
        }
        Ok(n)
    }
}

const READ_BUF: usize = 1 << 20;

pub fn open_input(path: &Path, counter: Arc<AtomicU64>) -> Result<OpenInput> {
    let file = File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let meta = file.metadata().map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    if meta.is_dir() {
        return Err(Error::Input { path: path.to_path_buf(), reason: "is a directory".into() });
    }
    let done = Arc::new(std::sync::Mutex::new(None));
    let raw = FinishingReader {
        inner: HashingReader { inner: file, hasher: Sha256::new(), bytes: 0, counter },
        done: done.clone(),
    };
    let reader: Box<dyn BufRead + Send> = match Compression::from_path(path) {
        Compression::None => Box::new(BufReader::with_capacity(READ_BUF, raw)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            READ_BUF,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(READ_BUF, raw)),
        )),
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::new(raw)
                .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
            Box::new(BufReader::with_capacity(READ_BUF, dec))
        }
    };
    Ok(OpenInput { reader, raw: done })
}

impl OpenInput {
    pub fn reader(&mut self) -> &mut (dyn BufRead + Send) {
        &mut *self.reader
    }

    /// After the decompressed stream hit EOF: drains the rest of the on-disk file (a compressed
    /// stream may end before the file does) and returns (sha256 hex, on-disk size).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        // Drop the decompressor, keeping nothing; the FinishingReader has recorded the digest if
        // it reached EOF. If not (trailing garbage after a zstd frame, say), say so.
        let mut sink = [0u8; 8192];
        loop {
            if self.raw.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                break;
            }
            let n = self.reader.read(&mut sink)?;
            if n == 0 {
                break;
            }
        }
        drop(self.reader);
        let d = self.raw.lock().unwrap_or_else(|e| e.into_inner()).take();
        d.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "data after the end of the compressed stream"))
    }
}

/// One document's position: where it ends in the decompressed stream and how many bytes it
/// consumed (terminator included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocSpan {
    pub end: u64,
    pub consumed: u64,
}

/// Cuts a decompressed stream into documents, appending each one's bytes (terminator excluded)
/// to a caller's buffer.
pub struct Splitter {
    per: DocPer,
    max_doc_bytes: usize,
    offset: u64,
    finished: bool,
}

impl Splitter {
    pub fn new(per: DocPer, max_doc_bytes: usize) -> Self {
        Splitter { per, max_doc_bytes, offset: 0, finished: false }
    }

    /// Appends the next document's bytes to `out`; returns None at the end of the stream.
    pub fn next_doc(&mut self, r: &mut dyn BufRead, out: &mut Vec<u8>) -> io::Result<Option<DocSpan>> {
        if self.finished {
            return Ok(None);
        }
        let start_len = out.len();
        let start = self.offset;
        match self.per {
            DocPer::File => {
                loop {
                    let buf = r.fill_buf()?;
                    if buf.is_empty() {
                        break;
                    }
                    let n = buf.len();
                    self.append(out, start_len, start, buf)?;
                    r.consume(n);
                    self.offset += n as u64;
                }
                self.finished = true;
                Ok(Some(DocSpan { end: self.offset, consumed: self.offset - start }))
            }
            DocPer::Line => loop {
                let buf = r.fill_buf()?;
                if buf.is_empty() {
                    self.finished = true;
                    if self.offset == start {
                        return Ok(None);
                    }
                    return Ok(Some(DocSpan { end: self.offset, consumed: self.offset - start }));
                }
                match buf.iter().position(|&b| b == b'\n' || b == b'\r') {
                    Some(i) => {
                        self.append(out, start_len, start, &buf[..i])?;
                        let cr = buf[i] == b'\r';
                        let crlf_here = cr && i + 1 < buf.len() && buf[i + 1] == b'\n';
                        let cr_at_end = cr && i + 1 == buf.len();
                        let used = if crlf_here { i + 2 } else { i + 1 };
                        r.consume(used);
                        self.offset += used as u64;
                        if cr_at_end {
                            let next = r.fill_buf()?;
                            if next.first() == Some(&b'\n') {
                                r.consume(1);
                                self.offset += 1;
                            }
                        }
                        return Ok(Some(DocSpan { end: self.offset, consumed: self.offset - start }));
                    }
                    None => {
                        let n = buf.len();
                        self.append(out, start_len, start, buf)?;
                        r.consume(n);
                        self.offset += n as u64;
                    }
                }
            },
        }
    }

    /// Appends `piece`, more of the document that starts at decompressed offset `start` and at
    /// `out[start_len]`; an error when the document would pass `max_doc_bytes`.
    fn append(&self, out: &mut Vec<u8>, start_len: usize, start: u64, piece: &[u8]) -> io::Result<()> {
        if out.len() - start_len + piece.len() > self.max_doc_bytes {
            return Err(too_long(start, self.max_doc_bytes));
        }
        out.extend_from_slice(piece);
        Ok(())
    }
}

fn too_long(start: u64, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the document starting at decompressed byte {start} is longer than --max-doc-bytes ({max})"),
    )
}

/// Decodes bytes as UTF-8 under `policy`; returns the text and the number of maximal invalid
/// subsequences met (each is one error for Python's decoder too).
pub fn decode_utf8(bytes: &[u8], policy: Utf8Policy) -> (Cow<'_, str>, u64) {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return (Cow::Borrowed(s), 0);
    }
    let mut out = String::with_capacity(bytes.len());
    let mut bad = 0u64;
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            bad += 1;
            if policy == Utf8Policy::Replace {
                out.push('\u{FFFD}');
            }
        }
    }
    (Cow::Owned(out), bad)
}

/// How much of a file's decompressed start (line breaks excluded) is looked at to tell binary
/// data from text.
pub const SNIFF_BYTES: usize = 64 << 10;

/// Tells a file that is mostly not UTF-8 text (binary data, or text in another encoding) from
/// its first [`SNIFF_BYTES`] decompressed bytes: it is when at least a quarter of them are in
/// invalid UTF-8 sequences or are NUL. Judges once per file.
#[derive(Debug, Default)]
pub struct BinarySniffer {
    seen: usize,
    bad: usize,
    judged: bool,
}

/// A binary-looking file: `bad` of its first `seen` bytes are invalid UTF-8 or NUL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryVerdict {
    pub bad: usize,
    pub seen: usize,
}

impl BinarySniffer {
    /// Looks at the next bytes of the file (one document's); returns the verdict once the sample
    /// is complete and the file looks binary.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<BinaryVerdict> {
        if self.judged {
            return None;
        }
        let take = &bytes[..bytes.len().min(SNIFF_BYTES - self.seen)];
        for chunk in take.utf8_chunks() {
            self.bad += chunk.invalid().len() + chunk.valid().bytes().filter(|&b| b == 0).count();
        }
        self.seen += take.len();
        if self.seen >= SNIFF_BYTES {
            self.finish()
        } else {
            None
        }
    }

    /// At the end of the file (or of the sample): the verdict, if not given yet and binary.
    pub fn finish(&mut self) -> Option<BinaryVerdict> {
        if self.judged {
            return None;
        }
        self.judged = true;
        (self.seen > 0 && self.bad * 4 >= self.seen).then_some(BinaryVerdict { bad: self.bad, seen: self.seen })
    }
}

/// Python's `str.isspace()`: Unicode White_Space plus U+001C..U+001F.
#[inline]
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(is_python_space)
}

/// Extracts the text field of one JSONL line. `Ok(None)` for a blank line; `Err(reason)` for a
/// line that is not a JSON object with a string at `field`.
pub fn jsonl_text(line: &str, field: &str) -> std::result::Result<Option<String>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = value.as_object().ok_or_else(|| "not a JSON object".to_string())?;
    let v = match obj.get(field) {
        Some(v) => v,
        None => {
            // dotted path into nested objects, e.g. "meta.text"
            let mut cur: Option<&serde_json::Value> = Some(&value);
            for part in field.split('.') {
                cur = cur.and_then(|c| c.get(part));
            }
            cur.ok_or_else(|| format!("no field {field:?}"))?
        }
    };
    match v.as_str() {
        Some(s) => Ok(Some(s.to_string())),
        None => Err(format!("field {field:?} is not a string")),
    }
}

/// How [`DocReader`] turns a file into documents: the same options, with the same meaning and
/// defaults, as a `baichuan tokenize` job's (`CorpusConfig`).
#[derive(Debug, Clone)]
pub struct DocOptions {
    pub doc_per: DocPer,
    pub input_format: InputFormat,
    pub text_field: String,
    pub invalid_utf8: Utf8Policy,
    pub strip: bool,
    pub max_doc_bytes: usize,
}

impl Default for DocOptions {
    fn default() -> Self {
        DocOptions {
            doc_per: DocPer::Line,
            input_format: InputFormat::Auto,
            text_field: "text".into(),
            invalid_utf8: Utf8Policy::Ignore,
            strip: true,
            max_doc_bytes: 256 << 20,
        }
    }
}

/// A document's text after `baichuan tokenize`'s reading rules: the UTF-8 policy applied, the
/// JSONL text field extracted, stripped (under `strip`). `None` for a line that is never a
/// document (a blank JSONL line); `Err(reason)` for a JSONL line without a string text field.
/// The one implementation, used by the bulk job's workers and by [`DocReader`].
pub fn document_text<'a>(
    text: &'a str,
    jsonl: bool,
    opts_text_field: &str,
    strip: bool,
) -> std::result::Result<Option<Cow<'a, str>>, String> {
    let text: Cow<'a, str> = if jsonl {
        match jsonl_text(text, opts_text_field)? {
            Some(t) => Cow::Owned(t),
            None => return Ok(None),
        }
    } else {
        Cow::Borrowed(text)
    };
    Ok(Some(match text {
        Cow::Borrowed(t) if strip => Cow::Borrowed(python_strip(t)),
        Cow::Owned(t) if strip => {
            let s = python_strip(&t);
            if s.len() == t.len() {
                Cow::Owned(t)
            } else {
                Cow::Owned(s.to_string())
            }
        }
        t => t,
    }))
}

/// Opens a file decompressed (by its name, as [`open_input`]), positioned at decompressed byte
/// `start` (a document boundary: an earlier document's end). A plain file seeks; a compressed one
/// is decompressed up to `start` and that much thrown away.
fn open_decompressed_at(path: &Path, start: u64) -> Result<Box<dyn BufRead + Send>> {
    use std::io::{Seek, SeekFrom};
    let io_err = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io_err)?;
    if file.metadata().map_err(io_err)?.is_dir() {
        return Err(Error::Input { path: path.to_path_buf(), reason: "is a directory".into() });
    }
    let mut reader: Box<dyn BufRead + Send> = match Compression::from_path(path) {
        Compression::None => {
            file.seek(SeekFrom::Start(start)).map_err(io_err)?;
            return Ok(Box::new(BufReader::with_capacity(READ_BUF, file)));
        }
        Compression::Gzip => Box::new(BufReader::with_capacity(
            READ_BUF,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(READ_BUF, file)),
        )),
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::new(file).map_err(io_err)?;
            Box::new(BufReader::with_capacity(READ_BUF, dec))
        }
    };
    let skipped = io::copy(&mut (&mut reader).take(start), &mut io::sink()).map_err(io_err)?;
    if skipped != start {
        return Err(Error::Input {
            path: path.to_path_buf(),
            reason: format!("cannot start reading at decompressed byte {start}: the file holds {skipped}"),
        });
    }
    Ok(reader)
}

/// One document read by [`DocReader`]: its text and where it starts in the file's decompressed
/// bytes (reading again from `start` gives it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub start: u64,
    pub text: String,
}

/// The documents of one input file, in order, exactly as `baichuan tokenize` reads them
/// (decompression, line splitting, UTF-8 policy, JSONL, strip; the binary-data warning), from a
/// decompressed byte offset on. Streams: holds one document and the read buffers. What a consumer
/// does with a document (tokenize, EOS, `--min-tokens`) is the consumer's.
///
/// Blank JSONL lines and JSONL lines without a string text field are not documents (the bulk
/// job counts the latter as `bad_json`); a blank text line is an empty document.
pub struct DocReader {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    splitter: Splitter,
    sniff: BinarySniffer,
    opts: DocOptions,
    jsonl: bool,
    buf: Vec<u8>,
    /// Decompressed offset after the last document read.
    pub offset: u64,
    pub bad_json: u64,
    first_bad_json: Option<String>,
    pub invalid_utf8: u64,
    warnings: Vec<String>,
    done: bool,
}

impl DocReader {
    pub fn open(path: &Path, start: u64, opts: DocOptions) -> Result<Self> {
        let jsonl = is_jsonl(path, opts.input_format);
        let per = if jsonl { DocPer::Line } else { opts.doc_per };
        let reader = open_decompressed_at(path, start)?;
        let mut splitter = Splitter::new(per, opts.max_doc_bytes);
        splitter.offset = start;
        Ok(DocReader {
            path: path.to_path_buf(),
            reader,
            splitter,
            sniff: BinarySniffer::default(),
            opts,
            jsonl,
            buf: Vec::new(),
            offset: start,
            bad_json: 0,
            first_bad_json: None,
            invalid_utf8: 0,
            warnings: Vec::new(),
            done: false,
        })
    }

    /// The next document, or None at the end of the file. An unreadable or corrupt file is an
    /// error naming it.
    pub fn next_doc(&mut self) -> Result<Option<Document>> {
        loop {
            if self.done {
                return Ok(None);
            }
            self.buf.clear();
            let span = match self.splitter.next_doc(&mut *self.reader, &mut self.buf) {
                Ok(Some(span)) => span,
                Ok(None) => {
                    self.finish();
                    return Ok(None);
                }
                Err(source) => {
                    self.done = true;
                    return Err(Error::Io { path: self.path.clone(), source });
                }
            };
            if let Some(v) = self.sniff.feed(&self.buf) {
                self.warnings.push(binary_warning(&self.path, v, self.opts.invalid_utf8));
            }
            self.offset = span.end;
            let start = span.end - span.consumed;
            let (text, bad) = decode_utf8(&self.buf, self.opts.invalid_utf8);
            self.invalid_utf8 += bad;
            match document_text(&text, self.jsonl, &self.opts.text_field, self.opts.strip) {
                Ok(Some(t)) => return Ok(Some(Document { start, text: t.into_owned() })),
                Ok(None) => continue,
                Err(reason) => {
                    self.bad_json += 1;
                    self.first_bad_json.get_or_insert_with(|| format!("byte {start}: {reason}"));
                }
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        if let Some(v) = self.sniff.finish() {
            self.warnings.push(binary_warning(&self.path, v, self.opts.invalid_utf8));
        }
        if let Some(first) = &self.first_bad_json {
            self.warnings.push(format!(
                "{}: {} JSONL line(s) skipped: not a JSON object with a string {:?} field (first at {first})",
                self.path.display(),
                self.bad_json,
                self.opts.text_field
            ));
        }
    }

    /// Warnings given since the last call: the file looks binary; JSONL lines skipped.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

/// The warning for a file that looks binary (see [`BinarySniffer`]).
pub fn binary_warning(path: &Path, v: BinaryVerdict, policy: Utf8Policy) -> String {
    let what = match policy {
        Utf8Policy::Ignore => "dropped (--invalid-utf8 ignore)",
        Utf8Policy::Replace => "replaced by U+FFFD (--invalid-utf8 replace)",
    };
    format!(
        "{}: mostly not UTF-8 text: {}% of its first {} bytes are invalid UTF-8 or NUL (binary data, or another \
         encoding?); read anyway, invalid bytes {what}",
        path.display(),
        v.bad * 100 / v.seen.max(1),
        v.seen
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(data: &[u8], per: DocPer, bufsize: usize) -> Vec<(Vec<u8>, DocSpan)> {
        let mut r = BufReader::with_capacity(bufsize, data);
        let mut s = Splitter::new(per, 1 << 20);
        let mut docs = Vec::new();
        loop {
            let mut out = Vec::new();
            match s.next_doc(&mut r, &mut out).unwrap() {
                Some(span) => docs.push((out, span)),
                None => break,
            }
        }
        docs
    }

    #[test]
    fn universal_newlines_like_python() {
        // Python: "a\nb\r\nc\rd\r\r\ne".splitlines-ish via io: a, b, c, d, "", e
        for bufsize in [1, 2, 3, 7, 1024] {
            let docs = split(b"a\nb\r\nc\rd\r\r\ne", DocPer::Line, bufsize);
            let texts: Vec<&[u8]> = docs.iter().map(|d| d.0.as_slice()).collect();
            assert_eq!(texts, vec![&b"a"[..], b"b", b"c", b"d", b"", b"e"], "bufsize {bufsize}");
            let ends: Vec<u64> = docs.iter().map(|d| d.1.end).collect();
            assert_eq!(ends, vec![2, 5, 7, 9, 11, 12]);
        }
        assert!(split(b"", DocPer::Line, 4).is_empty());
        assert_eq!(split(b"x\n", DocPer::Line, 4).len(), 1);
        assert_eq!(split(b"\n\n", DocPer::Line, 4).len(), 2);
        let f = split(b"a\nb", DocPer::File, 2);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, b"a\nb");
        let e = split(b"", DocPer::File, 2);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].1, DocSpan { end: 0, consumed: 0 });
    }

    #[test]
    fn too_long_is_an_error() {
        let mut r = BufReader::with_capacity(4, &b"0123456789\n"[..]);
        let mut s = Splitter::new(DocPer::Line, 5);
        assert!(s.next_doc(&mut r, &mut Vec::new()).is_err());
    }

    #[test]
    fn utf8_policies() {
        let b = b"a\xe4\xbdb\xffc\xe4\xbd\xa0";
        let (s, n) = decode_utf8(b, Utf8Policy::Ignore);
        assert_eq!((s.as_ref(), n), ("abc\u{4f60}", 2));
        let (s, n) = decode_utf8(b, Utf8Policy::Replace);
        assert_eq!((s.as_ref(), n), ("a\u{FFFD}b\u{FFFD}c\u{4f60}", 2));
    }

    #[test]
    fn strip_like_python() {
        assert_eq!(python_strip("\u{1c}\u{3000} a b\u{85}\r\n"), "a b");
        assert_eq!(python_strip("\u{feff}x"), "\u{feff}x");
    }

    #[test]
    fn jsonl() {
        assert_eq!(jsonl_text(r#"{"text": "hi"}"#, "text"), Ok(Some("hi".into())));
        assert_eq!(jsonl_text(r#"{"m": {"t": "hi"}}"#, "m.t"), Ok(Some("hi".into())));
        assert_eq!(jsonl_text("  ", "text"), Ok(None));
        assert!(jsonl_text("{", "text").is_err());
        assert!(jsonl_text("[1]", "text").is_err());
        assert!(jsonl_text(r#"{"text": 3}"#, "text").is_err());
        assert!(jsonl_text(r#"{"x": "a"}"#, "text").is_err());
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bc-input-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn discovery_leaves_our_outputs_out() {
        let root = tmpdir("ours");
        let w = |p: &str, b: &[u8]| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b).unwrap();
        };
        w("a.txt", b"text\n");
        // an earlier output folder: its files are ours by name; a user's note there is read
        w("old/.tokenize.lock", b"");
        w("old/manifest.json", br#"{"format": "baichuan-shards"}"#);
        w("old/shard-00000.bin", b"\x05\x00");
        w("old/shard-00000.idx", &[0u8; 16]);
        w("old/progress.json.tmp", b"{");
        w("old/notes.txt", b"kept\n");
        // a folder whose manifest.json is someone else's: nothing is ours by name
        w("other/manifest.json", br#"{"format": "something else"}"#);
        w("other/data.bin", b"\x00\x01");
        // loose token files: ours by header; look-alikes without it are read
        let mut mega = crate::corpus::megatron::MAGIC.to_vec();
        mega.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 8]);
        w("loose/c.idx", &mega);
        w("loose/c.bin", b"\x05\x00");
        w("loose/shard-00001.idx", &[0u8; 8]);
        w("loose/shard-00001.bin", b"");
        w("loose/shard-00002.idx", b"not an index\n");
        w("loose/y.bin", b"\x00\x01");
        w("out/z.txt", b"in the output directory\n");
        let d = discover_excluding(&[root.to_string_lossy().into_owned()], Some(&root.join("out"))).unwrap();
        let rel = |v: Vec<PathBuf>| v.into_iter().map(|p| p.strip_prefix(&root).unwrap().to_string_lossy().into_owned()).collect::<Vec<_>>();
        assert_eq!(
            rel(d.files),
            ["a.txt", "loose/shard-00002.idx", "loose/y.bin", "old/notes.txt", "other/data.bin", "other/manifest.json"]
        );
        let skipped = rel(d.skipped.iter().map(|s| s.path.clone()).collect());
        assert_eq!(
            skipped,
            ["loose/c.bin", "loose/c.idx", "loose/shard-00001.bin", "loose/shard-00001.idx", "old/manifest.json",
             "old/progress.json.tmp", "old/shard-00000.bin", "old/shard-00000.idx", "out"]
        );
        let warnings = skipped_warnings(&d.skipped);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with(&format!("{}: not read: 4 files of `baichuan tokenize` token data", root.join("loose").display())));
        assert_eq!(
            warnings[1],
            format!(
                "{}: not read: 4 files of an earlier `baichuan tokenize` output: manifest.json, progress.json.tmp, shard-00000.bin, shard-00000.idx",
                root.join("old").display()
            )
        );
        assert_eq!(warnings[2], format!("{}: not read: it is the output directory of this job", root.join("out").display()));
        // named explicitly, a file of ours is left out too; without an output, "out" is walked
        let d = discover_excluding(&[root.join("old/shard-00000.bin").to_string_lossy().into_owned()], None).unwrap();
        assert!(d.files.is_empty() && d.skipped.len() == 1);
        assert!(discover(&[root.to_string_lossy().into_owned()]).unwrap().contains(&root.join("out/z.txt")));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sniffer_tells_binary_from_text() {
        let judge = |data: &[u8], step: usize| {
            let mut s = BinarySniffer::default();
            let mut verdicts: Vec<BinaryVerdict> = data.chunks(step.max(1)).filter_map(|c| s.feed(c)).collect();
            verdicts.extend(s.finish());
            assert!(s.finish().is_none(), "judged once");
            verdicts
        };
        let text = "普通的中文文本和 English words, 123.\n".repeat(4000);
        assert!(judge(text.as_bytes(), 100).is_empty());
        // a few invalid bytes: text
        let mut some = text.as_bytes()[..10_000].to_vec();
        some.extend_from_slice(b"\xff\xfe\xe4\xbd");
        assert!(judge(&some, 7).is_empty());
        // random bytes, larger than the sample: one verdict, from the sample
        let mut x: u64 = 0x2545f4914f6cdd1d;
        let random: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let v = judge(&random, 1000);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].seen, SNIFF_BYTES);
        assert!(v[0].bad * 100 / v[0].seen > 35, "{v:?}");
        // NUL bytes count; a small file is judged at its end
        assert_eq!(judge(&[0u8; 40], 3), vec![BinaryVerdict { bad: 40, seen: 40 }]);
        assert!(judge(b"", 1).is_empty());
    }

    /// Reference: universal newlines on a whole buffer.
    fn reference_lines(data: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        let mut i = 0;
        while i < data.len() {
            match data[i] {
                b'\n' => out.push(std::mem::take(&mut cur)),
                b'\r' => {
                    out.push(std::mem::take(&mut cur));
                    if data.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                b => cur.push(b),
            }
            i += 1;
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Random bytes (biased to line breaks, invalid UTF-8 and JSON characters) through the
    /// splitter with random buffer sizes, the UTF-8 decoder, the stripper and the JSONL reader:
    /// same lines as the reference, nothing panics.
    #[test]
    fn fuzz_inputs() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        const ALPHABET: &[u8] = b"\n\r\r\n ab{}\":,[]\\text\x00\xff\xe4\xbd\xa0\x1c\xe3\x80\x80";
        for _ in 0..3000 {
            let len = (rnd() % 200) as usize;
            let data: Vec<u8> = (0..len).map(|_| ALPHABET[(rnd() % ALPHABET.len() as u64) as usize]).collect();
            let bufsize = 1 + (rnd() % 9) as usize;
            let docs = split(&data, DocPer::Line, bufsize);
            let got: Vec<Vec<u8>> = docs.iter().map(|d| d.0.clone()).collect();
            assert_eq!(got, reference_lines(&data), "{data:?} bufsize {bufsize}");
            if let Some(last) = docs.last() {
                assert_eq!(last.1.end, data.len() as u64);
            }
            assert_eq!(docs.iter().map(|d| d.1.consumed).sum::<u64>(), data.len() as u64);
            for (d, _) in &docs {
                for policy in [Utf8Policy::Ignore, Utf8Policy::Replace] {
                    let (t, _) = decode_utf8(d, policy);
                    let _ = python_strip(&t);
                    let _ = jsonl_text(&t, "text");
                    let _ = jsonl_text(&t, "a.b");
                }
            }
        }
    }

    fn read_all(path: &Path, start: u64, opts: &DocOptions) -> Vec<Document> {
        let mut r = DocReader::open(path, start, opts.clone()).unwrap();
        let mut out = Vec::new();
        while let Some(d) = r.next_doc().unwrap() {
            out.push(d);
        }
        out
    }

    /// DocReader: the tokenize reading rules on each kind of file, and reading again from any
    /// document's start gives the same rest (what exact resume relies on).
    #[test]
    fn doc_reader_rules_and_restart() {
        use std::io::Write;
        let root = tmpdir("docreader");
        let plain = b"  one \r\ntwo\rthree\r\r\n\xffbad\xe4\xbd\n".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).unwrap();
        std::fs::write(root.join("a.txt"), &plain).unwrap();
        std::fs::write(root.join("b.txt.gz"), gz.finish().unwrap()).unwrap();
        std::fs::write(root.join("c.txt.zst"), zstd::encode_all(&plain[..], 3).unwrap()).unwrap();
        let jsonl = b"{\"text\": \" x\\ny \"}\n\n[1]\n{\"text\": \"z\"}\r\n";
        std::fs::write(root.join("d.jsonl"), jsonl).unwrap();
        let opts = DocOptions::default();
        let want = ["one", "two", "three", "", "bad"];
        for name in ["a.txt", "b.txt.gz", "c.txt.zst"] {
            let docs = read_all(&root.join(name), 0, &opts);
            assert_eq!(docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(), want, "{name}");
            for (i, d) in docs.iter().enumerate() {
                assert_eq!(read_all(&root.join(name), d.start, &opts), docs[i..].to_vec(), "{name} from {}", d.start);
            }
        }
        let mut r = DocReader::open(&root.join("d.jsonl"), 0, opts.clone()).unwrap();
        assert_eq!(r.next_doc().unwrap().map(|d| d.text), Some("x\ny".to_string()));
        assert_eq!(r.next_doc().unwrap(), Some(Document { start: 24, text: "z".into() }));
        assert_eq!(r.next_doc().unwrap(), None);
        assert_eq!(r.bad_json, 1);
        let w = r.take_warnings();
        assert!(w.len() == 1 && w[0].contains("1 JSONL line(s) skipped"), "{w:?}");
        let per_file = DocOptions { doc_per: DocPer::File, strip: false, invalid_utf8: Utf8Policy::Replace, ..opts.clone() };
        let whole = read_all(&root.join("b.txt.gz"), 0, &per_file);
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].text, "  one \r\ntwo\rthree\r\r\n\u{FFFD}bad\u{FFFD}\n");
        // a start past the end of a compressed file is an error naming it
        let e = DocReader::open(&root.join("b.txt.gz"), 1000, opts.clone()).err().unwrap().to_string();
        assert!(e.contains("b.txt.gz") && e.contains("decompressed byte 1000"), "{e}");
        std::fs::write(root.join("bad.gz"), b"not gzip at all").unwrap();
        let mut r = DocReader::open(&root.join("bad.gz"), 0, opts).unwrap();
        assert!(r.next_doc().unwrap_err().to_string().contains("bad.gz"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
