pub(crate) mod config;
pub(crate) mod data;
pub(crate) mod probe;
