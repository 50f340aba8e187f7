//! Tenants' uploaded components, with no HTTP: unpacking an upload's tar
//! and keeping module files on disk. The upload route is `api::modules`.

pub(crate) mod compile;
pub(crate) mod files;
pub(crate) mod unpack;
