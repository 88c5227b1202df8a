//! Arbitrary bytes as text for a real model (`BAICHUAN_FUZZ_MODEL`, default Baichuan-7B's from
//! `../shared/spm-models`): no panic, the chunked and cached encoder equals the literal
//! whole-string BPE, and every produced id decodes.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use baichuan_tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = std::env::var_os("BAICHUAN_FUZZ_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/spm-models/baichuan-7b.model")
            });
        Tokenizer::from_file(&path).expect("BAICHUAN_FUZZ_MODEL must name a BPE .model file")
    })
}

fuzz_target!(|data: &[u8]| {
    let t = tok();
    let ids = t.encode_bytes(data);
    assert_eq!(ids, t.encode_whole(data));
    assert_eq!(ids, t.encode_bytes(data)); // second time through the chunk cache
    t.decode(&ids).expect("encoded ids are in range");
});
