use forjar::machine::{File, Machine};

fn main() {
    let mut web = Machine::ssh("web1", "10.0.0.5");
    // An owner is a `UserRef`, made by declaring the user; a bare name is not one.
    web.file(forjar::path!("/etc/app.conf"), File::text("x").owner("app"));
}
