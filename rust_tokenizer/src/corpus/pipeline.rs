//! The pipeline of one job: a reader thread cuts the inputs into chunks of documents, `workers`
//! threads encode whole chunks, and the calling thread takes them back in chunk order and writes
//! them ([`Writer`]: the shards or the Megatron pair, the held-out shards, and a `progress.json`
//! checkpoint after each shard).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use super::config::{holdout_key, is_held_out, CorpusConfig, OutputFormat, HOLDOUT_DIR};
use super::input::{self, DocPer, DocSpan, Splitter};
use super::manifest::{Counts, FileEntry, MANIFEST_VERSION};
use super::megatron::{MegatronCheckpoint, MegatronEntry, MegatronWriter};
use super::resume::{HoldoutState, JobRecord, Partial, State};
use super::shards::{io_err, shard_dtype, write_json_atomic, DType, ShardEntry, ShardWriter};
use super::{Encode, InputFile, Progress};
use crate::error::{Error, Result};

enum Item {
    Doc { file: u32, start: usize, len: usize, span: DocSpan, held: bool },
    FileEnd { file: u32, sha256: String, size: u64 },
    Bad { file: u32, error: String },
    Fatal(Error),
}

struct Chunk {
    seq: u64,
    data: Vec<u8>,
    items: Vec<Item>,
}

enum Outcome {
    Kept { ntok: usize },
    Dropped,
    Empty,
    BadJson(String),
}

enum OutItem {
    Doc { file: u32, span: DocSpan, invalid_utf8: u64, outcome: Outcome, held: bool },
    FileEnd { file: u32, sha256: String, size: u64 },
    Bad { file: u32, error: String },
    Fatal(Error),
}

struct Encoded {
    seq: u64,
    items: Vec<OutItem>,
    tokens: Vec<u32>,
}

pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a CorpusConfig,
    pub(super) files: &'a [InputFile],
    pub(super) job: &'a JobRecord,
    pub(super) dtype: DType,
    /// The tokenizer's vocabulary size.
    pub(super) cfg_vocab: usize,
    pub(super) eos: Option<u32>,
    pub(super) progress: &'a Progress,
    pub(super) out: &'a Path,
    pub(super) progress_p: &'a Path,
    pub(super) prefix_p: &'a Path,
}

pub(super) type PipelineOut = (Vec<ShardEntry>, Option<MegatronEntry>, Vec<FileEntry>, Option<Vec<ShardEntry>>);

pub(super) fn pipeline<E: Encode>(ctx: &Ctx<'_>, enc: &E, workers: usize, state: State) -> Result<PipelineOut> {
    let start_file = state.files.len();
    let skip_until = state.partial.as_ref().map(|p| {
        debug_assert_eq!(p.file, start_file);
        p.end
    });
    let skipped_bytes: u64 = ctx.files[..start_file.min(ctx.files.len())].iter().map(|f| f.size).sum();
    ctx.progress.raw_bytes_skipped.store(skipped_bytes, Ordering::Relaxed);
    ctx.progress.files_done.store(start_file as u64, Ordering::Relaxed);

    let in_flight = 2 * workers + 2;
    let (slot_tx, slot_rx) = sync_channel::<()>(in_flight);
    for _ in 0..in_flight {
        slot_tx.send(()).map_err(|_| Error::Internal("slot channel".into()))?;
    }
    let (work_tx, work_rx) = sync_channel::<Chunk>(in_flight);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (res_tx, res_rx) = channel::<Encoded>();

    let stop = AtomicBool::new(false);
    let stop = &stop;
    std::thread::scope(move |s| {
        s.spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| reader(ctx, start_file, skip_until, stop, &slot_rx, &work_tx)));
            if r.is_err() {
                // Tell the writer (it sees a chunk it cannot place and reports this).
                let _ = work_tx.send(Chunk { seq: u64::MAX, data: Vec::new(), items: vec![Item::Fatal(Error::Internal("the reader thread panicked".into()))] });
            }
        });
        for _ in 0..workers {
            let work_rx = work_rx.clone();
            let res_tx = res_tx.clone();
            s.spawn(move || worker(ctx, enc, &work_rx, &res_tx));
        }
        drop(work_rx);
        drop(res_tx);
        let r = writer(ctx, state, res_rx, slot_tx);
        if r.is_err() {
            stop.store(true, Ordering::SeqCst);
        }
        r
    })
}

/// The reader's output side: the chunk being filled and its sequence number.
struct ChunkOut<'a> {
    chunk: Chunk,
    chunk_bytes: usize,
    slot_rx: &'a Receiver<()>,
    work_tx: &'a SyncSender<Chunk>,
}

impl ChunkOut<'_> {
    fn full(&self) -> bool {
        self.chunk.data.len() >= self.chunk_bytes || self.chunk.items.len() >= 65536
    }
    /// Sends the current chunk when a slot is free. False when the pipeline is shutting down.
    fn flush(&mut self) -> bool {
        if self.chunk.items.is_empty() {
            return true;
        }
        let next = Chunk { seq: self.chunk.seq + 1, data: Vec::with_capacity(self.chunk_bytes + 4096), items: Vec::new() };
        let full = std::mem::replace(&mut self.chunk, next);
        if self.slot_rx.recv().is_err() {
            return false;
        }
        self.work_tx.send(full).is_ok()
    }
    /// Queues an item; flushes when the chunk is full.
    fn push(&mut self, item: Item) -> bool {
        self.chunk.items.push(item);
        if self.full() {
            self.flush()
        } else {
            true
        }
    }
}

fn reader(ctx: &Ctx<'_>, start_file: usize, skip_until: Option<u64>, stop: &AtomicBool, slot_rx: &Receiver<()>, work_tx: &SyncSender<Chunk>) {
    let cfg = ctx.cfg;
    let mut out = ChunkOut {
        chunk: Chunk { seq: 0, data: Vec::with_capacity(cfg.chunk_bytes + 4096), items: Vec::new() },
        chunk_bytes: cfg.chunk_bytes,
        slot_rx,
        work_tx,
    };
    let counter = Arc::new(AtomicU64::new(0));
    let stopped = || ctx.progress.cancel.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
    for fi in start_file..ctx.files.len() {
        if stopped() {
            return;
        }
        let f = &ctx.files[fi];
        let skip = if fi == start_file { skip_until } else { None };
        let per = if f.jsonl { DocPer::Line } else { cfg.doc_per };
        let mut failed: Option<Error> = None;
        let mut sniff = input::BinarySniffer::default();
        let key = holdout_key(&f.name);
        let mut ordinal = 0u64;
        match input::open_input(&f.path, counter.clone()) {
            Err(e) => failed = Some(e),
            Ok(mut inp) => {
                let mut splitter = Splitter::new(per, cfg.max_doc_bytes);
                loop {
                    let start = out.chunk.data.len();
                    match splitter.next_doc(inp.reader(), &mut out.chunk.data) {
                        Ok(None) => break,
                        Ok(Some(span)) => {
                            if let Some(v) = sniff.feed(&out.chunk.data[start..]) {
                                ctx.progress.warn(input::binary_warning(&f.path, v, cfg.invalid_utf8));
                            }
                            let held = is_held_out(key, ordinal, cfg.holdout_per_million);
                            ordinal += 1;
                            if skip.is_some_and(|end| span.end <= end) {
                                out.chunk.data.truncate(start);
                                continue;
                            }
                            let len = out.chunk.data.len() - start;
                            if !out.push(Item::Doc { file: fi as u32, start, len, span, held }) {
                                return;
                            }
                            ctx.progress.raw_bytes_read.store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
                            if stopped() {
                                return;
                            }
                        }
                        Err(source) => {
                            out.chunk.data.truncate(start);
                            failed = Some(Error::Io { path: f.path.clone(), source });
                            break;
                        }
                    }
                }
                if failed.is_none() {
                    match inp.finish() {
                        Ok((sha256, size)) => {
                            if !out.push(Item::FileEnd { file: fi as u32, sha256, size }) {
                                return;
                            }
                        }
                        Err(source) => failed = Some(Error::Io { path: f.path.clone(), source }),
                    }
                }
            }
        }
        ctx.progress.raw_bytes_read.store(counter.load(Ordering::Relaxed), Ordering::Relaxed);
        if let Some(v) = sniff.finish() {
            ctx.progress.warn(input::binary_warning(&f.path, v, cfg.invalid_utf8));
        }
        if let Some(e) = failed {
            if cfg.skip_bad_files {
                if !out.push(Item::Bad { file: fi as u32, error: e.to_string() }) {
                    return;
                }
            } else {
                out.chunk.items.push(Item::Fatal(e));
                out.flush();
                return;
            }
        }
    }
    out.flush();
}

fn worker<E: Encode>(ctx: &Ctx<'_>, enc: &E, work_rx: &Mutex<Receiver<Chunk>>, res_tx: &Sender<Encoded>) {
    loop {
        let chunk = {
            let rx = work_rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(c) => c,
                Err(_) => return,
            }
        };
        let seq = chunk.seq;
        let encoded = match catch_unwind(AssertUnwindSafe(|| encode_chunk(ctx, enc, chunk))) {
            Ok(e) => e,
            Err(_) => Encoded { seq, items: vec![OutItem::Fatal(Error::Internal("a worker thread panicked while encoding".into()))], tokens: Vec::new() },
        };
        if res_tx.send(encoded).is_err() {
            return;
        }
    }
}

fn encode_chunk<E: Encode>(ctx: &Ctx<'_>, enc: &E, chunk: Chunk) -> Encoded {
    let cfg = ctx.cfg;
    let mut tokens = Vec::with_capacity(chunk.data.len() / 2);
    let mut items = Vec::with_capacity(chunk.items.len());
    for item in chunk.items {
        match item {
            Item::Doc { file, start, len, span, held } => {
                let bytes = &chunk.data[start..start + len];
                let (text, invalid_utf8) = input::decode_utf8(bytes, cfg.invalid_utf8);
                let jsonl = ctx.files[file as usize].jsonl;
                let text = match input::document_text(&text, jsonl, &cfg.text_field, cfg.strip) {
                    Ok(Some(t)) => t,
                    Ok(None) => {
                        items.push(OutItem::Doc { file, span, invalid_utf8, outcome: Outcome::Empty, held });
                        continue;
                    }
                    Err(reason) => {
                        items.push(OutItem::Doc { file, span, invalid_utf8, outcome: Outcome::BadJson(reason), held });
                        continue;
                    }
                };
                let text: &str = &text;
                let before = tokens.len();
                if !text.is_empty() {
                    enc.encode_into(text, &mut tokens);
                }
                let n = tokens.len() - before + usize::from(ctx.eos.is_some());
                let zero_len = n == 0 && (text.is_empty() || cfg.format == OutputFormat::Megatron);
                let outcome = if zero_len || n < cfg.min_tokens {
                    // (Megatron output never gets zero-length sequences.)
                    tokens.truncate(before);
                    if text.is_empty() {
                        Outcome::Empty
                    } else {
                        Outcome::Dropped
                    }
                } else {
                    if let Some(e) = ctx.eos {
                        tokens.push(e);
                    }
                    Outcome::Kept { ntok: n }
                };
                items.push(OutItem::Doc { file, span, invalid_utf8, outcome, held });
            }
            Item::FileEnd { file, sha256, size } => items.push(OutItem::FileEnd { file, sha256, size }),
            Item::Bad { file, error } => items.push(OutItem::Bad { file, error }),
            Item::Fatal(e) => items.push(OutItem::Fatal(e)),
        }
    }
    Encoded { seq: chunk.seq, items, tokens }
}

/// `kill -9` of this very process (the `debug_kill_after_checkpoints` testing aid).
fn kill_self() {
    #[cfg(unix)]
    // SAFETY: getpid and kill have no preconditions; SIGKILL ends the process here.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort();
}

struct Writer<'a> {
    ctx: &'a Ctx<'a>,
    fingerprint: String,
    shards: Vec<ShardEntry>,
    shard: Option<ShardWriter>,
    mega: Option<MegatronWriter>,
    mega_cp: Option<MegatronCheckpoint>,
    since_checkpoint: u64,
    files: Vec<FileEntry>,
    cur: Option<Partial>,
    checkpoints_written: u64,
    holdout: Option<HoldoutWriter>,
}

/// Writes the held-out documents into `OUT/holdout/` (shard format, same shard size). Its shard
/// in progress is fsynced at every checkpoint of the job and recorded there, so a resume cuts it
/// back to that point (`ShardWriter::resume`).
struct HoldoutWriter {
    dir: PathBuf,
    dtype: DType,
    limit: u64,
    shards: Vec<ShardEntry>,
    cur: Option<ShardWriter>,
}

impl HoldoutWriter {
    fn open(dir: PathBuf, dtype: DType, limit: u64, state: HoldoutState) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let cur = match &state.current {
            Some(cp) => Some(ShardWriter::resume(&dir, dtype, cp)?),
            None => None,
        };
        Ok(HoldoutWriter { dir, dtype, limit, shards: state.shards, cur })
    }

    fn write_doc(&mut self, ids: &[u32]) -> Result<()> {
        if self.cur.is_none() {
            self.cur = Some(ShardWriter::create(&self.dir, self.shards.len(), self.dtype)?);
        }
        let sh = self.cur.as_mut().expect("just set");
        sh.write_doc(ids)?;
        if sh.tokens() >= self.limit {
            let entry = self.cur.take().expect("present").commit()?;
            self.shards.push(entry);
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<HoldoutState> {
        let current = match self.cur.as_mut() {
            Some(w) => Some(w.checkpoint()?),
            None => None,
        };
        Ok(HoldoutState { shards: self.shards.clone(), current })
    }

    /// Commits the shard in progress; the finished list.
    fn finish(&mut self) -> Result<Vec<ShardEntry>> {
        if let Some(w) = self.cur.take() {
            let entry = w.commit()?;
            self.shards.push(entry);
        }
        Ok(self.shards.clone())
    }
}

impl<'a> Writer<'a> {
    fn new(ctx: &'a Ctx<'a>, state: State) -> Result<Self> {
        let mega = match ctx.cfg.format {
            OutputFormat::Megatron => Some(MegatronWriter::open(ctx.prefix_p, ctx.dtype, state.megatron)?),
            OutputFormat::Baichuan => None,
        };
        let holdout = match ctx.cfg.holdout_per_million {
            0 => None,
            _ => Some(HoldoutWriter::open(
                ctx.out.join(HOLDOUT_DIR),
                shard_dtype(ctx.cfg_vocab),
                ctx.cfg.shard_tokens,
                state.holdout.clone().unwrap_or_default(),
            )?),
        };
        let mut total = Counts::default();
        for f in &state.files {
            total.add(&f.counts);
        }
        if let Some(p) = &state.partial {
            total.add(&p.counts);
        }
        let pr = ctx.progress;
        pr.documents.store(total.documents, Ordering::Relaxed);
        pr.dropped.store(total.dropped, Ordering::Relaxed);
        pr.tokens.store(total.tokens, Ordering::Relaxed);
        pr.text_bytes.store(total.bytes, Ordering::Relaxed);
        Ok(Writer {
            ctx,
            fingerprint: state.fingerprint,
            shards: state.shards,
            shard: None,
            mega,
            mega_cp: state.megatron,
            since_checkpoint: 0,
            files: state.files,
            cur: state.partial,
            checkpoints_written: 0,
            holdout,
        })
    }

    fn cur_for(&mut self, file: u32) -> Result<&mut Partial> {
        let file = file as usize;
        if file != self.files.len() {
            return Err(Error::Internal(format!("items out of order: file {file} after {} files", self.files.len())));
        }
        if self.cur.as_ref().map(|c| c.file) != Some(file) {
            self.cur = Some(Partial { file, end: 0, counts: Counts::default(), first_bad_json: None });
        }
        Ok(self.cur.as_mut().expect("just set"))
    }

    fn save_state(&mut self, finishing: bool) -> Result<()> {
        let holdout = match self.holdout.as_mut() {
            Some(h) => Some(h.checkpoint()?),
            None => None,
        };
        let st = State {
            holdout,
            version: MANIFEST_VERSION,
            fingerprint: self.fingerprint.clone(),
            shards: self.shards.clone(),
            megatron: self.mega_cp,
            files: self.files.clone(),
            partial: self.cur.clone(),
            finishing,
            job: Some(self.ctx.job.clone()),
        };
        write_json_atomic(self.ctx.progress_p, &st)?;
        self.checkpoints_written += 1;
        if self.checkpoints_written == self.ctx.cfg.debug_kill_after_checkpoints {
            kill_self();
        }
        Ok(())
    }

    fn write_doc(&mut self, ids: &[u32]) -> Result<()> {
        let limit = self.ctx.cfg.shard_tokens;
        if let Some(m) = self.mega.as_mut() {
            m.write_doc(ids)?;
            self.since_checkpoint += ids.len() as u64;
            if self.since_checkpoint >= limit {
                self.mega_cp = Some(m.checkpoint()?);
                self.since_checkpoint = 0;
                self.save_state(false)?;
            }
            return Ok(());
        }
        if self.shard.is_none() {
            self.shard = Some(ShardWriter::create(self.ctx.out, self.shards.len(), self.ctx.dtype)?);
        }
        let sh = self.shard.as_mut().expect("just set");
        sh.write_doc(ids)?;
        if sh.tokens() >= limit {
            let entry = self.shard.take().expect("present").commit()?;
            self.shards.push(entry);
            self.save_state(false)?;
        }
        Ok(())
    }

    fn file_done(&mut self, file: u32, status: &str, sha256: Option<String>, size: u64, error: Option<String>) -> Result<()> {
        let (counts, first_bad_json) = {
            let c = self.cur_for(file)?;
            (c.counts.clone(), c.first_bad_json.clone())
        };
        self.cur = None;
        let f = &self.ctx.files[file as usize];
        self.files.push(FileEntry {
            path: f.name.clone(),
            size,
            sha256,
            compression: input::Compression::from_path(&f.path),
            jsonl: f.jsonl,
            status: status.into(),
            error,
            first_bad_json,
            counts,
        });
        self.ctx.progress.files_done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn process(&mut self, enc: Encoded) -> Result<()> {
        let pr = self.ctx.progress;
        let mut off = 0usize;
        for item in enc.items {
            match item {
                OutItem::Doc { file, span, invalid_utf8, outcome, held } => {
                    let cur = self.cur_for(file)?;
                    cur.end = span.end;
                    cur.counts.bytes += span.consumed;
                    cur.counts.invalid_utf8 += invalid_utf8;
                    pr.text_bytes.fetch_add(span.consumed, Ordering::Relaxed);
                    match outcome {
                        Outcome::Kept { ntok } => {
                            if held {
                                cur.counts.holdout_documents += 1;
                                cur.counts.holdout_tokens += ntok as u64;
                            } else {
                                cur.counts.documents += 1;
                                cur.counts.tokens += ntok as u64;
                            }
                            pr.documents.fetch_add(1, Ordering::Relaxed);
                            pr.tokens.fetch_add(ntok as u64, Ordering::Relaxed);
                            let end = off + ntok;
                            let ids = enc.tokens.get(off..end).ok_or_else(|| Error::Internal("token buffer too short".into()))?;
                            off = end;
                            match (held, self.holdout.as_mut()) {
                                (true, Some(h)) => h.write_doc(ids)?,
                                _ => self.write_doc(ids)?,
                            }
                        }
                        Outcome::Dropped => {
                            cur.counts.dropped += 1;
                            pr.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Empty => {
                            cur.counts.dropped += 1;
                            cur.counts.empty += 1;
                            pr.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::BadJson(reason) => {
                            cur.counts.bad_json += 1;
                            if cur.first_bad_json.is_none() {
                                cur.first_bad_json = Some(format!("byte {}: {reason}", span.end - span.consumed));
                            }
                        }
                    }
                }
                OutItem::FileEnd { file, sha256, size } => self.file_done(file, "ok", Some(sha256), size, None)?,
                OutItem::Bad { file, error } => {
                    let size = self.ctx.files[file as usize].size;
                    self.file_done(file, "skipped", None, size, Some(error))?
                }
                OutItem::Fatal(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<PipelineOut> {
        if self.files.len() != self.ctx.files.len() {
            return Err(Error::Internal(format!("{} of {} files were finished", self.files.len(), self.ctx.files.len())));
        }
        if let Some(sh) = self.shard.take() {
            let entry = sh.commit()?;
            self.shards.push(entry);
        }
        let held = match self.holdout.as_mut() {
            Some(h) => Some(h.finish()?),
            None => None,
        };
        let mega = match self.mega.take() {
            Some(mut m) => {
                self.mega_cp = Some(m.checkpoint()?);
                self.save_state(true)?;
                Some(m.finish()?)
            }
            None => None,
        };
        Ok((self.shards, mega, self.files, held))
    }
}

fn writer(ctx: &Ctx<'_>, state: State, res_rx: Receiver<Encoded>, slot_tx: SyncSender<()>) -> Result<PipelineOut> {
    let mut w = Writer::new(ctx, state)?;
    let mut pending: BTreeMap<u64, Encoded> = BTreeMap::new();
    let mut next = 0u64;
    for enc in res_rx.iter() {
        pending.insert(enc.seq, enc);
        while let Some(e) = pending.remove(&next) {
            w.process(e)?;
            next += 1;
            let _ = slot_tx.send(());
        }
        if ctx.progress.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
    }
    if ctx.progress.cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    if let Some((_, mut e)) = pending.pop_last() {
        if let Some(OutItem::Fatal(err)) = e.items.pop() {
            return Err(err);
        }
        return Err(Error::Internal("the pipeline lost a chunk".into()));
    }
    w.finish()
}
