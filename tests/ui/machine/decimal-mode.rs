use forjar::machine::File;

fn main() {
    let _ = File::text("x").mode(forjar::mode!(644));
}
