pub(crate) mod config;
pub(crate) mod probe;
