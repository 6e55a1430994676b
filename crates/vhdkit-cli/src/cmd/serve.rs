//! `vhdkit serve DISK`: an NBD server for the virtual disk of a chain.

use crate::cli::ServeArgs;
use crate::output::CliError;
use crate::Outcome;

pub fn run(_a: &ServeArgs) -> Result<Outcome, CliError> {
    Err(CliError::Lib(vhdkit::Error::InvalidArgument(
        "serve is not available yet".into(),
    )))
}
