//! Loop-based randomized tests (deterministic seeds, run by `cargo test`): the `.model` parser on
//! random, truncated and mutated bytes; the charsmap on random blobs; and the chunked, cached
//! encoder against the literal whole-string algorithm (`encode_whole`) on random text for every
//! BPE model in `../shared/spm-models` (skipped when that folder is absent). The libFuzzer
//! versions of these live in `fuzz/`.

use std::path::PathBuf;

use baichuan_tokenizer::{fuzzing, Tokenizer};

/// xorshift64*: tiny deterministic generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/spm-models")
}

const BPE_MODELS: [&str; 8] = [
    "baichuan-7b",
    "llama2",
    "chinese-llama2",
    "internlm-7b",
    "mistral-7b-v1",
    "mistral-v3",
    "chatglm2-6b",
    "baichuan-m1-14b",
];

#[test]
fn random_bytes_never_panic_the_parser() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for _ in 0..3000 {
        let n = rng.below(600);
        let data = rng.bytes(n);
        let r = Tokenizer::from_bytes(&data, "random.model");
        if let Err(e) = r {
            assert!(e.to_string().contains("random.model"), "{e}");
        }
    }
}

#[test]
fn truncated_and_mutated_real_models_never_panic() {
    let path = models_dir().join("llama2.model");
    let Ok(data) = std::fs::read(&path) else {
        eprintln!("skipped: {} is absent", path.display());
        return;
    };
    let mut rng = Rng(42);
    for i in 0..40 {
        let cut = if i < 20 {
            rng.below(data.len())
        } else {
            data.len() - 1 - rng.below(4096)
        };
        if let Ok(tok) = Tokenizer::from_bytes(&data[..cut], "cut.model") {
            let _ = tok.encode("Hello 世界 \u{1F999}");
        }
    }
    let baichuan = std::fs::read(models_dir().join("baichuan-7b.model")).unwrap_or_default();
    for (name, base) in [("llama2", &data), ("baichuan-7b", &baichuan)] {
        if base.is_empty() {
            continue;
        }
        for _ in 0..12 {
            let mut m = base.clone();
            for _ in 0..1 + rng.below(8) {
                let p = rng.below(m.len());
                m[p] ^= 1 << rng.below(8);
            }
            match Tokenizer::from_bytes(&m, name) {
                Ok(tok) => {
                    let ids = tok.encode_bytes(&rng.bytes(200));
                    let _ = tok.decode(&ids);
                }
                Err(e) => assert!(e.to_string().contains(name), "{e}"),
            }
        }
    }
}

#[test]
fn random_charsmaps_never_panic() {
    let mut rng = Rng(7);
    for _ in 0..200 {
        let trie = 1024 * (1 + rng.below(2));
        let pool = 1 + rng.below(64);
        let mut blob = (trie as u32).to_le_bytes().to_vec();
        blob.extend(rng.bytes(trie + pool));
        let last = blob.len() - 1;
        blob[last] = 0;
        let len = rng.below(80);
        let text = rng.bytes(len);
        fuzzing::charsmap(&blob, &text);
        fuzzing::charsmap(&blob, "a\u{301}ｶﾞ 中文\u{3000}x".as_bytes());
    }
}

fn random_text(rng: &mut Rng, pieces: &[String]) -> Vec<u8> {
    const ATOMS: &[&str] = &[
        " ", "  ", "\u{2581}", "\n", "\t", "\r\n", "a", "x", "the", "中", "的", "，", "。", "1",
        "２", "\u{3000}", "\u{a0}", "\u{301}", "ｶ", "ﾞ", "\u{200d}", "👨", "\u{fe0f}", "\0",
        "\u{1}", "<s>", "<br>", "½", "ﬁ",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.below(60) {
        match rng.below(4) {
            0 => out.extend_from_slice(ATOMS[rng.below(ATOMS.len())].as_bytes()),
            1 if !pieces.is_empty() => {
                out.extend_from_slice(pieces[rng.below(pieces.len())].as_bytes())
            }
            2 => out.push(rng.next() as u8),
            _ => out.extend_from_slice(ATOMS[rng.below(6)].as_bytes()),
        }
    }
    out
}

#[test]
fn chunked_encoder_equals_whole_string_bpe() {
    let mut rng = Rng(99);
    for name in BPE_MODELS {
        let path = models_dir().join(format!("{name}.model"));
        if !path.exists() {
            eprintln!("skipped: {} is absent", path.display());
            return;
        }
        let tok = Tokenizer::from_file(&path).expect("real model loads");
        let pieces: Vec<String> = (0..tok.vocab_size() as u32)
            .step_by(97)
            .filter_map(|i| tok.id_to_piece(i).ok())
            .map(|p| p.replace('\u{2581}', " "))
            .collect();
        let texts: Vec<Vec<u8>> = (0..400).map(|_| random_text(&mut rng, &pieces)).collect();
        for t in &texts {
            assert_eq!(
                tok.encode_bytes(t),
                tok.encode_whole(t),
                "{name}: {:?}",
                String::from_utf8_lossy(t)
            );
            // Twice: the second call is served by the chunk cache.
            assert_eq!(tok.encode_bytes(t), tok.encode_whole(t), "{name} (cached)");
        }
        let batch = tok.encode_batch(&texts, Some(3));
        for (t, ids) in texts.iter().zip(&batch) {
            assert_eq!(&tok.encode_bytes(t), ids);
            let _ = tok.decode(ids).expect("ids from encode are in range");
        }
    }
}
