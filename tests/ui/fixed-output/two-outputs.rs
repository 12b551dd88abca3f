use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(fixed_output = "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")]
#[forjar(outputs = ["out", "doc"], script = "echo a > $out; echo b > $doc")]
struct Fetch;

fn main() {}
