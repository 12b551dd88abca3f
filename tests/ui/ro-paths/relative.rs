use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(ro_paths = ["/etc/ssl/certs", "usr/share/zoneinfo"], script = "echo hi > $out")]
struct Certs;

fn main() {}
