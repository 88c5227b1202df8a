//! Arbitrary `precompiled_charsmap` blobs (the first 4 bytes are the trie size) and text: the
//! Darts-clone walk and the normalizer must never panic or read out of bounds.
#![no_main]

use baichuan_tokenizer::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (data[0] as usize * 256 + data[1] as usize) % data.len();
    let (blob, text) = data[2..].split_at(split.saturating_sub(2).min(data.len() - 2));
    fuzzing::charsmap(blob, text);
    // Also with a well-formed header so the trie itself is exercised.
    if blob.len() > 1024 + 8 {
        let mut b = (1024u32).to_le_bytes().to_vec();
        b.extend_from_slice(&blob[..1024 + 4]);
        b.push(0);
        fuzzing::charsmap(&b, text);
    }
});
