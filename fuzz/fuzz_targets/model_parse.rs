//! Arbitrary bytes as a `.model` file: loading must return Ok or an error naming the origin,
//! never panic; a model that loads must encode and decode without panicking.
#![no_main]

use baichuan_tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Tokenizer::from_bytes(data, "fuzz.model") {
        Ok(tok) => {
            let ids = tok.encode_bytes("Hello  世界 \u{1F999}\n\t<s>ab".as_bytes());
            assert_eq!(
                ids,
                tok.encode_whole("Hello  世界 \u{1F999}\n\t<s>ab".as_bytes())
            );
            let _ = tok.decode(&ids);
            let all: Vec<u32> = (0..tok.vocab_size().min(512) as u32).collect();
            let _ = tok.decode(&all);
        }
        Err(e) => assert!(e.to_string().contains("fuzz.model")),
    }
});
