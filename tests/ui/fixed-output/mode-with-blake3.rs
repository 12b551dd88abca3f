use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(fixed_output = "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")]
#[forjar(fixed_output_mode = "recursive", script = "echo a > $out")]
struct Unpacked;

fn main() {}
