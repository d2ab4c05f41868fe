//! `tswatch`: the binary. Everything it does is in the library, behind
//! [`tswatch::cli::main`].

fn main() -> std::process::ExitCode {
    tswatch::cli::main()
}
