//! Changing a channel safely: a [`shadow`] pipeline beside the live one, a
//! [`backfill`] of stored events through a candidate, a [`record`]ing of
//! live traffic turned into fixtures, and the [`redact`]ion that keeps
//! personal data out of recordings.

pub(crate) mod backfill;
pub(crate) mod record;
pub(crate) mod redact;
pub(crate) mod shadow;
