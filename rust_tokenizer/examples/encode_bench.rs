//! Pure-Rust encode timing (no Python): `cargo run --release --example encode_bench -- MODEL TEXTS`
//! where TEXTS holds the texts separated by NUL bytes. Prints MB/s for a cold and a warm pass.

use std::time::Instant;

use baichuan_tokenizer::Tokenizer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: encode_bench MODEL TEXTS [threads]");
        std::process::exit(2);
    }
    let data = std::fs::read(&args[2]).expect("read texts");
    let texts: Vec<&[u8]> = data.split(|&b| b == 0).filter(|t| !t.is_empty()).collect();
    let mb = data.len() as f64 / 1e6;
    let threads: Option<usize> = args.get(3).and_then(|s| s.parse().ok());
    for pass in 0..2 {
        let t0 = Instant::now();
        let tok = Tokenizer::from_file(std::path::Path::new(&args[1])).expect("load");
        let load = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let n: usize = tok
            .encode_batch(&texts, threads.or(Some(1)))
            .iter()
            .map(Vec::len)
            .sum();
        let cold = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let _ = tok.encode_batch(&texts, threads.or(Some(1)));
        let warm = t2.elapsed().as_secs_f64();
        println!(
            "pass {pass}: load {load:.3}s; {n} ids; cold {:.1} MB/s; warm {:.1} MB/s",
            mb / cold,
            mb / warm
        );
    }
}
