//! The bridge binary. The bridge itself comes with the bridge-runtime issue.

fn main() {
    println!("bridge-runtime {}", env!("CARGO_PKG_VERSION"));
}
