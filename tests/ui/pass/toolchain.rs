//! A toolchain field, a toolchain parameter, and SHA-256 fixed outputs in Nix's forms.
use forjar::prelude::*;

#[derive(Derivation)]
#[forjar(script = "mkdir -p $out/bin && cc -o $out/bin/hello $src/hello.c")]
struct Compile {
    #[forjar(input)]
    src: Source,
    #[forjar(toolchain)]
    cc: Toolchain,
}

#[derive(Derivation)]
#[forjar(fixed_output = "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=")]
#[forjar(script = "echo hello > $out")]
struct Flat;

#[derive(Derivation)]
#[forjar(fixed_output = "sha256-PcymmZzuqoQs/iCQcgk/QCE/8YzqrXjfQT36OzfnJmQ=")]
#[forjar(fixed_output_mode = "recursive", script = "mkdir $out")]
struct Tree;

#[derive(Derivation)]
#[forjar(fixed_output = "sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")]
#[forjar(script = "echo hello > $out")]
struct Nix32;

#[forjar::derivation]
fn count(g: &mut Graph, tools: &Toolchain) -> Drv<Count> {
    "ls /usr/bin | wc -l > $out"
}

fn main() {
    let mut g = Graph::new();
    let cc = Toolchain::from_host("cc", ["gcc", "libc6-dev"]).unwrap();
    let src = Source::dir(".").unwrap();
    g.add(Compile { src, cc: cc.clone() });
    g.add(Flat);
    g.add(Tree);
    g.add(Nix32);
    count(&mut g, &cc);
    assert!(g.toolchains() == vec![cc]);
}
