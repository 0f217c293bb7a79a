//! The operator binary. The reconciler comes with the operator issue.

fn main() {
    println!("operator {}", env!("CARGO_PKG_VERSION"));
}
