//! Tenants' uploaded components and lookup tables, with no HTTP: unpacking
//! an upload's tar and keeping uploaded files on disk. The upload routes
//! are `api::modules` and `api::lookups`.

pub(crate) mod compile;
pub(crate) mod files;
pub mod lookups;
pub(crate) mod unpack;
