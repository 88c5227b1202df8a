//! `precompiled_charsmap` robustness: the Darts-clone walk, the load-time checks, the BMP
//! classification and the normalizer must never panic or read out of bounds, whatever the blob.
//! Input: byte 0 picks the mode. Mode 0: the rest is a raw blob (random trie and pool) and the
//! text is fixed. Otherwise: Baichuan-7B's real charsmap (or `BAICHUAN_FUZZ_MODEL`'s) with
//! `(offset: u24, xor: u8)` mutations from the input until a 0xFF byte, then the text.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use baichuan_tokenizer::fuzzing;
use libfuzzer_sys::fuzz_target;

fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = std::env::var_os("BAICHUAN_FUZZ_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/spm-models/baichuan-7b.model")
            });
        let model = std::fs::read(&path).expect("BAICHUAN_FUZZ_MODEL must name a .model file");
        fuzzing::charsmap_of_model(&model).expect("the model parses")
    })
}

const TEXT: &[u8] = "a\u{301}ｶﾞ ＡＢＣ 中文\u{3000}x\u{fffd}\u{2581}\t\n\r\x01\x00 ﬁ ½ ①".as_bytes();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode == 0 {
        fuzzing::charsmap(rest, TEXT);
        return;
    }
    let mut blob = base().to_vec();
    let mut i = 0;
    while i + 4 <= rest.len() && rest[i] != 0xFF {
        let off =
            (usize::from(rest[i]) << 16 | usize::from(rest[i + 1]) << 8 | usize::from(rest[i + 2]))
                % blob.len();
        blob[off] ^= rest[i + 3];
        i += 4;
    }
    let text = rest.get(i + 1..).unwrap_or(&[]);
    fuzzing::charsmap(&blob, text);
    fuzzing::charsmap(&blob, TEXT);
});
