//! One opened pool, with its number and what its backend recorded about it.

use std::ops::Deref;
use std::time::Instant;

use sqlx::Pool;

use super::Sealed;

/// One opened (and verified) pool.
pub struct Generation<DB: Sealed> {
    pub(crate) number: u64,
    pub(crate) pool: Pool<DB>,
    /// When a heal swapped this generation in (`None` for the first).
    pub(crate) healed_at: Option<Instant>,
    /// What the backend recorded (SQLite: the file, the schema, the
    /// sentinel connection).
    pub(crate) extra: DB::Extra,
}

/// Backend code reads its own records as fields of the generation.
impl<DB: Sealed> Deref for Generation<DB> {
    type Target = DB::Extra;

    fn deref(&self) -> &DB::Extra {
        &self.extra
    }
}
