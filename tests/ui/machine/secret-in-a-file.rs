use forjar::machine::{File, Machine, Secret};

fn main() {
    let mut web = Machine::ssh("web1", "10.0.0.5");
    // A file's content goes into the system's store entry; a secret goes with `Machine::secret`.
    web.file(forjar::path!("/etc/app/token"), File::text(Secret::env("TOKEN")));
}
