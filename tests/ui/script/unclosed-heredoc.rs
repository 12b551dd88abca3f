use forjar::prelude::*;

// The delimiter is indented with spaces: `/bin/sh` never sees it, and everything after is text.
#[derive(Derivation)]
#[forjar(script = r#"
mkdir -p $out
cat > $out/config <<EOF
port = 8080
    EOF
echo done > $out/status
"#)]
struct Config;

fn main() {}
