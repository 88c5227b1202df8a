//! End-to-end tests of a job with a one-id-per-byte encoder: determinism across worker counts,
//! resume at many points, partitions and merge, holdout, bad files.

use super::*;
use std::io::Write;

/// One id per byte (id = byte + 3), EOS = 2; cancels the job after `cancel_after` documents.
struct ByteEnc<'a> {
    cancel_after: Option<u64>,
    seen: AtomicU64,
    progress: Option<&'a Progress>,
}
impl Encode for ByteEnc<'_> {
    fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        if let (Some(k), Some(p)) = (self.cancel_after, self.progress) {
            if n >= k {
                p.cancel();
            }
        }
        out.extend(text.bytes().map(|b| b as u32 + 3));
    }
    fn vocab_size(&self) -> usize {
        259
    }
    fn eos_id(&self) -> Option<u32> {
        Some(2)
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bc-corpus-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn make_corpus(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..5 {
        let mut f = File::create(dir.join(format!("sub/f{i}.txt"))).unwrap();
        for j in 0..400 {
            writeln!(f, "  document {i}-{j} {}\u{3000}", "x".repeat((i * 7 + j * 13) % 90)).unwrap();
        }
    }
    std::fs::write(dir.join("bad.txt"), b"ok line that is long enough to keep\n\xff\xfe invalid bytes here, long enough too\r\n\r\n").unwrap();
    let mut gz = flate2::write::GzEncoder::new(File::create(dir.join("z.txt.gz")).unwrap(), flate2::Compression::default());
    for j in 0..300 {
        writeln!(gz, "gzip line {j} with some padding text").unwrap();
    }
    gz.finish().unwrap();
    let zs = zstd::encode_all(&b"{\"text\": \"a zstd json document that is long enough\"}\nnot json\n\n{\"other\": 1}\n"[..], 3).unwrap();
    std::fs::write(dir.join("y.jsonl.zst"), zs).unwrap();
}

fn cfg(inp: &Path, out: &Path, workers: usize, format: OutputFormat) -> CorpusConfig {
    let mut c: CorpusConfig = CorpusConfig::from_json(&format!(
        r#"{{"tokenizer": "t.model", "inputs": [{:?}], "output": {:?}}}"#,
        inp.to_string_lossy(),
        out.to_string_lossy()
    ))
    .unwrap();
    c.workers = workers;
    c.format = format;
    c.shard_tokens = 3000;
    c.chunk_bytes = 2000;
    c
}

fn dir_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn deterministic_and_resumable() {
    let root = tmpdir("det");
    let inp = root.join("in");
    make_corpus(&inp);
    for format in [OutputFormat::Baichuan, OutputFormat::Megatron] {
        let mut reference = None;
        for workers in [1, 2, 3] {
            let out = root.join(format!("out-{format:?}-{workers}"));
            let p = Progress::default();
            let enc = ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
            let m = run_with(&cfg(&inp, &out, workers, format), &enc, "sha", &p).unwrap();
            assert_eq!(m.counts.files, 8);
            assert_eq!(m.counts.counts.invalid_utf8, 2); // \xff and \xfe: two maximal invalid subparts, as Python counts
            assert_eq!(m.counts.counts.bad_json, 2);
            let bytes = dir_bytes(&out);
            assert!(bytes.iter().all(|(n, _)| !n.ends_with(".tmp") && n != PROGRESS), "{:?}", bytes.iter().map(|b| &b.0).collect::<Vec<_>>());
            match &reference {
                None => reference = Some(bytes),
                Some(r) => assert_eq!(r, &bytes, "workers {workers}"),
            }
        }
        let reference = reference.unwrap();
        // Interrupt at several points, then resume.
        for k in [0u64, 37, 1100, 2150] {
            let out = root.join(format!("res-{format:?}-{k}"));
            let p = Progress::default();
            let enc = ByteEnc { cancel_after: Some(k), seen: AtomicU64::new(0), progress: Some(&p) };
            let r = run_with(&cfg(&inp, &out, 2, format), &enc, "sha", &p);
            if r.is_ok() {
                continue;
            }
            assert!(matches!(r, Err(Error::Cancelled)));
            let p = Progress::default();
            let enc = ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
            let mut c = cfg(&inp, &out, 2, format);
            let wrote_something = std::fs::read_dir(&out).unwrap().any(|e| e.unwrap().file_name() != LOCK);
            if wrote_something {
                // (cancelled before anything but the lock was written: a fresh run is fine)
                assert!(run_with(&c, &enc, "sha", &p).is_err(), "no --resume must refuse");
            }
            c.resume = true;
            run_with(&c, &enc, "sha", &p).unwrap();
            assert_eq!(dir_bytes(&out), reference, "format {format:?} cancel after {k}");
            // Resuming a finished job is a no-op.
            run_with(&c, &enc, "sha", &p).unwrap();
            assert_eq!(dir_bytes(&out), reference);
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// `--resume` takes the same job spelled otherwise (trailing '/', `.` components, another
/// tokenizer path with the same content) and finishes it byte-identically; another job is
/// refused with what differs.
#[test]
fn resume_is_by_job_not_spelling() {
    let root = tmpdir("spell");
    let inp = root.join("in");
    make_corpus(&inp);
    let spelled = |s: &str, out: &Path| {
        let mut c = cfg(&inp, out, 2, OutputFormat::Baichuan);
        c.inputs = vec![format!("{}/{s}", root.display())];
        c
    };
    let enc = || ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
    let reference = root.join("ref");
    run_with(&spelled("in/", &reference), &enc(), "sha", &Progress::default()).unwrap();
    let out = root.join("out");
    let p = Progress::default();
    let cancelling = ByteEnc { cancel_after: Some(1100), seen: AtomicU64::new(0), progress: Some(&p) };
    assert!(matches!(run_with(&spelled("in/", &out), &cancelling, "sha", &p), Err(Error::Cancelled)));
    assert!(out.join(PROGRESS).exists());
    // another job: refused, naming each difference
    let mut other = spelled("./in", &out);
    other.resume = true;
    other.min_tokens = 7;
    let err = run_with(&other, &enc(), "other-sha", &Progress::default()).unwrap_err().to_string();
    assert!(err.contains("was written for another job: the tokenizer differs (t.model has sha256 other-sha..."), "{err}");
    assert!(err.contains("--min-tokens was 20 and is now 7"), "{err}");
    assert!(err.ends_with("cannot resume (use --overwrite to start again)"), "{err}");
    let mut fewer = spelled("in/sub", &out);
    fewer.resume = true;
    let err = run_with(&fewer, &enc(), "sha", &Progress::default()).unwrap_err().to_string();
    assert!(err.contains("bad.txt") && err.contains("is no longer among the inputs"), "{err}");
    // the same job spelled otherwise: finishes as it was started
    let mut same = spelled("./in", &out);
    same.resume = true;
    same.tokenizer = PathBuf::from("./elsewhere/t.model");
    run_with(&same, &enc(), "sha", &Progress::default()).unwrap();
    assert_eq!(dir_bytes(&out), dir_bytes(&reference));
    // and, finished, it is nothing to do
    run_with(&same, &enc(), "sha", &Progress::default()).unwrap();
    assert_eq!(dir_bytes(&out), dir_bytes(&reference));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn partition_specs_and_ranges() {
    assert_eq!(parse_partition("0/1").unwrap(), (0, 1));
    assert_eq!(parse_partition("2/3").unwrap(), (2, 3));
    for bad in ["3/3", "0/0", "-1/2", "a/b", "1", "1/", "/2", "1/2/3", "+1/2", " 1/2"] {
        let e = parse_partition(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("--partition {bad}:")), "{e}");
    }
    let cover = |sizes: &[u64], n: usize| -> Vec<std::ops::Range<usize>> {
        let rs: Vec<_> = (0..n).map(|i| partition_range(sizes, i, n)).collect();
        let mut next = 0;
        for r in &rs {
            assert_eq!(r.start, next, "{sizes:?} / {n}: {rs:?}");
            next = r.end;
        }
        assert_eq!(next, sizes.len(), "{sizes:?} / {n}: {rs:?}");
        rs
    };
    assert_eq!(cover(&[10, 10, 10], 3), vec![0..1, 1..2, 2..3]);
    // by bytes, not by count: one big file is a share of its own
    assert_eq!(cover(&[5, 5, 5, 5, 20], 2), vec![0..4, 4..5]);
    // a file is never split: a dominating file leaves a neighbour empty
    assert_eq!(cover(&[1, 100, 1], 3), vec![0..1, 1..2, 2..3]);
    assert_eq!(cover(&[100, 1, 1], 3), vec![0..0, 0..1, 1..3]); // (its middle byte is in share 1)
    assert_eq!(cover(&[0, 0, 0, 0], 2), vec![0..2, 2..4]);
    assert_eq!(cover(&[7], 4), vec![0..0, 0..0, 0..1, 1..1]);
    assert_eq!(cover(&[], 2), vec![0..0, 0..0]);
    let mut x = 12345u64;
    for n in 1..6 {
        let sizes: Vec<u64> = (0..40)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 33) % 1000
            })
            .collect();
        let rs = cover(&sizes, n);
        let total: u64 = sizes.iter().sum();
        for r in rs {
            let got: u64 = sizes[r].iter().sum();
            assert!(got <= total / n as u64 + 1000, "{got} of {total} / {n}");
        }
    }
    // the held-out choice: a fixed function of (file key, ordinal)
    let held: Vec<u64> = (0..100_000).filter(|&i| is_held_out(42, i, 1000)).collect();
    assert!((60..140).contains(&held.len()), "{}", held.len());
    assert_eq!(held, (0..100_000).filter(|&i| is_held_out(42, i, 1000)).collect::<Vec<_>>());
    assert!(!(0..1000).any(|i| is_held_out(42, i, 0)));
    assert!((0..1000).all(|i| is_held_out(42, i, HOLDOUT_SCALE)));
}

/// `--holdout` with interruptions at many points and `--partition` + merge: byte-identical to
/// an uninterrupted single run, in both formats (Megatron: holdout only).
#[test]
fn holdout_and_partitions() {
    let root = tmpdir("hold");
    let inp = root.join("in");
    make_corpus(&inp);
    let enc = || ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
    let with = |out: &Path, format: OutputFormat| {
        let mut c = cfg(&inp, out, 2, format);
        c.holdout_per_million = 100_000;
        c.shard_tokens = 1500;
        c
    };
    let tree = |d: &Path| {
        let mut v = dir_bytes(d);
        v.retain(|(n, _)| n != LOCK && n != HOLDOUT_DIR);
        v.extend(dir_bytes(&d.join(HOLDOUT_DIR)).into_iter().map(|(n, b)| (format!("holdout/{n}"), b)));
        v
    };
    for format in [OutputFormat::Baichuan, OutputFormat::Megatron] {
        let reference = root.join(format!("ref-{format:?}"));
        let m = run_with(&with(&reference, format), &enc(), "sha", &Progress::default()).unwrap();
        let c = &m.counts.counts;
        assert!(c.holdout_documents > 20 && c.holdout_documents * 5 < c.documents, "{c:?}");
        let held = tree(&reference);
        assert!(held.iter().filter(|(n, _)| n.starts_with("holdout/shard-")).count() >= 4);
        for k in [0u64, 37, 700, 1100, 1500, 2150] {
            let out = root.join(format!("res-{format:?}-{k}"));
            let p = Progress::default();
            let cancelling = ByteEnc { cancel_after: Some(k), seen: AtomicU64::new(0), progress: Some(&p) };
            if run_with(&with(&out, format), &cancelling, "sha", &p).is_ok() {
                continue;
            }
            let mut c = with(&out, format);
            c.resume = true;
            run_with(&c, &enc(), "sha", &Progress::default()).unwrap();
            assert_eq!(tree(&out), held, "format {format:?} cancel after {k}");
        }
    }
    // 3 partitions, merged: the single run's files
    let reference = root.join("ref-Baichuan");
    let parts: Vec<PathBuf> = (0..3)
        .map(|i| {
            let out = root.join(format!("part{i}"));
            let mut c = with(&out, OutputFormat::Baichuan);
            c.partition = Some(format!("{i}/3"));
            c.workers = i + 1;
            run_with(&c, &enc(), "sha", &Progress::default()).unwrap();
            out
        })
        .collect();
    let merged = root.join("merged");
    let mc = merge::MergeConfig { inputs: vec![parts[1].clone(), parts[2].clone(), parts[0].clone()], output: merged.clone(), overwrite: false };
    merge::merge(&mc, &Progress::default()).unwrap();
    assert_eq!(tree(&merged), tree(&reference));
    // more partitions than files: empty partitions write an empty manifest, and merge fine
    let parts10: Vec<PathBuf> = (0..10)
        .map(|i| {
            let out = root.join(format!("ten{i}"));
            let mut c = with(&out, OutputFormat::Baichuan);
            c.partition = Some(format!("{i}/10"));
            let m = run_with(&c, &enc(), "sha", &Progress::default()).unwrap();
            assert_eq!(m.partition.as_ref().map(|p| p.total_files), Some(8));
            out
        })
        .collect();
    assert!(parts10.iter().any(|p| std::fs::read_to_string(p.join(MANIFEST)).unwrap().contains("\"inputs\": []")));
    let m10 = root.join("merged10");
    merge::merge(&merge::MergeConfig { inputs: parts10, output: m10.clone(), overwrite: false }, &Progress::default()).unwrap();
    assert_eq!(tree(&m10), tree(&reference));
    // nothing is written when a partition is missing
    let mc = merge::MergeConfig { inputs: vec![parts[0].clone(), parts[2].clone()], output: root.join("m2"), overwrite: false };
    let e = merge::merge(&mc, &Progress::default()).unwrap_err().to_string();
    assert!(e.contains("partition 1/3 is missing"), "{e}");
    assert!(!root.join("m2").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_files() {
    let root = tmpdir("bad");
    let inp = root.join("in");
    make_corpus(&inp);
    // a truncated gzip file: readable start, error later
    let gz = std::fs::read(inp.join("z.txt.gz")).unwrap();
    std::fs::write(inp.join("zz.txt.gz"), &gz[..gz.len() / 2]).unwrap();
    let enc = ByteEnc { cancel_after: None, seen: AtomicU64::new(0), progress: None };
    let out = root.join("out");
    let err = run_with(&cfg(&inp, &out, 2, OutputFormat::Baichuan), &enc, "sha", &Progress::default()).unwrap_err();
    assert!(err.to_string().contains("zz.txt.gz"), "{err}");
    let mut c = cfg(&inp, &out, 2, OutputFormat::Baichuan);
    c.skip_bad_files = true;
    c.overwrite = true;
    let m = run_with(&c, &enc, "sha", &Progress::default()).unwrap();
    assert_eq!(m.counts.bad_files, 1);
    let bad = m.inputs.iter().find(|f| f.status != "ok").unwrap();
    assert!(bad.path.ends_with("zz.txt.gz") && bad.error.is_some());
    // missing input: error naming it
    let mut c = cfg(&root.join("nope"), &root.join("o2"), 1, OutputFormat::Baichuan);
    c.inputs.push("/nonexistent/*.txt".into());
    let err = run_with(&c, &enc, "sha", &Progress::default()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
