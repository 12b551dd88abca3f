use forjar::machine::Secret;
use forjar::Derivation;

fn main() {
    let _ = Derivation::builder("leak")
        .env("TOKEN", Secret::env("TOKEN"))
        .script("echo \"$TOKEN\" > $out");
}
