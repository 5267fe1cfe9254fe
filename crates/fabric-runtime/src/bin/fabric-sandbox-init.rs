//! The sandbox helper of the `process` isolation level: builds a sandbox
//! (`init`) and runs programs inside it (`exec`). The fabric starts it; see
//! `fabric_runtime::sandbox`.

fn main() {
    fabric_runtime::sandbox::helper_main(std::env::args_os().skip(1).collect())
}
