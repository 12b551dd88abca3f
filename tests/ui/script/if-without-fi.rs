use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = r#"
if [ -n "$greeting" ]; then
  echo "$greeting" > $out
"#)]
struct Hello {
    #[forjar(env)]
    greeting: String,
}

fn main() {}
