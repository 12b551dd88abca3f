// Every attribute in use, and what the derive makes of them.
use forjar::prelude::*;
use std::collections::BTreeMap;

#[derive(serde::Serialize)]
struct Config {
    port: u16,
    hosts: BTreeMap<String, String>,
}

#[derive(Derivation)]
#[forjar(outputs = ["out", "dev"], script = "echo lib > $out; echo h > $dev")]
struct Lib;

#[derive(Derivation)]
#[forjar(
    name = "service-profile",
    sandbox = "host-tools",
    system = "x86_64-linux",
    provide_bin_sh,
    ro_paths = ["/etc/ssl/certs"],
    timeout = "10m",
    max_silent = "1m 30s",
    memory = "512MiB",
    cpus = 2,
)]
#[forjar(script = r#"
    # Comments may say $anything.
    mkdir -p $out/etc $out/include
    cp config.toml $out/etc/service.toml
    cp -r $headers/. $out/include
    for f in $lib; do echo "$f" >> $out/etc/libs; done
    cat > $out/etc/motd <<END
    ${GREETING} from ${PORT:-8080} (${FORJAR_BUILD_CORES} cores)
END
    [ -z "$debug" ] || echo debug >> $out/etc/motd
    echo '$not_a_variable' >> $out/etc/motd
"#)]
struct Profile {
    #[forjar(input)]
    lib: Drv<Lib>,
    #[forjar(input)]
    headers: OutputRef,
    #[forjar(env = "GREETING")]
    greeting: &'static str,
    #[forjar(env)]
    debug: bool,
    #[forjar(env)]
    extra: Option<String>,
    #[forjar(file = "config.toml")]
    config: Config,
    #[forjar(skip)]
    _note: &'static str,
}

#[derive(Derivation)]
#[forjar(allow_impure, script = "date > $out; echo $RANDOM >> $out")]
struct Stamp;

#[derive(Derivation)]
#[forjar(script = "echo $version > $out")]
struct Versioned {
    #[forjar(name)]
    name: String,
    #[forjar(env)]
    version: u32,
}

fn main() {
    let mut g = Graph::new();
    let lib = g.add(Lib);
    let profile = g.add(Profile {
        lib,
        headers: lib.dev(),
        greeting: "hello",
        debug: false,
        extra: None,
        config: Config {
            port: 8080,
            hosts: BTreeMap::new(),
        },
        _note: "not part of the derivation",
    });
    let stamp = g.add(Stamp);
    let versioned = g.add(Versioned {
        name: "tool-1.2".into(),
        version: 12,
    });

    let drv = g.get(&profile).expect("valid");
    assert_eq!(drv.name().as_str(), "service-profile");
    assert_eq!(drv.sandbox(), SandboxLevel::HostTools);
    let inputs: Vec<_> = drv.inputs().keys().map(|k| k.to_string()).collect();
    assert_eq!(inputs, ["headers", "lib"]);
    assert_eq!(drv.limits().memory, Some(512 << 20));
    assert_eq!(drv.limits().max_silent, Some(std::time::Duration::from_secs(90)));
    assert_eq!(drv.limits().cpus, Some(2));
    assert!(drv.location().ends_with(".rs:72"), "{}", drv.location());
    assert_eq!(g.get(&lib).unwrap().outputs().len(), 2);
    assert_eq!(g.get(&stamp).unwrap().name().as_str(), "stamp");
    assert_eq!(g.get(&versioned).unwrap().name().as_str(), "tool-1.2");
    g.root("profile", profile);
}
