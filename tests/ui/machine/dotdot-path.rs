use forjar::machine::{File, Machine};

fn main() {
    let mut web = Machine::ssh("web1", "10.0.0.5");
    web.file(forjar::path!("/etc/../shadow"), File::text("x"));
}
