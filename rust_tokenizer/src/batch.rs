//! The one batch scheduler, used by every batch encode (`Tokenizer::encode_batch`,
//! `encode_batch_flat`, `encode_blocks` and the Python binding's `encode_batch`): blocks of
//! consecutive texts handed out from both ends of the batch. The calling thread takes blocks from
//! the front, `threads - 1` pool workers from the back, so with two threads each encodes one long
//! run of consecutive texts (its chunk cache sees related text) and they meet wherever the work
//! balances; the calling thread also receives every finished block, so the caller can convert
//! blocks (e.g. into Python lists) between its own blocks while the workers go on. One thread,
//! or a small batch: the calling thread alone, nothing spawned. Knows nothing of encoding.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

/// The ids of consecutive texts in one buffer: text `i` of the block is `ids[ends[i-1]..ends[i]]`.
#[derive(Debug, Clone, Default)]
pub struct IdBlock {
    pub ids: Vec<u32>,
    pub ends: Vec<usize>,
}

impl IdBlock {
    /// The id slices of the block's texts, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u32]> + '_ {
        self.ends.iter().scan(0usize, move |start, &end| {
            let s = &self.ids[*start..end];
            *start = end;
            Some(s)
        })
    }
}

/// Batches smaller than this are encoded by the calling thread alone.
const MIN_PARALLEL_TEXTS: usize = 64;

/// How many texts go in one block for `texts` texts on `threads` threads.
pub fn block_size(texts: usize, threads: usize) -> usize {
    (texts / (threads.max(1) * 16)).clamp(1, 256)
}

/// The number of threads `num_threads` stands for: `None` = as many as rayon's global pool has
/// (all cores), else clamped to 1..=1024.
pub fn threads_for(num_threads: Option<usize>) -> usize {
    match num_threads {
        None => rayon::current_num_threads(),
        Some(n) => n.clamp(1, 1024),
    }
}

/// Blocks of consecutive texts handed out from both ends (see the module docs).
#[derive(Debug)]
pub struct BlockQueue {
    n_texts: usize,
    block: usize,
    /// (next block from the front, one past the next block from the back)
    span: Mutex<(usize, usize)>,
}

impl BlockQueue {
    pub fn new(n_texts: usize, threads: usize) -> Self {
        let block = block_size(n_texts, threads);
        BlockQueue {
            n_texts,
            block,
            span: Mutex::new((0, n_texts.div_ceil(block))),
        }
    }

    fn range(&self, b: usize) -> Range<usize> {
        b * self.block..((b + 1) * self.block).min(self.n_texts)
    }

    /// The texts of the next block from the front, if any is left.
    pub fn front(&self) -> Option<Range<usize>> {
        let mut g = self.span.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= g.1 {
            return None;
        }
        g.0 += 1;
        Some(self.range(g.0 - 1))
    }

    /// The texts of the next block from the back, if any is left.
    pub fn back(&self) -> Option<Range<usize>> {
        let mut g = self.span.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= g.1 {
            return None;
        }
        g.1 -= 1;
        Some(self.range(g.1))
    }

    /// Hands out nothing more (on an error: the workers stop after their current block).
    pub fn close(&self) {
        let mut g = self.span.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = g.0;
    }
}

/// A rayon pool of `threads` threads, built once per size and kept.
pub(crate) fn pool_for(threads: usize) -> std::result::Result<Arc<rayon::ThreadPool>, String> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let pools = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Ok(p.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("baichuan-tok-{i}"))
        .build()
        .map_err(|e| e.to_string())?;
    let pool = Arc::new(pool);
    pools.insert(threads, pool.clone());
    Ok(pool)
}

/// Encodes texts `0..n_texts` in blocks on `threads` threads (see the module docs).
///
/// - `encode(range)` encodes the texts of one block (called on any of the threads);
/// - `unlocked(step)` runs `step` on the calling thread: the calling thread's own encoding and
///   its waits for workers go through it (the Python binding releases the GIL there; Rust
///   callers pass `|step| step()`);
/// - `take(first_text, block)` receives every finished block on the calling thread, in the
///   order they finish. Its first error stops the hand-out of blocks and is returned once the
///   workers have finished their current blocks.
///
/// A panic in a worker is resumed on the calling thread.
pub fn schedule<E>(
    n_texts: usize,
    threads: usize,
    encode: impl Fn(Range<usize>) -> IdBlock + Sync,
    unlocked: impl Fn(&mut (dyn FnMut() + Send)),
    mut take: impl FnMut(usize, IdBlock) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let workers = if n_texts < MIN_PARALLEL_TEXTS {
        0
    } else {
        threads.clamp(1, 1024) - 1
    };
    let queue = BlockQueue::new(n_texts, workers + 1);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, IdBlock)>();
    let rx = Mutex::new(rx); // only this thread receives; the mutex makes it shareable with `unlocked`
    let (queue, encode) = (&queue, &encode);
    std::thread::scope(|scope| {
        let worker = (workers > 0).then(|| {
            scope.spawn(move || {
                let work = || {
                    while let Some(r) = queue.back() {
                        let first = r.start;
                        // A closed receiver (the caller stopped on an error) drops the block.
                        let _ = tx.send((first, encode(r)));
                    }
                };
                match pool_for(workers) {
                    Ok(pool) => {
                        pool.broadcast(|_| work());
                    }
                    Err(_) => work(), // no pool (thread limits): this thread is the one worker
                }
            })
        });
        let mut err: Option<E> = None;
        let mut give = |first: usize, b: IdBlock, err: &mut Option<E>| {
            if err.is_none() {
                if let Err(e) = take(first, b) {
                    *err = Some(e);
                    queue.close();
                }
            }
        };
        while err.is_none() {
            while let Ok((first, b)) = rx.lock().unwrap_or_else(|e| e.into_inner()).try_recv() {
                give(first, b, &mut err);
            }
            let Some(r) = queue.front() else { break };
            let first = r.start;
            let mut block = None;
            unlocked(&mut || block = Some(encode(r.clone())));
            if let Some(b) = block {
                give(first, b, &mut err);
            }
        }
        // The workers' last blocks (the sender is dropped when the worker thread ends).
        loop {
            let mut got = None;
            unlocked(&mut || got = rx.lock().unwrap_or_else(|e| e.into_inner()).recv().ok());
            match got {
                Some((first, b)) => give(first, b, &mut err),
                None => break,
            }
        }
        if let Some(w) = worker {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
        err.map_or(Ok(()), Err)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_queue_hands_out_every_text_once_from_both_ends() {
        for n in [1usize, 5, 64, 1000, 4097] {
            for threads in [2usize, 3, 8] {
                let q = BlockQueue::new(n, threads);
                let mut seen = vec![0u8; n];
                let (mut fronts, mut backs) = (Vec::new(), Vec::new());
                loop {
                    let f = q.front();
                    let b = q.back();
                    if f.is_none() && b.is_none() {
                        break;
                    }
                    fronts.extend(f.clone());
                    backs.extend(b.clone());
                    for r in f.into_iter().chain(b) {
                        for i in r {
                            seen[i] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "n={n} threads={threads}");
                // the front walks up, the back walks down
                assert!(fronts.windows(2).all(|w| w[0].end == w[1].start));
                assert!(backs.windows(2).all(|w| w[1].end == w[0].start));
            }
        }
        let q = BlockQueue::new(10_000, 2);
        assert!(q.front().is_some());
        q.close();
        assert!(q.front().is_none() && q.back().is_none());
    }

    #[test]
    fn schedule_delivers_every_block_once_and_stops_on_error() {
        for (n, threads) in [(0usize, 1usize), (10, 4), (1000, 1), (1000, 3)] {
            let mut seen = vec![0u8; n];
            let r: Result<(), ()> = schedule(
                n,
                threads,
                |r| IdBlock {
                    ids: r.clone().map(|i| i as u32).collect(),
                    ends: (1..=r.len()).collect(),
                },
                |step| step(),
                |first, b| {
                    for (k, ids) in b.iter().enumerate() {
                        assert_eq!(ids, [(first + k) as u32]);
                        seen[first + k] += 1;
                    }
                    Ok(())
                },
            );
            assert!(r.is_ok());
            assert!(seen.iter().all(|&c| c == 1), "n={n} threads={threads}");
        }
        let mut calls = 0;
        let r = schedule(
            5000,
            2,
            |r| IdBlock {
                ids: Vec::new(),
                ends: vec![0; r.len()],
            },
            |step| step(),
            |_, _| {
                calls += 1;
                Err("stop")
            },
        );
        assert_eq!(r, Err("stop"));
        assert_eq!(calls, 1);
    }
}
